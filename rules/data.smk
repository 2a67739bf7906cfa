# Data stage: raw sources (synthesised, downloaded or placed by hand) -> clips and benchmark manifests.

if SYNTHETIC:

    rule synthesize:
        output:
            directory(f"{RAW}/{{name}}"),
        log:
            f"{LOGS}/synthesize/{{name}}.log",
        wildcard_constraints:
            name="|".join(PRETRAIN_SOURCES + list(BENCHMARK_DATA)),
        priority: 10  # before any fine-tuning: the pretrainings wait for the data stage
        conda:
            "../envs/endofm.yaml"
        params:
            # a benchmark draw's folder (polypdiag-draw2) is its benchmark generated with seed + draw
            generator=lambda wildcards: BENCHMARK_DATA.get(wildcards.name, (wildcards.name, 0))[0],
            synthetic=lambda wildcards: to_dict(
                CFG.synthetic.for_draw(BENCHMARK_DATA.get(wildcards.name, (wildcards.name, 0))[1])
            ),
        script:
            "../workflow_scripts/synthesize.py"

else:

    for _name in download_targets():

        rule:
            # Explicit target only (`snakemake download_<source>`): nothing downloads unless asked.
            name:
                f"download_{_name}"
            output:
                directory(f"{RAW}/{_name}"),
            log:
                f"{LOGS}/download/{_name}.log",
            retries: 2
            conda:
                "../envs/endofm.yaml"
            params:
                source=_name,
                downloads_dir=DOWNLOADS,
                overrides=to_dict(DATA.download_overrides.get(_name, [])),
            script:
                "../workflow_scripts/download.py"

        # an open source's download runs only as its explicit target, never for another job's input
        workflow.ruleorder("missing_raw", f"download_{_name}")

    rule missing_raw:
        # A raw folder that is not there: the job fails saying where to get the data and where to put it.
        # Only for folders absent when the workflow starts: one that a download made, or a user placed,
        # is no output of this rule (its params would otherwise count as changed and rerun it).
        output:
            directory(f"{RAW}/{{name}}"),
        log:
            f"{LOGS}/missing_raw/{{name}}.log",
        wildcard_constraints:
            name="|".join(absent(PRETRAIN_SOURCES + BENCHMARKS, RAW)) or "(?!)",
        localrule: True
        conda:
            "../envs/endofm.yaml"
        params:
            text=lambda wildcards, output: missing_data_message(
                wildcards.name, Path(output[0]), snakemake_args=config_args()
            ),
        message:
            "{wildcards.name}: raw data missing ({output})"
        script:
            "../workflow_scripts/missing_data.py"


rule extract_clips:
    input:
        clip_source_input,
    output:
        manifest=f"{CLIPS}/{{source}}/clips.csv",
        skipped=f"{CLIPS}/{{source}}/skipped.csv",
    log:
        f"{LOGS}/extract_clips/{{source}}.log",
    benchmark:
        f"{paths.TIMINGS}/extract_clips/{{source}}.tsv"
    priority: 10  # the pretrainings wait for the clips (rules/pretrain.smk)
    conda:
        "../envs/endofm.yaml"
    # One thread: a multi-thread job waits until that many cores are free at once, behind every 1-thread
    # job the greedy scheduler keeps starting (docs/decisions.md: Job priorities so pretrainings start first).
    threads: 1
    params:
        clips=to_dict(CFG.clips),
    script:
        "../workflow_scripts/extract_clips.py"


# One index rule per benchmark draw (index_polypdiag, index_polypdiag_draw2), each a target of its own.
for _data, (_bench, _draw) in BENCHMARK_DATA.items():

    rule:
        name:
            f"index_{_bench}" + (f"_draw{_draw}" if _draw else "")
        input:
            raw_folder(_data),
        output:
            benchmark_outputs(_bench, paths.draw_tag(_draw)),
        log:
            f"{LOGS}/index/{_data}.log",
        conda:
            "../envs/endofm.yaml"
        params:
            benchmark=_bench,
            options=get_benchmark(_bench).indexer.options(DATA),
        script:
            "../workflow_scripts/index_benchmark.py"


# A weights file the config names (a pretraining init, finetune.checkpoints, ...) that is not there: the jobs
# that start from it fail, saying where to get it.
rule missing_weights:
    output:
        "{weights}",
    log:
        f"{LOGS}/missing_weights/{{weights}}.log",
    wildcard_constraints:
        weights="|".join(map(re.escape, absent(external_weights()))) or "(?!)",
    localrule: True
    conda:
        "../envs/endofm.yaml"
    params:
        text=lambda wildcards, output: missing_weights_message(output[0], snakemake_args=config_args()),
    message:
        "{output}: weights file missing"
    script:
        "../workflow_scripts/missing_data.py"
