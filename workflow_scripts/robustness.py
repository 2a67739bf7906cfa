"""Snakemake adapter: one finished run scored under the configured corruptions (endofm.tasks.robustness)."""

from pathlib import Path

from endofm.data.corruptions import ClipCorruption
from endofm.engine import set_cpu_threads
from endofm.logs import job_log
from endofm.settings import load_workflow_config
from endofm.tasks.robustness import evaluate_robustness

smk = snakemake  # noqa: F821 (snakemake is injected)
with job_log(smk.log[0]):
    cfg = load_workflow_config(smk.config)
    task = cfg.finetune.task(smk.wildcards.benchmark)
    workers = min(task.train.num_workers, smk.threads - 1)
    set_cpu_threads(smk.threads, workers)
    evaluate_robustness(
        Path(smk.input.run).parent,
        smk.input.manifest,
        smk.input.raw,
        [ClipCorruption(name, int(s)) for name, s in smk.params.cells],
        list(smk.output),
        type(task),
        synthetic=smk.params.synthetic,
        num_workers=workers,
    )
