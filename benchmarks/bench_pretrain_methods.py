"""Wall time of one pretraining epoch per pretrained method (endofm, vcl, st_adapter) with a workflow
config's settings, through the shared loop, on the clips of that config's corpus.

Each method's settings are resolved as the workflow resolves them (``endofm.methods.METHODS``), then cut to
``--epochs`` epochs (warm-up clamped), data loaded in the main process; runs go to a temporary folder.
Printed per method: wall seconds per epoch (``metrics.csv``), process CPU seconds per epoch (set-up
included; steadier than wall time on a shared host), steps, and the parameter counts of ``run.json``.

    python benchmarks/bench_pretrain_methods.py --config config/config.yaml --clips a/clips.csv b/clips.csv \\
        [--methods endofm vcl st_adapter] [--threads 2] [--epochs 1] [--vcl-local]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from endofm.pretraining.train import pretrain
from endofm.settings import load_workflow_config

if not __package__:  # run as a file: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, config=True, threads=2)
    parser.add_argument("--clips", type=Path, nargs="+", required=True)
    parser.add_argument("--methods", nargs="+", default=["endofm", "vcl", "st_adapter"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--vcl-local", action="store_true", help="VCL with local concepts from epoch 0")
    args = parser.parse_args(argv)
    common.setup(args)
    with common.config_errors():
        cfg = load_workflow_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            settings = cfg.method_settings(method, "default")
            settings = dataclasses.replace(
                settings,
                epochs=args.epochs,
                warmup_epochs=min(settings.warmup_epochs, args.epochs),
                num_workers=0,
                device="cpu",
                **({"warmup_teacher_temp_epochs": 0} if hasattr(settings, "warmup_teacher_temp_epochs") else {}),
                **({"local_start_epoch": 0} if args.vcl_local and method == "vcl" else {}),
            )
            out = Path(tmp) / method
            with common.Timer(time.process_time) as timer:
                pretrain(settings, args.clips, out, method=method)
            cpu = timer.seconds / args.epochs
            metrics = pd.read_csv(out / "metrics.csv")
            record = json.loads((out / "run.json").read_text())
            print(
                f"{method}: {metrics['seconds'].mean():.1f} s/epoch, {cpu:.1f} CPU-s/epoch ({int(metrics['steps'].iloc[0])} steps, batch "
                f"{record['global_batch']}), {record['parameters'] / 1e6:.2f} M parameters "
                f"({record['trainable_parameters'] / 1e6:.2f} M trainable, backbone {record['backbone_parameters'] / 1e6:.2f} M)"
            )


if __name__ == "__main__":
    main()
