# endofm workflow: data -> pretrain -> finetune -> evaluate -> report.
# Default config: the built-in synthetic corpus, on CPU, in minutes. Real data: --configfile=config/paper.yaml
from snakemake.utils import min_version

min_version("9.19")

# config/config.yaml only when the command line names no config: a --configfile stands alone (keys it leaves
# out take the dataclass defaults, as `endofm --config` reads it), never merged over the demo's values.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/cluster.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/finetune.smk"
include: "rules/evaluate.smk"
include: "rules/robustness.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        data_outputs(),
        pretrain_outputs(),
        metrics_outputs(),
        robustness_outputs(),
        rules.report_tables.output,
        rules.report_html.output.html,
    localrule: True


rule data:
    input:
        data_outputs(),
    localrule: True


rule pretrain:
    input:
        pretrain_outputs(),
    localrule: True


rule finetune:
    input:
        finetune_outputs(),
    localrule: True


rule evaluate:
    input:
        metrics_outputs(),
    localrule: True


rule robustness:
    # evaluate.corruptions: the matrix's runs scored on corrupted test inputs (the report shows them)
    input:
        robustness_outputs(),
    localrule: True


rule show_config:
    # `snakemake show_config [--configfile=F]`: the resolved settings, each with the file and line (or
    # default) it came from; the same as `endofm config show [--config F]`.
    log:
        f"{LOGS}/show_config.log",
    localrule: True
    conda:
        "envs/endofm.yaml"
    params:
        text=resolved_config_yaml(),
    shell:
        # a shell job: a run: block would cost a second parse of the workflow in a subprocess
        "printf '%s' {params.text:q} | tee {log}"


rule main_table:
    input:
        rules.report_tables.output,
    localrule: True


rule report:
    input:
        rules.report_tables.output,
        rules.report_html.output.html,
    localrule: True


for _bench in BENCHMARKS:

    rule:
        name:
            _bench
        input:
            metrics_outputs(_bench),
        localrule: True


rule ablations:
    input:
        ablation_metrics(),
        expand(f"{paths.REPORT}/ablation_{{ablation}}.md", ablation=ABLATIONS),
    localrule: True


for _name in ABLATIONS:

    rule:
        name:
            f"ablation_{_name}"
        input:
            ablation_metrics(_name),
            f"{paths.REPORT}/ablation_{_name}.md",
        localrule: True
