# Report: every metrics file, pretraining curve and benchmark file -> results/report/ (tables.md, .tex,
# .csv; index.html with embedded figures, figures/*.png). Local rules: they only read and plot.
# update(): Snakemake keeps the previous report while a job rebuilds it and restores it if the job fails
# (a bad metrics file must not cost the last good report); the scripts write each file atomically.


rule report_tables:
    input:
        unpack(report_inputs),
    output:
        md=update(report(f"{paths.REPORT}/tables.md", category="Report", caption="../report/tables.rst")),
        tex=update(f"{paths.REPORT}/tables.tex"),
        csv=update(report(f"{paths.REPORT}/tables.csv", category="Report", caption="../report/tables_csv.rst")),
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
        html=update(report(f"{paths.REPORT}/index.html", category="Report", caption="../report/index.rst")),
        figures=update(
            report(
                directory(f"{paths.REPORT}/figures"),
                patterns=["{name}.png"],
                category="Figures",
                caption="../report/figures.rst",
            )
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
        update(report(f"{paths.REPORT}/ablation_{{ablation}}.md", category="Ablations", caption="../report/tables.rst")),
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
