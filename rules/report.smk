# Report: every metrics file, pretraining curve and benchmark file -> results/report/ (tables.md, .tex,
# .csv; index.html with embedded figures, figures/*.png). Local rules: they only read and plot.


rule report_tables:
    input:
        unpack(report_inputs),
    output:
        md=report(f"{paths.REPORT}/tables.md", category="Report", caption="../report/tables.rst"),
        tex=f"{paths.REPORT}/tables.tex",
        csv=report(f"{paths.REPORT}/tables.csv", category="Report", caption="../report/tables_csv.rst"),
    log:
        f"{LOGS}/report/tables.log",
    localrule: True
    conda:
        "../envs/endofm.yaml"
    params:
        **REPORT_PARAMS,
        parts=["tables"],
    script:
        "../workflow_scripts/report.py"


rule report_html:
    input:
        unpack(report_inputs),
    output:
        html=report(f"{paths.REPORT}/index.html", category="Report", caption="../report/index.rst"),
        figures=report(
            directory(f"{paths.REPORT}/figures"),
            patterns=["{name}.png"],
            category="Figures",
            caption="../report/figures.rst",
        ),
    log:
        f"{LOGS}/report/html.log",
    localrule: True
    conda:
        "../envs/endofm.yaml"
    params:
        **REPORT_PARAMS,
        parts=["html"],
    script:
        "../workflow_scripts/report.py"


rule report_ablation:
    input:
        metrics=lambda w: ablation_metrics(w.ablation),
    output:
        report(f"{paths.REPORT}/ablation_{{ablation}}.md", category="Ablations", caption="../report/tables.rst"),
    log:
        f"{LOGS}/report/ablation_{{ablation}}.log",
    localrule: True
    conda:
        "../envs/endofm.yaml"
    params:
        settings=to_dict(CFG.report),
        variants=lambda w: ABLATIONS[w.ablation],
        n_seeds=lambda w: len(CFG.ablations[w.ablation].seeds or CFG.finetune.seeds),
    script:
        "../workflow_scripts/report_ablation.py"
