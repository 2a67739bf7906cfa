# Config validation, the experiment matrix, and the path helpers every stage uses.
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config

from endofm import paths
from endofm.config import (
    ConfigError,
    annotated_yaml,
    check_schema,
    command_line_values,
    config_error_line,
    config_hash,
    to_dict,
)
from endofm.data.sources import SOURCES, missing_data_message, missing_weights_message
from endofm.methods import METHODS
from endofm.settings import (
    ablation_runs,
    finetune_runs,
    load_workflow_config,
    pretrain_runs,
    run_backbone,
    run_backbone_options,
)
from endofm.pretraining.train import snapshot_path
from endofm.tasks.benchmarks import get_benchmark

# The schema, then the typed config (it fills the defaults of keys left out and checks what the schema
# cannot express); a problem stops the run with one line naming the file and the dotted key.
# Rules pass resolved sections as params, so any change of a value reruns the jobs it affects.
COMMAND_LINE = command_line_values(workflow.config_settings.config)  # --config, typed as YAML
update_config(config, COMMAND_LINE)
try:
    check_schema(config, Path(workflow.basedir) / "config/schema.yaml")
    CFG = load_workflow_config(config)
except ConfigError as exc:
    raise WorkflowError(config_error_line(exc, workflow.configfiles, COMMAND_LINE)) from None
DATA = CFG.data
RAW = DATA.raw_dir
CLIPS = DATA.clips_dir
BENCH = DATA.benchmarks_dir
DOWNLOADS = DATA.downloads_dir
PRETRAIN_SOURCES = DATA.pretrain_sources
BENCHMARKS = DATA.benchmarks
SYNTHETIC = DATA.origin == "synthetic"
LOGS = paths.LOGS
#: The folder of a pretraining job, with its wildcards (the rules' outputs).
PRETRAIN_DIR = paths.pretrain_dir("{method}", "{variant}")


PRETRAIN_RUNS = pretrain_runs(CFG)  # (method, variant) of every pretraining job
FINETUNE_RUNS = finetune_runs(CFG)
# Ablations: {name: {pretraining variant: arm (its row label)}}, in config order.
ABLATIONS = {name: CFG.ablation_variants(name) for name in CFG.ablations}
ABLATION_RUNS = {name: ablation_runs(CFG, name) for name in CFG.ablations}
# Run-path suffix of each label fraction ("" for 1, "-labels25" for 0.25) -> the fraction.
LABEL_FRACTIONS = {paths.label_tag(f): f for f in {1.0, *CFG.finetune.label_fractions}}  # 1: the ablations' runs
# Run-path suffix of each pretraining fraction ("" for 1, "-pt25" for the snapshot after a quarter of the
# steps) -> the fraction; the pretraining jobs (method, variant) that write those snapshots.
PRETRAIN_FRACTIONS = {paths.pretrain_tag(f): f for f in {1.0, *CFG.finetune.pretrain_fractions}}
SNAPSHOT_RUNS = [(m, v) for m, v in PRETRAIN_RUNS if CFG.pretrain_snapshots(m, v)]
# Run-path and data-folder suffix of each benchmark draw ("" for the main draw 0, "-draw2" for draw 2) -> the
# draw; each benchmark's data folders by name (polypdiag, polypdiag-draw2) -> (benchmark, draw).
DRAWS = {paths.draw_tag(d): d for d in CFG.draws()}
BENCHMARK_DATA = {paths.benchmark_data(b, d): (b, d) for b in BENCHMARKS for d in CFG.draws()}


wildcard_constraints:
    source="|".join(PRETRAIN_SOURCES),
    benchmark="|".join(BENCHMARKS),
    method="|".join(sorted({*METHODS, *CFG.finetune.checkpoints})),
    variant="|".join(sorted({*CFG.pretrain_overlays(), "default", "none", "external"})),
    protocol="paper|clean",
    mode="full|frozen",
    seed=r"\d+",
    labels="(?:" + "|".join(sorted(LABEL_FRACTIONS)) + ")",
    pt="(?:" + "|".join(sorted(PRETRAIN_FRACTIONS)) + ")",
    draw="(?:" + "|".join(sorted(DRAWS)) + ")",
    ablation="|".join(ABLATIONS) or "(?!)",


