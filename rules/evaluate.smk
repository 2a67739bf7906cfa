# Evaluation: a run's test predictions -> results/metrics/<benchmark>/<run>.json (metrics, the run's
# identity, protocol, selected epoch, settings hash, versions, wall time). update(): a failed re-evaluation
# restores the previous metrics file instead of deleting it.


rule evaluate_run:
    input:
        run=f"{paths.FINETUNE}/{{benchmark}}/{RUN_PATH}/run.json",
        manifest=f"{BENCH}/{{benchmark}}{{draw}}/manifest.csv",
    output:
        update(f"{paths.METRICS}/{{benchmark}}/{RUN_PATH}.json"),
    log:
        f"{LOGS}/evaluate/{{benchmark}}/{RUN_PATH}.log",
    benchmark:
        f"{paths.TIMINGS}/evaluate/{{benchmark}}/{RUN_PATH}.tsv"
    localrule: True
    conda:
        "../envs/endofm.yaml"
    params:
        raw_dir=lambda wildcards: raw_folder(wildcards.benchmark + wildcards.draw),
        synthetic=SYNTHETIC,
    script:
        "../workflow_scripts/evaluate_run.py"
