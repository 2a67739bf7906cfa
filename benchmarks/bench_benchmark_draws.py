"""How much of a frozen gap is the benchmark draw? Frozen read-outs of a pretrained backbone and of random
init (``scratch``) on independent draws of a built-in synthetic benchmark, several fine-tuning seeds each.

The demo's seed std covers fine-tuning randomness on one draw of each benchmark (``synthetic.seed``). Here
draw ``k`` is the benchmark generated with ``synthetic.seed: k`` and the config's other ``synthetic`` sizes,
under ``OUT/draw<k>/``; the backbone is the one the workflow pretrained (``results/pretrain/<method>/
<variant>/backbone.pt``, or ``--checkpoint``), so only the benchmark changes. Runs and metrics are named as
the workflow names them, under ``OUT/draw<k>/finetune/`` and ``OUT/draw<k>/metrics/`` (the draw of the
config's own ``synthetic.seed`` reads the workflow's benchmark data when it exists); finished ones are
reused, so a second call only prints. Printed: per draw and method the read-outs as mean ± std over seeds
(×100), the gap per draw, and the gap's mean ± std across draws beside twice the pooled seed std.

    python benchmarks/bench_benchmark_draws.py [--config config/config.yaml] [--benchmark polypdiag] \\
        [--draws 0,1,2] [--seeds 0,1,2] [--method endofm] [--checkpoint FILE] [--threads 1] --out DIR
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from endofm.data.synthetic import synthesize
from endofm.report.tables import fmt_seeds
from endofm.settings import load_workflow_config, run_backbone, run_backbone_options
from endofm.tasks.benchmarks import get_benchmark
from endofm.tasks.finetune import RunSpec
from endofm.tasks.runs import run_or_reuse

if not __package__:  # run as a file: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

#: The read-outs compared per benchmark: (metric key of flat_metrics, column title).
READOUTS = {
    "polypdiag": [("f1", "F1 (pooled probe)"), ("auroc", "AUROC (pooled probe)")],
    "cvc12k": [("dice", "Dice")],
    "kumc": [("AP50", "AP50"), ("f1_paper", "F1 (paper)")],
}


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, config=True, threads=1, out=True)
    parser.add_argument("--benchmark", default="polypdiag", choices=sorted(READOUTS))
    parser.add_argument("--draws", default="0,1,2", help="synthetic.seed of each draw of the benchmark")
    parser.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds per draw and method")
    parser.add_argument("--method", default="endofm", help="the pretrained method compared with scratch")
    parser.add_argument("--variant", default="default")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the workflow's pretraining output")
    parser.add_argument("--protocol", default=None, help="default: the config's first finetune.protocols")
    args = parser.parse_args(argv)
    with common.config_errors():
        cfg = load_workflow_config(args.config)
        backbone, checkpoint = run_backbone(cfg, args.method, args.variant)
        scratch_variant = cfg.finetune.method_variants("scratch")[0]
        scratch_backbone, _ = run_backbone(cfg, "scratch", scratch_variant)
    if cfg.data.origin != "synthetic":
        sys.exit(f"error: {args.config}: data.origin must be synthetic (this draws built-in benchmarks)")
    checkpoint = args.checkpoint or (Path(checkpoint) if checkpoint else None)
    if checkpoint is None or not checkpoint.is_file():
        sys.exit(f"error: {checkpoint}: no pretrained backbone; run the workflow's pretraining or pass --checkpoint")
    bench, protocol = args.benchmark, args.protocol or cfg.finetune.protocols[0]
    seeds, draws = common.numbers(args.seeds), common.numbers(args.draws)
    common.setup(args)
    task = cfg.finetune.task(bench)
    task.train.num_workers = 0
    arms = [
        (args.method, args.variant, backbone, checkpoint, run_backbone_options(cfg, args.method)),
        ("scratch", scratch_variant, scratch_backbone, None, {}),
    ]

    table: dict[tuple[int, str], dict[str, list[float]]] = {}
    for draw in draws:
        root = args.out / f"draw{draw}"
        raw, manifest = root / "raw" / bench, root / "benchmarks" / bench / "manifest.csv"
        own = Path(cfg.data.benchmarks_dir) / bench / "manifest.json"
        if draw == cfg.synthetic.seed and own.is_file():  # the workflow's own draw: read it, do not redraw
            raw, manifest = Path(cfg.data.raw_dir) / bench, own.with_suffix(".csv")
        with common.Timer() as timer:
            if not raw.is_dir():
                synthesize(bench, raw, dataclasses.replace(cfg.synthetic, seed=draw), progress=False)
            if not (manifest.parent / "manifest.json").is_file():
                get_benchmark(bench).index(raw, manifest.parent)
            for method, variant, arm_backbone, arm_checkpoint, options in arms:
                values = table.setdefault((draw, method), {})
                for seed in seeds:
                    spec = RunSpec(bench, method, variant, protocol, "frozen", seed)
                    flat = run_or_reuse(spec, task, manifest, raw, root, arm_backbone, arm_checkpoint, options)
                    for key, title in READOUTS[bench]:
                        values.setdefault(title, []).append(flat[key])
        print(f"draw {draw}: {timer.seconds:.0f} s (runs reused when done before)", flush=True)

    titles = [title for _, title in READOUTS[bench]]
    print(f"\n{bench}, {protocol} protocol, frozen; {args.method} ({checkpoint}) vs scratch; seeds {args.seeds}; ×100")
    rows = common.Table([(title, "") for title in ["draw", "method", *titles]], sep=" | ")
    rows.print_header()
    for draw in draws:
        for method, *_ in arms:
            rows.print_row(draw, method, *(fmt_seeds(table[draw, method][t]) for t in titles))
    print("\ngap = " + args.method + " − scratch: per draw (mean over seeds); across draws; 2 × pooled seed std")
    for title in titles:
        gaps, stds = [], []
        for draw in draws:
            a, b = (np.array(table[draw, m][title], dtype=float) * 100 for m in (args.method, "scratch"))
            gaps.append(a.mean() - b.mean())
            if a.size > 1 and b.size > 1:
                stds.append(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))
        spread = np.std(gaps, ddof=1) if len(gaps) > 1 else 0.0
        pooled = f"{2 * np.mean(stds):.1f}" if stds else "–"
        per_draw = ", ".join(f"{g:+.1f}" for g in gaps)
        print(f"{title}: {per_draw}; across draws {np.mean(gaps):+.1f} ± {spread:.1f}; 2 × pooled seed std {pooled}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
