"""Where a pretraining step's time goes, on a workflow config's pretraining settings (default: the demo's).

Three parts, each a table:

1. **Data**, in this process with one torch thread: per batch, the time to decode the clips
   (open + one ``get_frames`` call each), to turn them into views (crop, resize, flip, jitter,
   normalise) and to collate them.
2. **Model**, on one prepared batch with ``--threads`` torch threads (each value in turn): teacher
   forward (global views, no gradient), student forward (all views), loss, backward, gradient
   clipping + AdamW step, teacher EMA. Medians over ``--steps`` steps after one warm-up step.
3. **End to end**: :func:`endofm.pretraining.train.pretrain` itself in a temporary folder for
   ``--epochs`` epochs of ``--steps`` steps (checkpoint and metrics writing, DataLoader start-up
   each epoch included), for every ``--threads`` x ``--workers`` pair: seconds per step and steps
   per minute from the wall time of the whole run minus its set-up (first-epoch start), with the
   per-epoch seconds of ``metrics.csv``.

``--method vcl`` (or any pretrained method of the workflow config) times part 3 with that method's resolved
settings; parts 1 and 2 take Endo-FM's views and step apart and run for ``--method endofm`` only.

Clips: ``--clips clips.csv ...`` (e.g. made with ``endofm synth`` + ``endofm extract-clips``), or
``--count`` textured moving clips of 32 frames at 64x80 made in a temporary folder. The machine's
load average is printed first and last: on a shared host compare variants of one run, not runs.
On a busy 2-core host more than one torch thread made every step several times slower (each
parallel region waits for its descheduled thread), hence the workflow's ``--threads`` split.

    python benchmarks/bench_pretrain_step.py [--method endofm|vcl|st_adapter] [--clips a/clips.csv ...]
        [--threads 1 2] [--workers 0 1 2]
        [--steps 8] [--epochs 2] [--precision fp32|bf16] [--attention sdpa|explicit] [--decode-cache-mb MB]
        [--parts data model e2e]

Part 3 also reports CPU seconds per step and steps per CPU-second (this process and its finished loader
workers), the figure to compare on a shared host. With the decoded-clip cache (``decode_cache_mb``, on by
default) and ``--workers 0`` only the first epoch decodes, so give it ``--epochs`` 3 or more and clips enough
for ``--steps`` batches (``--clips`` of the built-in corpus, e.g. ``--steps 8``).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from endofm.engine import DistInfo, autocast, build_loader
from endofm.pretraining.endofm import EndoFMObjective, PretrainConfig
from endofm.pretraining.objective import clip_gradients, ema_update, param_groups
from endofm.pretraining.train import pretrain
from endofm.pretraining.views import MultiViewDataset, collate_views, load_clip_manifests
from endofm.settings import load_workflow_config

if not __package__:  # run as a file: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

#: The end-to-end table: (column title, format spec).
E2E_TABLE = [
    ("threads", ">7"), ("workers", ">7"), ("wall s", ">7.1f"), ("s/step", ">7.3f"), ("steps/min", ">9.1f"),
    ("cpu s/step", ">10.3f"), ("steps/cpu-s", ">11.3f"), (" epoch seconds", ""),
]  # fmt: skip


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its finished children (loader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def data_breakdown(ds: MultiViewDataset, batches: int, batch: int) -> dict[str, list[float]]:
    """Seconds per batch for decode, views and collate, in this process."""
    out: dict[str, list[float]] = {"decode": [], "views": [], "collate": []}
    for b in range(batches):
        decode = views = 0.0
        items = []
        for k in range(batch):
            i = (b * batch + k) % len(ds)
            rng = ds.rng(i)
            with common.Timer() as decoding:
                frames, rows = ds.decode(i, rng)
            with common.Timer() as augmenting:
                items.append(ds.make_views(frames, rows, rng))
            decode, views = decode + decoding.seconds, views + augmenting.seconds
        with common.Timer() as collating:
            collate_views(items)
        out["decode"].append(decode)
        out["views"].append(views)
        out["collate"].append(collating.seconds)
    return out


def model_breakdown(cfg: PretrainConfig, views: list[torch.Tensor], steps: int) -> dict[str, list[float]]:
    """Seconds per step of each part of the training step (as ``_Pretraining._train_step``)."""
    torch.manual_seed(cfg.seed)
    objective = EndoFMObjective(cfg, DistInfo())
    student = objective.build_model()
    objective.setup(student)  # the EMA teacher and the loss, as the training loop builds them
    teacher, loss_fn = objective.teacher, objective.criterion
    student.train()
    optimizer = torch.optim.AdamW(param_groups(student), lr=1e-4)
    cpu = torch.device("cpu")
    parts = ("teacher", "student", "loss", "backward", "optimiser", "ema", "stats")
    out: dict[str, list[float]] = {k: [] for k in parts}
    for step in range(steps + 1):
        t = [time.perf_counter()]
        with torch.no_grad(), autocast(cfg.precision, cpu):
            teacher_out = teacher(views[: cfg.n_global])
        t.append(time.perf_counter())
        with autocast(cfg.precision, cpu):
            student_out = student(views)
        t.append(time.perf_counter())
        res = loss_fn(student_out, teacher_out, 1)
        t.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        res["loss"].backward()
        t.append(time.perf_counter())
        if cfg.clip_grad > 0:
            clip_gradients(student, cfg.clip_grad)
        optimizer.step()
        t.append(time.perf_counter())
        ema_update(teacher, student, 0.99)
        t.append(time.perf_counter())
        {k: float(res[k].detach()) for k in ("loss", "cv", "dm", "teacher_entropy", "batch_entropy", "center_norm")}
        t.append(time.perf_counter())
        if step:  # the first step warms up
            for k, a, b in zip(parts, t[:-1], t[1:], strict=True):
                out[k].append(b - a)
    return out


def end_to_end(
    cfg: PretrainConfig, manifests: list[Path], threads: int, workers: int, tmp: Path
) -> tuple[float, float, int, list]:
    """Wall and CPU seconds of a whole ``pretrain`` run, its steps, and metrics.csv's epoch seconds."""
    out = tmp / f"run_t{threads}_w{workers}"
    with common.torch_threads(threads), common.Timer() as timer:
        cpu = cpu_seconds()
        pretrain(cfg, manifests, out, workers=workers)
        cpu = cpu_seconds() - cpu
    metrics = pd.read_csv(out / "metrics.csv")
    return timer.seconds, cpu, int(metrics["steps"].sum()), metrics["seconds"].tolist()


