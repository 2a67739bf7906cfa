# endofm workflow: data -> pretrain -> finetune -> evaluate (-> report, in a later stage).
# Default config: the built-in synthetic corpus, on CPU, in minutes. Real data: --configfile config/paper.yaml
from snakemake.utils import min_version

min_version("9.19")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/finetune.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        data_outputs(),
        pretrain_outputs(),
        metrics_outputs(),
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
    localrule: True


for _name in ABLATIONS:

    rule:
        name:
            f"ablation_{_name}"
        input:
            ablation_metrics(_name),
        localrule: True
