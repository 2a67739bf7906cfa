# Config validation, the experiment matrix, and the path helpers every stage uses.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from endofm.config import to_dict
from endofm.data.sources import SOURCES, missing_data_message
from endofm.methods import METHODS
from endofm.settings import finetune_runs, load_workflow_config, pretrain_runs, run_backbone, run_backbone_options

validate(config, schema="../config/schema.yaml")
# Typed config: fills the defaults of keys left out and checks what the schema cannot express.
# Rules pass resolved sections as params, so any change of a value reruns the jobs it affects.
CFG = load_workflow_config(config)
DATA = CFG.data
RAW = DATA.raw_dir
CLIPS = DATA.clips_dir
BENCH = DATA.benchmarks_dir
DOWNLOADS = DATA.downloads_dir
PRETRAIN_SOURCES = DATA.pretrain_sources
BENCHMARKS = DATA.benchmarks
SYNTHETIC = DATA.origin == "synthetic"
LOGS = "results/logs"


PRETRAIN_RUNS = pretrain_runs(CFG)  # (method, variant) of every pretraining job
PRETRAIN_VARIANTS = list(CFG.pretrain.variants)
FINETUNE_RUNS = finetune_runs(CFG)


wildcard_constraints:
    source="|".join(PRETRAIN_SOURCES),
    benchmark="|".join(BENCHMARKS),
    method="|".join(sorted({*METHODS, *CFG.finetune.checkpoints})),
    variant="|".join(sorted({*PRETRAIN_VARIANTS, "default", "none", "external"})),
    protocol="paper|clean",
    mode="full|frozen",
    seed=r"\d+",


def benchmark_outputs(bench):
    """Files the index rule of ``bench`` writes."""
    outputs = [f"{BENCH}/{bench}/manifest.csv", f"{BENCH}/{bench}/manifest.json"]
    if bench == "kumc":
        outputs += [f"{BENCH}/kumc/coco_{split}.json" for split in ("train", "val", "test")]
    return outputs


def data_outputs():
    """Everything the data stage produces: one clip manifest per source, one index per benchmark."""
    clips = expand(f"{CLIPS}/{{source}}/clips.csv", source=PRETRAIN_SOURCES)
    return clips + [f for bench in BENCHMARKS for f in benchmark_outputs(bench)]


def download_targets():
    """Sources that get a `download_<name>` rule: open ones with archives, and any given a mirror."""
    names = {n for n, s in SOURCES.items() if s.access == "open" and s.downloads}
    return sorted(names | set(DATA.download_overrides))


def raw_folder(name):
    """The raw folder of a source or benchmark. Real data must already be there (downloaded by its
    explicit `download_<name>` target or placed by hand): otherwise stop before any job runs, saying
    where to get it and where to put it."""
    path = f"{RAW}/{name}"
    if not SYNTHETIC and not Path(path).exists():
        raise WorkflowError(missing_data_message(name, Path(path)))
    return path


def clip_source_input(wildcards):
    return raw_folder(wildcards.source)


def pretrain_outputs():
    """The backbone of every pretraining job (endofm.methods.METHODS: method and variant)."""
    return [f"results/pretrain/{method}/{variant}/backbone.pt" for method, variant in PRETRAIN_RUNS]


def pretrain_settings(wildcards):
    """Resolved settings of one pretraining job (a params value: any change reruns it)."""
    if (wildcards.method, wildcards.variant) not in PRETRAIN_RUNS:
        raise WorkflowError(f"no pretraining job {wildcards.method}/{wildcards.variant} in this config")
    return to_dict(CFG.pretrain.method_settings(wildcards.method, wildcards.variant))


def launcher(gpus):
    """The Python launcher of a training job (this interpreter): torchrun with one process per GPU
    when there are several."""
    if gpus > 1:
        return f"{sys.executable} -m torch.distributed.run --standalone --nproc-per-node={gpus}"
    return sys.executable


def finetune_inputs(bench):
    """Input function of a `bench` run: the benchmark's index and raw files, and the checkpoint the
    run starts from (none for scratch)."""

    def inputs(wildcards):
        _, checkpoint = run_backbone(CFG, wildcards.method, wildcards.variant)
        files = {"manifest": f"{BENCH}/{bench}/manifest.csv", "raw": raw_folder(bench)}
        return files | ({"checkpoint": checkpoint} if checkpoint else {})

    return inputs


def finetune_settings(bench):
    """Params function of a `bench` run: what it depends on besides its inputs (any change reruns it)."""

    def settings(wildcards):
        backbone, _ = run_backbone(CFG, wildcards.method, wildcards.variant)
        options = run_backbone_options(CFG, wildcards.method)
        settings = {"task": to_dict(CFG.finetune.task(bench)), "backbone": to_dict(backbone)}
        return settings | ({"backbone_options": options} if options else {})

    return settings


def finetune_outputs():
    """The run record of every run in the matrix."""
    return [f"results/finetune/{run.path}/run.json" for run in FINETUNE_RUNS]


def metrics_outputs(benchmark=None):
    """The metrics file of every run in the matrix (of one benchmark)."""
    return [f"results/metrics/{run.path}.json" for run in FINETUNE_RUNS if benchmark in (None, run.benchmark)]