def table(title: str, parts: dict[str, list[float]]) -> None:
    """Each part's median seconds and share of their sum, under ``title``."""
    medians = {k: statistics.median(v) for k, v in parts.items()}
    total = sum(medians.values())
    head = common.Table([("part", "<10"), ("median s", ">9.4f"), ("share", ">6.0%")], indent=f"  {title}: ")
    rows = common.Table(head.columns, indent=" " * len(head.indent))
    head.print_header()
    for k, m in medians.items():
        rows.print_row(k, m, m / total)
    rows.print_row("total", total)


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, config=True)
    parser.add_argument("--method", default="endofm", help="pretrained method whose settings part 3 runs (endofm)")
    parser.add_argument("--variant", default="default", help="pretraining variant (default: default)")
    parser.add_argument("--clips", type=Path, nargs="+", help="clips.csv manifests (default: made in a temp folder)")
    parser.add_argument("--count", type=int, default=48, help="clips to make without --clips (48)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (1 2)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers (0 1 2)")
    parser.add_argument("--steps", type=int, default=6, help="steps per epoch / model steps measured (6)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per end-to-end run (2; 0 skips the part)")
    parser.add_argument("--data-batches", type=int, default=2, help="batches for the data breakdown (2)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="override the config's precision")
    parser.add_argument("--attention", choices=["sdpa", "explicit"], help="override the backbone's attention")
    parser.add_argument(
        "--decode-cache-mb", type=float, help="override decode_cache_mb in part 3 (0: decode every time)"
    )
    parser.add_argument("--parts", nargs="+", choices=["data", "model", "e2e"], default=["data", "model", "e2e"])
    args = parser.parse_args(argv)

    with common.config_errors():
        workflow = load_workflow_config(args.config)
        cfg = workflow.pretrain.variant(args.variant)
        method_cfg = workflow.method_settings(args.method, args.variant)
    if args.method != "endofm":
        args.parts = [p for p in args.parts if p == "e2e"]  # data and model parts take Endo-FM's step apart
        print(f"method {args.method}: part 3 only, with its resolved settings")
    if args.precision:
        cfg.precision = args.precision
    if args.attention:
        cfg.backbone.attention = args.attention
    print(f"torch {torch.__version__}; {os.cpu_count()} CPUs; load average {load_avg()}")
    print(
        f"{cfg.backbone.name}, batch {cfg.batch_size_per_gpu}, views {cfg.views.global_frames}x{cfg.views.global_size}"
        f" + {cfg.views.local_frames}x{cfg.views.local_size}, out_dim {cfg.out_dim}, centering {cfg.centering}, "
        f"precision {cfg.precision}, attention {cfg.backbone.attention}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        manifests = args.clips or [common.make_corpus(Path(tmp) / "clips", args.count, 32, 64, 80)]
        clips = load_clip_manifests(manifests)
        ds = MultiViewDataset(clips, cfg.views, seed=cfg.seed)
        print(f"{len(clips)} clips")
        common.set_threads(1)
        if "data" in args.parts:
            print("\n1. data, one process, 1 thread (s per batch)")
            table("data", data_breakdown(ds, args.data_batches, cfg.batch_size_per_gpu))
        loader = build_loader(ds, cfg.batch_size_per_gpu, DistInfo(), collate_fn=collate_views)
        views = next(iter(loader))
        if "model" in args.parts:
            for threads in args.threads:
                with common.torch_threads(threads):
                    print(f"\n2. model step, {threads} torch thread(s) (s per step)")
                    table("model", model_breakdown(cfg, views, args.steps))
        if "e2e" in args.parts and args.epochs:
            run_cfg = dataclasses.replace(
                method_cfg,
                epochs=args.epochs,
                warmup_epochs=min(method_cfg.warmup_epochs, args.epochs),
                max_steps_per_epoch=args.steps,
            )
            if args.precision:
                run_cfg.precision = args.precision
            if args.attention:
                run_cfg.backbone.attention = args.attention
            if args.decode_cache_mb is not None:
                run_cfg.decode_cache_mb = args.decode_cache_mb
            print(f"\n3. end to end: pretrain(), {args.epochs} epochs of at most {args.steps} steps")
            e2e = common.Table(E2E_TABLE, indent="  ")
            e2e.print_header()
            for threads, workers in itertools.product(args.threads, args.workers):
                wall, cpu, steps, seconds = end_to_end(run_cfg, manifests, threads, workers, Path(tmp))
                epochs = " ".join(f"{s:.1f}" for s in seconds)
                e2e.print_row(
                    threads, workers, wall, wall / steps, 60 * steps / wall, cpu / steps, steps / cpu, " " + epochs
                )
    print(f"\nload average {load_avg()}")


if __name__ == "__main__":
    main()
