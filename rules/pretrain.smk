# Pretraining: one job per (method, variant) on the clips of every pretraining source; the method (a
# pretrained entry of endofm.methods.METHODS) is written into pretrain.yaml and the command dispatches on it.
# checkpoint.pt in the run folder is the resume state and deliberately not an output, so Snakemake
# never deletes it: a failed or pre-empted job (exit 75) continues where it stopped when rerun.


rule pretrain_config:
    output:
        f"{PRETRAIN_DIR}/pretrain.yaml",
    log:
        f"{LOGS}/pretrain_config/{{method}}/{{variant}}.log",
    priority: lambda w: CFG.pretrain_priority(w.method, w.variant)  # the pretraining waits for it
    localrule: True
    conda:
        "../envs/endofm.yaml"
    params:
        method="{method}",
        settings=pretrain_settings,
    script:
        "../workflow_scripts/write_pretrain_config.py"


rule pretrain_model:
    input:
        unpack(pretrain_inputs),
    output:
        backbone=f"{PRETRAIN_DIR}/backbone.pt",
        metrics=f"{PRETRAIN_DIR}/metrics.csv",
        run=f"{PRETRAIN_DIR}/run.json",
    log:
        f"{LOGS}/pretrain/{{method}}/{{variant}}.log",
    benchmark:
        f"{paths.TIMINGS}/pretrain/{{method}}/{{variant}}.tsv"
    # Pretrainings are the long jobs every pretrained method's fine-tunes wait for: start them as soon as
    # their clips exist, the longest first (docs/decisions.md: Job priorities so pretrainings start first).
    priority: lambda w: CFG.pretrain_priority(w.method, w.variant)
    conda:
        "../envs/endofm.yaml"
    threads: CFG.pretrain.threads
    resources:
        gpu=CFG.pretrain.gpus,
    params:
        launcher=launcher(CFG.pretrain.gpus),
        run_dir=subpath(output.backbone, parent=True),
        threads=lambda w, threads: max(1, threads // max(1, CFG.pretrain.gpus)),  # per process
    shell:
        # Snakemake deletes {log} before every attempt: each attempt writes its own file, {log}.<UTC start>.<SLURM
        # job id>, and {log} links to the latest, so a resumed retry keeps the pre-empted attempt's log
        'attempt_log={log:q}".$(date -u +%Y%m%dT%H%M%SZ).${{SLURM_JOB_ID:-local}}"; ln -sfn "$(basename "$attempt_log")" {log:q};'
        " {params.launcher} -m endofm.cli pretrain --config {input.config:q} --clips {input.clips:q}"
        ' --out {params.run_dir:q} --threads {params.threads} --on-config-change restart > "$attempt_log" 2>&1'


# The pretraining axis (finetune.pretrain_fractions): the same job, but its backbone snapshots are outputs too
# (the fractions reach the job through pretrain.yaml's `snapshots`, so a change of them reruns it).
if SNAPSHOT_RUNS:

    use rule pretrain_model as pretrain_model_snapshots with:
        output:
            backbone=f"{PRETRAIN_DIR}/backbone.pt",
            metrics=f"{PRETRAIN_DIR}/metrics.csv",
            run=f"{PRETRAIN_DIR}/run.json",
            snapshots=snapshot_outputs(PRETRAIN_DIR),
        wildcard_constraints:
            method="|".join(sorted({m for m, _ in SNAPSHOT_RUNS})),
            variant="|".join(sorted({v for _, v in SNAPSHOT_RUNS})),

    ruleorder: pretrain_model_snapshots > pretrain_model
