"""Do two runs of the experiment matrix agree? Every metrics file of A beside the same run in B.

For two metrics folders (``results/metrics`` of two working folders, or ``docs/evidence/metrics``) that differ in
one setting, e.g. fp32 against bf16 pretraining: runs are paired by (benchmark, method, variant, protocol, mode,
label fraction, pretraining fraction, draw, seed). Per cell (all but draw and seed) and per metric (each
benchmark's Table 1 metric and its threshold-free score), printed ×100: the means in A and B, the paired
difference B − A as mean ± std over the pairs, the largest |B − A|, the two-sided paired t p, and A's spread
between seeds (the std over the (draw, seed) pairs of the cell after removing each draw's mean), the yardstick a
difference is small or large against. Runs in one folder only are counted and left out. ``--json`` keeps the rows.

    python benchmarks/bench_metrics_diff.py A B [--json FILE]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

if not __package__:  # run as a file: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

#: The run axes besides draw and seed; a cell of the comparison.
CELL = ("benchmark", "method", "variant", "protocol", "mode", "label_fraction", "pretrain_fraction")


def within_draw_std(values: dict[tuple[int, int], float]) -> float:
    """The std of (draw, seed) values after subtracting each draw's mean (seed spread, not draw spread)."""
    by_draw: dict[int, list[float]] = {}
    for (draw, _), v in values.items():
        by_draw.setdefault(draw, []).append(v)
    residuals = [v - statistics.fmean(vs) for vs in by_draw.values() for v in vs if len(vs) > 1]
    dof = sum(len(vs) - 1 for vs in by_draw.values() if len(vs) > 1)
    return (sum(r * r for r in residuals) / dof) ** 0.5 if dof else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, json=True)
    parser.add_argument("a", type=Path, help="metrics folder A (the reference)")
    parser.add_argument("b", type=Path, help="metrics folder B")
    args = parser.parse_args(argv)
    from endofm.report.collect import ReportError, collect_metrics
    from endofm.report.stats import paired_t_test
    from endofm.tasks.benchmarks import BENCHMARKS

    frames = {}
    for name, folder in (("A", args.a), ("B", args.b)):
        if not folder.is_dir():
            sys.exit(f"error: {folder}: not a folder of metrics files")
        try:
            frames[name] = collect_metrics(folder.rglob("*.json"))[0]
        except ReportError as exc:
            sys.exit(f"error: {exc}")
    metrics = {
        b: [e.headline.metric] + ([e.threshold_free[0]] if e.threshold_free else []) for b, e in BENCHMARKS.items()
    }
    keyed = {}
    for name, df in frames.items():
        df = df[df.apply(lambda r: r["metric"] in metrics.get(r["benchmark"], ()), axis=1)]
        keyed[name] = {(*(r[k] for k in CELL), r["draw"], r["seed"], r["metric"]): r["value"] for _, r in df.iterrows()}
    common_keys = keyed["A"].keys() & keyed["B"].keys()
    only = {n: len(keyed[n].keys() - common_keys) for n in keyed}
    print(f"{len(common_keys)} (run, metric) pairs; only in A: {only['A']}, only in B: {only['B']}")
    cells: dict[tuple, dict[tuple[int, int], tuple[float, float]]] = {}
    for key in common_keys:
        *cell, draw, seed, metric = key
        cells.setdefault((*cell, metric), {})[(draw, seed)] = (keyed["A"][key], keyed["B"][key])
    table = common.Table([
        ("benchmark", "<10"), ("method", "<11"), ("mode", "<7"), ("lab", ">4"), ("pt", ">5"), ("metric", "<9"),
        ("n", ">3"), ("A", ">6"), ("B", ">6"), ("B-A", ">13"), ("max|B-A|", ">9"), ("p", ">7"), ("A seed std", ">11"),
    ])  # fmt: skip
    table.print_header(rule=True)
    rows = []
    for cell in sorted(cells, key=lambda c: tuple(map(str, c))):
        pairs = cells[cell]
        a = [v[0] for v in pairs.values()]
        b = [v[1] for v in pairs.values()]
        d = [y - x for x, y in zip(a, b, strict=True)]
        row = dict(zip((*CELL, "metric"), cell, strict=True)) | {
            "n": len(d),
            "mean_a": statistics.fmean(a),
            "mean_b": statistics.fmean(b),
            "diff_mean": statistics.fmean(d),
            "diff_std": statistics.stdev(d) if len(d) > 1 else float("nan"),
            "diff_max": max(abs(x) for x in d),
            "p": paired_t_test(b, a),
            "seed_std_a": within_draw_std({k: v[0] for k, v in pairs.items()}),
        }
        rows.append(row)
        table.print_row(
            row["benchmark"], row["method"], row["mode"], f"{row['label_fraction']:g}", f"{row['pretrain_fraction']:g}",
            row["metric"], row["n"], f"{100 * row['mean_a']:.1f}", f"{100 * row['mean_b']:.1f}",
            f"{100 * row['diff_mean']:+.1f} ± {100 * row['diff_std']:.1f}", f"{100 * row['diff_max']:.1f}",
            f"{row['p']:.3g}", f"{100 * row['seed_std_a']:.1f}",
        )  # fmt: skip
    if args.json:
        print(common.write_results(args.json, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
