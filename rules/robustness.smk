# Robustness read-out (evaluate.corruptions): each finished run of the matrix in evaluate.modes scored again on
# its test split under every configured corruption and severity, one job per run (the model is loaded once);
# results/metrics/robustness/<benchmark>/<run>/<corruption>-s<severity>.json. Not retrained: the inputs
# are the run's model.pt and run.json (and, for a frozen PolypDiag probe, the backbone it read out).

from endofm.settings import robustness_files

#: (corruption, severity) cells, in config order
CORRUPTION_CELLS = CFG.evaluate.cells()


def robustness_outputs(benchmark=None):
    """The robustness metrics files of every scored run (of one benchmark)."""
    return robustness_files(CFG, benchmark)


def robustness_inputs(wildcards):
    """A run's record and model, the benchmark's index and raw files, and the checkpoint the run started from."""
    run_dir = f"{paths.FINETUNE}/{wildcards.benchmark}/" + RUN_PATH.format(**dict(wildcards.items()))
    return finetune_inputs(wildcards.benchmark)(wildcards) | {
        "run": f"{run_dir}/run.json",
        "model": f"{run_dir}/model.pt",
    }


rule robustness_run:
    input:
        unpack(robustness_inputs),
    output:
        [paths.robustness_file(f"{{benchmark}}/{RUN_PATH}", name, s) for name, s in CORRUPTION_CELLS],
    log:
        f"{LOGS}/robustness/{{benchmark}}/{RUN_PATH}.log",
    benchmark:
        f"{paths.TIMINGS}/robustness/{{benchmark}}/{RUN_PATH}.tsv"
    conda:
        "../envs/endofm.yaml"
    threads: CFG.finetune.threads
    resources:
        gpu=CFG.finetune.gpus,
    params:
        cells=CORRUPTION_CELLS,
        synthetic=SYNTHETIC,
    script:
        "../workflow_scripts/robustness.py"