def benchmark_outputs(bench, draw=""):
    """Files the index rule of ``bench`` writes, for the draw tag ``draw`` ("" for the main draw)."""
    return [f"{BENCH}/{bench}{draw}/{name}" for name in get_benchmark(bench).indexer.outputs()]


def data_outputs():
    """Everything the data stage produces: one clip manifest per source, one index per benchmark and draw."""
    clips = expand(f"{CLIPS}/{{source}}/clips.csv", source=PRETRAIN_SOURCES)
    return clips + [f for bench in BENCHMARKS for tag in DRAWS for f in benchmark_outputs(bench, tag)]


def download_targets():
    """Sources that get a `download_<name>` rule: open ones with archives, and any given a mirror."""
    names = {n for n, s in SOURCES.items() if s.access == "open" and s.downloads}
    return sorted(names | set(DATA.download_overrides))


def raw_folder(name):
    """The raw folder of a source or benchmark, a job input. Real data is downloaded by its explicit
    `download_<name>` target or placed by hand; while it is missing, rule `missing_raw` (rules/data.smk)
    stands in for it: the jobs that need it fail saying where to get it, and everything else plans and runs."""
    return f"{RAW}/{name}"


def external_weights():
    """Weight files the config names that no workflow step makes (outside results/): every pretraining
    variant's init checkpoint, a method's adapted start (pretrain.st_adapter.init), finetune.checkpoints."""
    settings = [CFG.pretrain_variant(v) for v in CFG.pretrain_overlays()]
    settings += [CFG.method_settings(m, v) for m, v in PRETRAIN_RUNS if m != "endofm"]
    files = {getattr(s, "init", "random") for s in settings} - {"random"}
    files |= {CFG.external_weights(m) for m in CFG.finetune.methods if m in METHODS} - {None}
    files |= {c.path for c in CFG.finetune.checkpoints.values()}
    return sorted(f for f in files if not Path(f).is_relative_to(paths.RESULTS))


def absent(names, folder="."):
    """The ``names`` (paths under ``folder``) that do not exist now."""
    return [n for n in names if not Path(folder, n).exists()]


def config_args():
    """The command-line config files of this run as a `snakemake` option (for hints), or ""."""
    return " ".join(f"--configfile={os.path.relpath(f)}" for f in workflow.overwrite_configfiles)


def resolved_config_yaml():
    """The resolved settings, each with the file and line (or default) it came from (`show_config`)."""
    files = [os.path.relpath(f) for f in workflow.configfiles]
    return annotated_yaml(to_dict(CFG), files, COMMAND_LINE)


def clip_source_input(wildcards):
    return raw_folder(wildcards.source)


def pretrain_outputs():
    """The backbone of every pretraining job (endofm.methods.METHODS: method and variant)."""
    return [f"{paths.pretrain_dir(method, variant)}/backbone.pt" for method, variant in PRETRAIN_RUNS]


def pretrain_settings(wildcards):
    """Resolved settings of one pretraining job (a params value: any change reruns it)."""
    return to_dict(CFG.method_settings(wildcards.method, wildcards.variant))


def pretrain_inputs(wildcards):
    """Inputs of a pretraining job: its settings, every source's clips and its initial checkpoint
    (made by the workflow, e.g. another variant's backbone.pt, or a file that must exist)."""
    init = getattr(CFG.method_settings(wildcards.method, wildcards.variant), "init", "random")
    files = {
        "config": f"{paths.pretrain_dir(wildcards.method, wildcards.variant)}/pretrain.yaml",
        "clips": expand(f"{CLIPS}/{{source}}/clips.csv", source=PRETRAIN_SOURCES),
    }
    return files | ({"init": init} if init != "random" else {})


def launcher(gpus):
    """The Python launcher of a training job (this interpreter): torchrun (endofm.launch, which exits
    75 when a worker was pre-empted) with one process per GPU when there are several."""
    python = shlex.quote(sys.executable)
    if gpus > 1:
        return f"{python} -m endofm.launch --standalone --nproc-per-node={gpus}"
    return python


def finetune_inputs(bench):
    """Input function of a `bench` run: the index and raw files of its benchmark draw, and the checkpoint the
    run starts from (none for scratch)."""

    def inputs(wildcards):
        _, checkpoint = run_backbone(CFG, wildcards.method, wildcards.variant, pretrain_fraction(wildcards))
        data = bench + wildcards.draw  # the run's benchmark draw
        files = {"manifest": f"{BENCH}/{data}/manifest.csv", "raw": raw_folder(data)}
        return files | ({"checkpoint": checkpoint} if checkpoint else {})

    return inputs


