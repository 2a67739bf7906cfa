# Fine-tuning: one job per run of the matrix (benchmark × method × variant × protocol × mode × seed
# × label fraction: `labels` is "" for every training video, "-labels25" for a quarter of them; and the
# pretraining axis: `pt` is "" for the finished pretraining, "-pt25" for its snapshot after a quarter of the steps;
# and the benchmark draw: `draw` is "" for the main draw, "-draw2" for draw 2 of synthetic.draws),
# one rule per benchmark because each writes its own prediction files. checkpoint.pt in the run folder
# is the resume state of a pre-empted job and deliberately not an output.

RUN_PATH = "{method}/{variant}/{protocol}/{mode}/seed{seed}{pt}{labels}{draw}"

for _bench in BENCHMARKS:

    rule:
        name:
            f"finetune_{_bench}"
        input:
            unpack(finetune_inputs(_bench)),
        output:
            model=f"{paths.FINETUNE}/{_bench}/{RUN_PATH}/model.pt",
            run=f"{paths.FINETUNE}/{_bench}/{RUN_PATH}/run.json",
            predictions=f"{paths.FINETUNE}/{_bench}/{RUN_PATH}/{get_benchmark(_bench).predictions}",
        log:
            f"{LOGS}/finetune/{_bench}/{RUN_PATH}.log",
        benchmark:
            f"{paths.TIMINGS}/finetune/{_bench}/{RUN_PATH}.tsv"
        conda:
            "../envs/endofm.yaml"
        threads: CFG.finetune.threads
        resources:
            gpu=CFG.finetune.gpus,
        params:
            benchmark=_bench,
            label_fraction=label_fraction,
            pretrain_fraction=pretrain_fraction,
            draw=draw,
            settings=finetune_settings(_bench),
            run_dir=subpath(output.run, parent=True),
        script:
            "../workflow_scripts/finetune.py"
