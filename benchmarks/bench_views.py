"""Throughput of multi-view sampling (MultiViewDataset in a DataLoader): samples/s and frames/s.

Two view configs: ``paper`` (globals of 8 and 16 frames at 224 px, locals 2, 2, 4, 4, 8, 8, 16,
16 frames at 96 px: 84 view frames a sample) on paper-size clips (150 frames, 256x320), and ``cpu``
(2 globals of 4 frames at 64 px, 4 locals of 2 frames at 32 px: 16 view frames) on CPU-demo clips
(32 frames, 64x80). The clips are textured, moving H.264 videos made in a temporary folder, or
the clips of ``--clips clips.csv`` for both configs. Each config runs with 0, 1 and 2 workers
(``--workers``); workers run torch single-threaded, the main process with ``--main-threads``
(default: torch's default). Small per-view tensor ops suffer badly from thread oversubscription:
on a busy 2-core host, 2 threads made augmentation ~10x slower than 1.

Printed per run: samples/s and view frames/s after the first batch (steady state) and the time
to the first batch (worker start-up included); then, in one process, how a sample's time splits
between decoding (open + one ``get_frames`` call) and augmentation.

    python benchmarks/bench_views.py [--clips clips.csv] [--workers 0 1 2] [--paper-samples 12]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from endofm.data.clips import MANIFEST_COLUMNS
from endofm.data.video import VideoReader, write_video
from endofm.io import write_csv
from endofm.pretraining.views import (
    MultiViewDataset,
    ViewConfig,
    augment_view,
    collate_views,
    load_clip_manifests,
    sample_frame_indices,
    view_shapes,
)

CONFIGS = {
    "paper": ViewConfig(),
    "cpu": ViewConfig(global_frames=(4, 4), global_size=64, local_frames=(2, 2, 2, 2), local_size=32),
}
#: Clips made for each config: (count, frames, height, width).
CORPORA = {"paper": (4, 150, 256, 320), "cpu": (8, 32, 64, 80)}


def make_corpus(folder: Path, count: int, frames: int, height: int, width: int, seed: int = 0) -> Path:
    """``count`` clips of drifting coloured blocks with noise, and their ``clips.csv``."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(count):
        block = 8
        base = rng.integers(0, 256, (height // block + 2, width // block + 2, 3), dtype=np.uint8)
        base = np.repeat(np.repeat(base, block, 0), block, 1)
        clip = np.stack([np.roll(base, (t, 2 * t), (0, 1))[:height, :width] for t in range(frames)])
        noise = rng.integers(-6, 7, clip.shape, dtype=np.int16)
        clip = np.clip(clip.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        name = f"clip{k:02d}.mp4"
        write_video(folder / name, clip, fps=30)
        rows.append(
            {"source": "bench", "source_video": name, "start_frame": 0, "frames": frames, "fps": 30,
             "width": width, "height": height, "path": name}
        )  # fmt: skip
    return write_csv(folder / "clips.csv", pd.DataFrame(rows, columns=MANIFEST_COLUMNS))


def run_loader(ds: MultiViewDataset, samples: int, batch: int, workers: int) -> tuple[float, float]:
    """Steady-state samples/s (after the first batch) and seconds to the first batch."""
    order = [i % len(ds) for i in range(samples)]
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, sampler=order, num_workers=workers, collate_fn=collate_views
    )
    start = time.perf_counter()
    first = None
    done = 0
    for views in loader:
        if first is None:
            first = time.perf_counter()
            first_n = len(views[0])
        done += len(views[0])
    end = time.perf_counter()
    rest = done - first_n
    rate = rest / (end - first) if rest else first_n / (first - start)
    return rate, first - start


def breakdown(ds: MultiViewDataset, samples: int) -> tuple[float, float, float]:
    """Mean ms per sample for decoding and for augmentation, and mean unique frames decoded, in this process."""
    decode = augment = unique = 0.0
    for k in range(samples):
        i = k % len(ds)
        rng = ds.rng(i)
        t0 = time.perf_counter()
        with VideoReader(ds.paths[i]) as reader:
            indices = sample_frame_indices(reader.num_frames, ds.cfg, rng)
            wanted, inverse = np.unique(np.concatenate(indices), return_inverse=True)
            frames = reader.get_frames(wanted)
        t1 = time.perf_counter()
        bounds = np.cumsum([0, *(len(idx) for idx in indices)])
        for (_, size, scale), lo, hi in zip(ds.cfg.views, bounds[:-1], bounds[1:], strict=True):
            augment_view(frames[inverse[lo:hi]], size, scale, ds.cfg, rng)
        t2 = time.perf_counter()
        decode, augment, unique = decode + t1 - t0, augment + t2 - t1, unique + len(wanted)
    return 1000 * decode / samples, 1000 * augment / samples, unique / samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, help="clips.csv to read (default: make small corpora in a temp folder)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["paper", "cpu"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers (0 1 2)")
    parser.add_argument("--paper-samples", type=int, default=9, help="samples per paper run (default 9)")
    parser.add_argument("--paper-batch", type=int, default=3, help="paper batch size (default 3, as the original)")
    parser.add_argument("--cpu-samples", type=int, default=96, help="samples per cpu run (default 96)")
    parser.add_argument("--cpu-batch", type=int, default=16, help="cpu batch size (default 16)")
    parser.add_argument("--breakdown-samples", type=int, default=4, help="samples for the decode/augment split (4)")
    parser.add_argument("--main-threads", type=int, help="torch threads of the main process (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.main_threads:
        torch.set_num_threads(args.main_threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s) in the main process")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            cfg = CONFIGS[name]
            if args.clips:
                manifest = args.clips
            else:
                count, frames, height, width = CORPORA[name]
                t0 = time.perf_counter()
                manifest = make_corpus(Path(tmp) / name, count, frames, height, width, args.seed)
                made = f"made in {time.perf_counter() - t0:.1f} s"
            clips = load_clip_manifests([manifest])
            ds = MultiViewDataset(clips, cfg, seed=args.seed)
            per_sample = sum(t for t, _ in view_shapes(cfg))
            size = f"{clips['frames'].iloc[0]} frames, {clips['width'].iloc[0]}x{clips['height'].iloc[0]}"
            print(f"\n{name}: {len(cfg.views)} views, {per_sample} view frames a sample; ", end="")
            print(f"{len(clips)} clips ({size}{'' if args.clips else ', ' + made})")
            samples = args.paper_samples if name == "paper" else args.cpu_samples
            batch = args.paper_batch if name == "paper" else args.cpu_batch
            print(
                f"  {'workers':>7} {'samples':>7} {'batch':>5} {'samples/s':>10} {'frames/s':>9} {'first batch s':>13}"
            )
            for workers in args.workers:
                rate, first = run_loader(ds, samples, batch, workers)
                print(f"  {workers:>7} {samples:>7} {batch:>5} {rate:>10.2f} {rate * per_sample:>9.0f} {first:>13.2f}")
            decode_ms, augment_ms, unique = breakdown(ds, args.breakdown_samples)
            print(
                f"  main process: decode {decode_ms:.0f} ms/sample ({unique:.0f} unique frames), "
                f"augment {augment_ms:.0f} ms/sample"
            )


if __name__ == "__main__":
    main()
