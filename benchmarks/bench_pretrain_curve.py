"""Does more pretraining pay? Frozen read-outs of PolypDiag and CVC-12k from a method's backbone after 0, ¼, ½
and all of its pretraining steps, with a workflow config's settings and data.

One pretraining run with backbone snapshots (``PretrainConfig.snapshots``) in ``OUT/pretrain/``, then for every
fraction, benchmark and seed a frozen run (:func:`~endofm.tasks.runs.finetune_benchmark`) and its evaluation
(:func:`~endofm.tasks.benchmarks.evaluate_run`) under ``OUT/finetune/`` and ``OUT/metrics/``, named as the workflow
names them (``seed0-pt25``). Finished runs are reused, so a second call only prints. Reads the workflow's data
(``data.clips_dir``, ``data.benchmarks_dir``, ``data.raw_dir``): run ``snakemake data`` with the same config first.
Printed: per fraction the optimiser steps, the read-outs as mean ± std over seeds (×100) and the wall seconds
of its fine-tuning runs and evaluations.

    python benchmarks/bench_pretrain_curve.py [--config config/config.yaml] [--method endofm] [--seeds 0,1,2] \\
        [--fractions 0,0.25,0.5,1] [--threads 1] --out DIR
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from endofm.pretraining.train import RUN_NAME, pretrain, snapshot_path
from endofm.report.tables import fmt_seeds
from endofm.settings import load_workflow_config, run_backbone_options
from endofm.tasks.finetune import RunSpec
from endofm.tasks.runs import run_or_reuse

if not __package__:  # run as a file: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

#: The read-outs printed per benchmark: (metric key of flat_metrics, column title).
READOUTS = {
    "polypdiag": [("f1", "PolypDiag F1"), ("f1[linear_pooled]", "F1 pooled"), ("f1[knn]", "F1 kNN")],
    "cvc12k": [("dice", "CVC Dice")],
}


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, config=True, threads=1, out=True)
    parser.add_argument("--method", default="endofm")
    parser.add_argument("--variant", default="default")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--fractions", default="0,0.25,0.5,1", help="shares of the pretraining steps")
    parser.add_argument("--benchmarks", default="polypdiag,cvc12k")
    parser.add_argument("--protocol", default=None, help="default: the config's first finetune.protocols")
    args = parser.parse_args(argv)
    with common.config_errors():
        cfg = load_workflow_config(args.config)
        settings = cfg.method_settings(args.method, args.variant)
    fractions = sorted(common.numbers(args.fractions, float))
    seeds = common.numbers(args.seeds)
    benches = [b for b in args.benchmarks.split(",") if b]
    protocol = args.protocol or cfg.finetune.protocols[0]
    data = cfg.data
    clips = [Path(data.clips_dir) / source / "clips.csv" for source in data.pretrain_sources]
    needed = clips + [Path(data.benchmarks_dir) / b / "manifest.csv" for b in benches]
    missing = [p for p in needed if not p.is_file()] + [
        p for b in benches if not (p := Path(data.raw_dir) / b).is_dir()
    ]
    if missing:
        sys.exit(f"error: {missing[0]} not found: run `snakemake data` with {args.config} first")
    common.setup(args)

    run_dir = args.out / "pretrain" / args.method / args.variant
    snapshots = sorted({*settings.snapshots, *(f for f in fractions if f < 1)})
    settings = dataclasses.replace(settings, snapshots=snapshots, num_workers=0)
    with common.Timer() as timer:
        pretrain(settings, clips, run_dir, method=args.method, on_config_change="restart")
    record = json.loads((run_dir / RUN_NAME).read_text())
    print(f"pretraining: {record['steps']} steps, {timer.seconds:.0f} s (reused when done before)")

    options = run_backbone_options(cfg, args.method)
    synthetic = data.origin == "synthetic"
    rows = []
    for fraction in fractions:
        checkpoint = snapshot_path(run_dir, fraction)
        values: dict[str, list[float]] = {}
        wall = 0.0
        for bench in benches:
            task = cfg.finetune.task(bench)
            task.train.num_workers = 0
            manifest, raw = Path(data.benchmarks_dir) / bench / "manifest.csv", Path(data.raw_dir) / bench
            for seed in seeds:
                spec = RunSpec(bench, args.method, args.variant, protocol, "frozen", seed, pretrain_fraction=fraction)
                with common.Timer() as timer:
                    flat = run_or_reuse(
                        spec, task, manifest, raw, args.out, settings.backbone, checkpoint, options, synthetic
                    )
                wall += timer.seconds  # a reused run adds only the read of its metrics file
                for key, title in READOUTS.get(bench, []):
                    if key in flat:
                        values.setdefault(title, []).append(flat[key])
        step = record["steps"] if fraction == 1 else record["snapshots"][f"{fraction:g}"]["step"]
        rows.append((step, fraction, values, wall))

    titles = list(dict.fromkeys(t for _, _, values, _ in rows for t in values))
    print(f"\n{args.method}/{args.variant}, {protocol} protocol, frozen; seeds {args.seeds}; mean ± std (×100)")
    table = common.Table([("steps", ""), ("fraction", "g"), *((t, "") for t in titles), ("wall s", ".0f")], sep=" | ")
    table.print_header()
    for step, fraction, values, wall in rows:
        table.print_row(step, fraction, *(fmt_seeds(values.get(t, [])) for t in titles), wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
