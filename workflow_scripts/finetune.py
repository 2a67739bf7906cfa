"""Snakemake adapter: one fine-tuning run (endofm.tasks.runs.finetune_benchmark)."""

from endofm.engine import set_cpu_threads
from endofm.logs import job_log
from endofm.settings import load_workflow_config, run_backbone, run_backbone_options
from endofm.tasks.finetune import RunSpec
from endofm.tasks.runs import finetune_benchmark

smk = snakemake  # noqa: F821 (snakemake is injected)
with job_log(smk.log[0]):
    w = smk.wildcards
    cfg = load_workflow_config(smk.config)
    spec = RunSpec(
        smk.params.benchmark,
        w.method,
        w.variant,
        w.protocol,
        w.mode,
        int(w.seed),
        smk.params.label_fraction,
        smk.params.pretrain_fraction,
        smk.params.draw,
    )
    task = cfg.finetune.task(spec.benchmark, spec.method)
    task.train.num_workers = min(task.train.num_workers, smk.threads - 1)
    set_cpu_threads(smk.threads, task.train.num_workers)  # one thread per loader worker, torch the rest
    backbone, _ = run_backbone(cfg, spec.method, spec.variant, spec.pretrain_fraction)
    finetune_benchmark(
        spec,
        task,
        manifest=smk.input.manifest,
        raw_dir=smk.input.raw,
        out_dir=smk.params.run_dir,
        backbone=backbone,
        checkpoint=smk.input.get("checkpoint"),
        options=run_backbone_options(cfg, spec.method),
    )