def finetune_settings(bench):
    """Params function of a `bench` run: what it depends on besides its inputs (any change reruns it)."""

    def settings(wildcards):
        backbone, _ = run_backbone(CFG, wildcards.method, wildcards.variant)
        options = run_backbone_options(CFG, wildcards.method)
        settings = {"task": to_dict(CFG.finetune.task(bench, wildcards.method)), "backbone": to_dict(backbone)}
        return settings | ({"backbone_options": options} if options else {})

    return settings


def label_fraction(wildcards):
    """The label fraction of a run, from its path suffix."""
    return LABEL_FRACTIONS[wildcards.labels]


def draw(wildcards):
    """The benchmark draw of a run (0: the main draw), from its path suffix."""
    return DRAWS[wildcards.draw]


def pretrain_fraction(wildcards):
    """The pretraining fraction of a run (1: the finished pretraining), from its path suffix."""
    return PRETRAIN_FRACTIONS[wildcards.pt]


def snapshot_outputs(run_dir):
    """The snapshot files the pretraining axis asks of every pretraining job in SNAPSHOT_RUNS."""
    return [snapshot_path(run_dir, f).as_posix() for f in CFG.finetune.snapshot_fractions()]


def finetune_outputs():
    """The run record of every run in the matrix."""
    return [f"{paths.finetune_dir(run.path)}/run.json" for run in FINETUNE_RUNS]


def metrics_outputs(benchmark=None):
    """The metrics file of every run in the matrix (of one benchmark)."""
    return [paths.metrics_file(run.path) for run in FINETUNE_RUNS if benchmark in (None, run.benchmark)]


def ablation_metrics(name=None):
    """The metrics file of every fine-tuning run of ablation ``name`` (None: of every ablation)."""
    names = list(ABLATIONS) if name is None else [name]
    return list(dict.fromkeys(paths.metrics_file(run.path) for n in names for run in ABLATION_RUNS[n]))


def ablation_pretrain_outputs(name):
    """The metrics.csv of each pretraining variant of ablation ``name`` (row order)."""
    return [f"{paths.pretrain_dir('endofm', variant)}/metrics.csv" for variant in ABLATIONS[name]]


def report_ablations():
    """The ablation tables of the main report (report.ablations): name -> {pretraining variant: row label}."""
    return {name: ABLATIONS[name] for name in CFG.report.ablations}


def report_inputs(wildcards):
    """What the report reads: every metrics file, every pretraining run's metrics.csv, the jobs' benchmark
    files (wall time per rule), the paper's reported numbers, and the benchmark indexes (example frames)."""
    pretrained = [Path(p).parent for p in pretrain_outputs()]  # results/pretrain/<method>/<variant>
    return {
        "metrics": list(
            dict.fromkeys(metrics_outputs() + [m for n in CFG.report.ablations for m in ablation_metrics(n)])
        ),
        "pretrain": [str(d / "metrics.csv") for d in pretrained],
        "timings": expand(f"{paths.TIMINGS}/extract_clips/{{source}}.tsv", source=PRETRAIN_SOURCES)
        + [f"{paths.TIMINGS}/pretrain/{d.parent.name}/{d.name}.tsv" for d in pretrained]
        + [f"{paths.TIMINGS}/{stage}/{run.path}.tsv" for stage in ("finetune", "evaluate") for run in FINETUNE_RUNS],
        "robustness": robustness_outputs(),  # rules/robustness.smk
        "paper_results": str(Path(workflow.basedir) / "config/paper_results.yaml"),
        "manifests": [f"{BENCH}/{bench}/manifest.csv" for bench in BENCHMARKS],
    }


# Everything the report depends on besides its inputs (a change reruns it).
REPORT_PARAMS = {
    "settings": to_dict(CFG.report),
    "n_seeds": len(CFG.finetune.seeds),
    "synthetic": SYNTHETIC,
    "ablations": report_ablations(),
    "config_hash": config_hash(to_dict(CFG), digits=16),  # the report shows 16 digits
    "raw_dir": RAW,
    "benchmarks_dir": BENCH,
    "timings_dir": paths.TIMINGS,
}
