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

Clips: ``--clips clips.csv ...`` (e.g. made with ``endofm synth`` + ``endofm extract-clips``), or
``--count`` textured moving clips of 32 frames at 64x80 made in a temporary folder. The machine's
load average is printed first and last: on a shared host compare variants of one run, not runs.
On a busy 2-core host more than one torch thread made every step several times slower (each
parallel region waits for its descheduled thread), hence the workflow's ``--threads`` split.

    python benchmarks/bench_pretrain_step.py [--clips a/clips.csv ...] [--threads 1 2] [--workers 0 1 2]
        [--steps 8] [--epochs 2] [--precision fp32|bf16] [--attention sdpa|explicit] [--parts data model e2e]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from endofm.data.video import VideoReader
from endofm.engine import DistInfo, autocast, build_loader
from endofm.pretraining.endofm import EndoFMObjective, PretrainConfig
from endofm.pretraining.objective import clip_gradients, ema_update, param_groups
from endofm.pretraining.train import pretrain
from endofm.pretraining.views import (
    MultiViewDataset,
    augment_view,
    collate_views,
    load_clip_manifests,
    sample_frame_indices,
)
from endofm.settings import load_workflow_config


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def make_clips(folder: Path, count: int, seed: int = 0) -> Path:
    from bench_views import make_corpus  # same folder

    return make_corpus(folder, count, 32, 64, 80, seed)


def data_breakdown(ds: MultiViewDataset, batches: int, batch: int) -> dict[str, list[float]]:
    """Seconds per batch for decode, views and collate, in this process."""
    out: dict[str, list[float]] = {"decode": [], "views": [], "collate": []}
    for b in range(batches):
        decode = views = 0.0
        items = []
        for k in range(batch):
            i = (b * batch + k) % len(ds)
            rng = ds.rng(i)
            t0 = time.perf_counter()
            with VideoReader(ds.paths[i]) as reader:
                indices = sample_frame_indices(reader.num_frames, ds.cfg, rng)
                wanted, inverse = np.unique(np.concatenate(indices), return_inverse=True)
                frames = reader.get_frames(wanted)
            t1 = time.perf_counter()
            bounds = np.cumsum([0, *(len(idx) for idx in indices)])
            items.append(
                [
                    augment_view(frames[inverse[lo:hi]], size, scale, ds.cfg, rng)
                    for (_, size, scale), lo, hi in zip(ds.cfg.views, bounds[:-1], bounds[1:], strict=True)
                ]
            )
            t2 = time.perf_counter()
            decode, views = decode + t1 - t0, views + t2 - t1
        t3 = time.perf_counter()
        collate_views(items)
        out["decode"].append(decode)
        out["views"].append(views)
        out["collate"].append(time.perf_counter() - t3)
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
) -> tuple[float, int, list]:
    """Wall seconds of a whole ``pretrain`` run, its steps, and metrics.csv's epoch seconds."""
    out = tmp / f"run_t{threads}_w{workers}"
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        pretrain(cfg, manifests, out, workers=workers)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    metrics = pd.read_csv(out / "metrics.csv")
    return wall, int(metrics["steps"].sum()), metrics["seconds"].tolist()


def table(title: str, parts: dict[str, list[float]]) -> None:
    total = sum(statistics.median(v) for v in parts.values())
    print(f"  {title}: {'part':<10} {'median s':>9} {'share':>6}")
    for k, v in parts.items():
        m = statistics.median(v)
        print(f"  {'':<{len(title)}}  {k:<10} {m:>9.4f} {m / total:>6.0%}")
    print(f"  {'':<{len(title)}}  {'total':<10} {total:>9.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"), help="workflow config")
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
    parser.add_argument("--parts", nargs="+", choices=["data", "model", "e2e"], default=["data", "model", "e2e"])
    args = parser.parse_args(argv)

    wf = load_workflow_config(args.config)
    cfg = wf.pretrain.variant(args.variant)
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
        manifests = args.clips or [make_clips(Path(tmp) / "clips", args.count)]
        clips = load_clip_manifests(manifests)
        ds = MultiViewDataset(clips, cfg.views, seed=cfg.seed)
        print(f"{len(clips)} clips")
        torch.set_num_threads(1)
        if "data" in args.parts:
            print("\n1. data, one process, 1 thread (s per batch)")
            table("data", data_breakdown(ds, args.data_batches, cfg.batch_size_per_gpu))
        loader = build_loader(ds, cfg.batch_size_per_gpu, DistInfo(), collate_fn=collate_views)
        views = next(iter(loader))
        if "model" in args.parts:
            for threads in args.threads:
                torch.set_num_threads(threads)
                print(f"\n2. model step, {threads} torch thread(s) (s per step)")
                table("model", model_breakdown(cfg, views, args.steps))
            torch.set_num_threads(1)
        if "e2e" in args.parts and args.epochs:
            run_cfg = PretrainConfig(
                **{
                    **vars(cfg),
                    "epochs": args.epochs,
                    "warmup_epochs": min(cfg.warmup_epochs, args.epochs),
                    "max_steps_per_epoch": args.steps,
                }
            )
            print(f"\n3. end to end: pretrain(), {args.epochs} epochs of at most {args.steps} steps")
            print(f"  {'threads':>7} {'workers':>7} {'wall s':>7} {'s/step':>7} {'steps/min':>9}  epoch seconds")
            for threads, workers in itertools.product(args.threads, args.workers):
                wall, steps, seconds = end_to_end(run_cfg, manifests, threads, workers, Path(tmp))
                print(
                    f"  {threads:>7} {workers:>7} {wall:>7.1f} {wall / steps:>7.3f} {60 * steps / wall:>9.1f}  "
                    + " ".join(f"{s:.1f}" for s in seconds)
                )
    print(f"\nload average {load_avg()}")


if __name__ == "__main__":
    main()
