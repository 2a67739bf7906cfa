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

import sys
import tempfile
import time
from pathlib import Path

import torch

from endofm.pretraining.views import MultiViewDataset, ViewConfig, collate_views, load_clip_manifests, view_shapes

if not __package__:  # run as a file: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

CONFIGS = {
    "paper": ViewConfig(),
    "cpu": ViewConfig(global_frames=(4, 4), global_size=64, local_frames=(2, 2, 2, 2), local_size=32),
}
#: Clips made for each config: (count, frames, height, width).
CORPORA = {"paper": (4, 150, 256, 320), "cpu": (8, 32, 64, 80)}
#: The table of the DataLoader runs: (column title, format spec).
LOADER_TABLE = [
    ("workers", ">7"), ("samples", ">7"), ("batch", ">5"), ("samples/s", ">10.2f"), ("frames/s", ">9.0f"),
    ("first batch s", ">13.2f"),
]  # fmt: skip


make_corpus = common.make_corpus  # bench_gpu.py imports it from here


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
        with common.Timer() as decoding:
            frames, rows = ds.decode(i, rng)
        with common.Timer() as augmenting:
            ds.make_views(frames, rows, rng)
        decode, augment, unique = decode + decoding.seconds, augment + augmenting.seconds, unique + len(frames)
    return 1000 * decode / samples, 1000 * augment / samples, unique / samples


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, seed=True)
    parser.add_argument("--clips", type=Path, help="clips.csv to read (default: make small corpora in a temp folder)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["paper", "cpu"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers (0 1 2)")
    parser.add_argument("--paper-samples", type=int, default=9, help="samples per paper run (default 9)")
    parser.add_argument("--paper-batch", type=int, default=3, help="paper batch size (default 3, as the original)")
    parser.add_argument("--cpu-samples", type=int, default=96, help="samples per cpu run (default 96)")
    parser.add_argument("--cpu-batch", type=int, default=16, help="cpu batch size (default 16)")
    parser.add_argument("--breakdown-samples", type=int, default=4, help="samples for the decode/augment split (4)")
    parser.add_argument("--main-threads", type=int, help="torch threads of the main process (default: torch's)")
    args = parser.parse_args(argv)
    common.setup(args)
    common.set_threads(args.main_threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s) in the main process")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            cfg = CONFIGS[name]
            if args.clips:
                manifest = args.clips
            else:
                count, frames, height, width = CORPORA[name]
                with common.Timer() as timer:
                    manifest = common.make_corpus(Path(tmp) / name, count, frames, height, width, args.seed)
                made = f"made in {timer.seconds:.1f} s"
            clips = load_clip_manifests([manifest])
            ds = MultiViewDataset(clips, cfg, seed=args.seed)
            per_sample = sum(t for t, _ in view_shapes(cfg))
            size = f"{clips['frames'].iloc[0]} frames, {clips['width'].iloc[0]}x{clips['height'].iloc[0]}"
            print(f"\n{name}: {len(cfg.views)} views, {per_sample} view frames a sample; ", end="")
            print(f"{len(clips)} clips ({size}{'' if args.clips else ', ' + made})")
            samples = args.paper_samples if name == "paper" else args.cpu_samples
            batch = args.paper_batch if name == "paper" else args.cpu_batch
            table = common.Table(LOADER_TABLE, indent="  ")
            table.print_header()
            for workers in args.workers:
                rate, first = run_loader(ds, samples, batch, workers)
                table.print_row(workers, samples, batch, rate, rate * per_sample, first)
            decode_ms, augment_ms, unique = breakdown(ds, args.breakdown_samples)
            print(
                f"  main process: decode {decode_ms:.0f} ms/sample ({unique:.0f} unique frames), "
                f"augment {augment_ms:.0f} ms/sample"
            )


if __name__ == "__main__":
    main()
