# endofm workflow: data -> (pretrain -> finetune -> evaluate -> report, in later stages).
# Default config: the built-in synthetic corpus, on CPU, in minutes. Real data: --configfile config/paper.yaml
from snakemake.utils import min_version

min_version("9.19")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"


rule all:
    default_target: True
    input:
        data_outputs(),
        pretrain_outputs(),
    localrule: True


rule data:
    input:
        data_outputs(),
    localrule: True


rule pretrain:
    input:
        pretrain_outputs(),
    localrule: True
