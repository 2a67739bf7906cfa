# Pretraining: one job per (method, variant) on the clips of every pretraining source.
# checkpoint.pt in the run folder is the resume state and deliberately not an output, so Snakemake
# never deletes it: a failed or pre-empted job (exit 75) continues where it stopped when rerun.


rule pretrain_config:
    output:
        "results/pretrain/{method}/{variant}/pretrain.yaml",
    log:
        f"{LOGS}/pretrain_config/{{method}}/{{variant}}.log",
    params:
        settings=pretrain_settings,
    localrule: True
    conda:
        "../envs/endofm.yaml"
    script:
        "../workflow_scripts/write_pretrain_config.py"


rule pretrain_model:
    input:
        config="results/pretrain/{method}/{variant}/pretrain.yaml",
        clips=expand(f"{CLIPS}/{{source}}/clips.csv", source=PRETRAIN_SOURCES),
    output:
        backbone="results/pretrain/{method}/{variant}/backbone.pt",
        metrics="results/pretrain/{method}/{variant}/metrics.csv",
    log:
        f"{LOGS}/pretrain/{{method}}/{{variant}}.log",
    benchmark:
        "results/benchmarks/pretrain/{method}/{variant}.tsv"
    threads: 2
    resources:
        gpu=CFG.pretrain.gpus,
    params:
        launcher=launcher(CFG.pretrain.gpus),
        run_dir=subpath(output.backbone, parent=True),
    conda:
        "../envs/endofm.yaml"
    shell:
        "{params.launcher} -m endofm.pretraining.train --config {input.config} --clips {input.clips}"
        " --out {params.run_dir} --threads {threads} --on-config-change restart > {log} 2>&1"
