# Pretraining: one job per (method, variant) on the clips of every pretraining source; the method (a
# pretrained entry of endofm.methods.METHODS) is written into pretrain.yaml and the command dispatches on it.
# checkpoint.pt in the run folder is the resume state and deliberately not an output, so Snakemake
# never deletes it: a failed or pre-empted job (exit 75) continues where it stopped when rerun.


rule pretrain_config:
    output:
        "results/pretrain/{method}/{variant}/pretrain.yaml",
    log:
        f"{LOGS}/pretrain_config/{{method}}/{{variant}}.log",
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
        backbone="results/pretrain/{method}/{variant}/backbone.pt",
        metrics="results/pretrain/{method}/{variant}/metrics.csv",
        run="results/pretrain/{method}/{variant}/run.json",
    log:
        f"{LOGS}/pretrain/{{method}}/{{variant}}.log",
    benchmark:
        "results/benchmarks/pretrain/{method}/{variant}.tsv"
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
        "{params.launcher} -m endofm.cli pretrain --config {input.config} --clips {input.clips}"
        " --out {params.run_dir} --threads {params.threads} --on-config-change restart > {log} 2>&1"
