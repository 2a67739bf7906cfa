"""Backbone throughput and peak memory: forward and forward+backward, SDPA vs explicit attention, fp32 vs bf16.

On CPU each (model, attention, dtype, mode) runs in a forked child so that its peak memory (growth
of the resident set's high-water mark, ``ru_maxrss``) is not masked by an earlier, larger run. On
CUDA runs share one process and the peak is ``torch.cuda.max_memory_allocated`` (weights included). GFLOP/clip is analytic (docs/original.md §9):
forward = 2 x MACs of the linear layers, attention and patch embedding; forward+backward = 3 x forward.

    python benchmarks/bench_backbone.py --iters 2            # CPU: ViT-B 8x224 and the CPU size
    python benchmarks/bench_backbone.py --device cuda --iters 20 --batch 16
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
from pathlib import Path

import torch

from endofm.models.vit import PRESETS, BackboneConfig, build_backbone

if not __package__:  # run as a file: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODES = ("fwd", "fwd+bwd")
#: The printed table: (row key, column title, format spec).
TABLE = [
    ("model", "model", "<17"), ("shape", "clip", ">7"), ("batch", "B", ">3"), ("attention", "attn", "<8"),
    ("dtype", "dtype", "<5"), ("mode", "mode", "<7"), ("ms_per_iter", "ms/iter", ">10.1f"),
    ("clips_per_s", "clips/s", ">8.2f"), ("frames_per_s", "frames/s", ">9.1f"),
    ("gflop_per_clip", "GFLOP/clip", ">10.2f"), ("tflops", "TFLOP/s", ">8.3f"), ("peak_mib", "peak MiB", ">9.0f"),
]  # fmt: skip


def forward_gflop(cfg: BackboneConfig, frames: int, size: int) -> float:
    """Analytic forward GFLOP for one clip (2 FLOP per multiply-accumulate)."""
    d, n, t = cfg.embed_dim, (size // cfg.patch_size) ** 2, frames
    spatial = t * (1 + n)  # CLS repeated per frame
    linear = n * t * 5 * d * d + spatial * 4 * d * d + (1 + n * t) * 2 * cfg.mlp_ratio * d * d
    attention = n * 2 * t * t * d + t * 2 * (1 + n) ** 2 * d
    patch = t * n * 3 * cfg.patch_size**2 * d
    return 2 * (cfg.depth * (linear + attention) + patch) / 1e9


def bf16_supported(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # native AVX512-BF16/AMX only
    return bool(check and check())


def _measure(job: dict) -> dict:
    """Run one configuration in this (fresh) process and return its row."""
    common.set_threads(job["threads"])
    device, dtype = job["device"], DTYPES[job["dtype"]]
    model = build_backbone(job["model"], drop_path_rate=0.0, attention=job["attention"]).to(device)
    cfg = model.config
    clip = torch.randn(job["batch"], 3, cfg.num_frames, cfg.img_size, cfg.img_size, device=device)
    train = job["mode"] == "fwd+bwd"
    model.train(train)

    def step() -> None:
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            if train:
                model(clip).float().square().mean().backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.inference_mode():
                    model(clip)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(job["warmup"]):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(job["iters"]):
        step()
    sync()
    seconds = (time.perf_counter() - start) / job["iters"]
    if device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    gflop = forward_gflop(cfg, cfg.num_frames, cfg.img_size) * (3 if train else 1)
    return {
        **{k: job[k] for k in ("model", "batch", "attention", "dtype", "mode")},
        "shape": f"{cfg.num_frames}x{cfg.img_size}",
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "ms_per_iter": seconds * 1e3,
        "clips_per_s": job["batch"] / seconds,
        "frames_per_s": job["batch"] * cfg.num_frames / seconds,
        "gflop_per_clip": gflop,
        "tflops": gflop * job["batch"] / seconds / 1e3,
        "peak_mib": peak_mib,
    }


def _child(job: dict, conn) -> None:
    try:
        conn.send(_measure(job))
    except BaseException as exc:
        conn.send(RuntimeError(f"{job}: {exc!r}"))
        raise


def _in_child(job: dict) -> dict:
    """``_measure`` in a forked child (cheap: torch is already imported, and the parent has run no ops)."""
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(job, sender), daemon=True)
    proc.start()
    sender.close()
    try:
        row = receiver.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"{job}: benchmark process died with exit code {proc.exitcode}") from None
    proc.join()
    if isinstance(row, BaseException):
        raise row
    return row


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, threads=0, json=True)
    parser.add_argument("--models", nargs="+", default=["vit_base_patch16", "vit_tiny_patch8"], choices=list(PRESETS))
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch", type=int, help="clips per step (default: CPU 1 for ViT-B/S, 8 else; CUDA 16/64)")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--attention", nargs="+", choices=["sdpa", "explicit"], default=["sdpa", "explicit"])
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=list(DTYPES),
        help="default: fp32, plus bf16 where the device supports it natively",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    common.setup(args)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible")
    dtypes = args.dtypes or (["fp32", "bf16"] if bf16_supported(device) else ["fp32"])
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; warmup {args.warmup}, iters {args.iters}")
    if "bf16" not in dtypes:
        print("bf16: skipped (no native bf16 on this device; force with --dtypes fp32 bf16)")

    def batch_for(model: str) -> int:
        if args.batch:
            return args.batch
        large = PRESETS[model]["embed_dim"] >= 384
        return (1 if large else 8) if device == "cpu" else (16 if large else 64)

    jobs = [
        dict(
            model=m,
            batch=batch_for(m),
            attention=a,
            dtype=d,
            mode=mode,
            device=device,
            iters=args.iters,
            warmup=args.warmup,
            threads=args.threads,
        )  # fmt: skip
        for m in args.models
        for d in dtypes
        for a in args.attention
        for mode in args.modes
    ]
    table = common.Table([(title, spec) for _, title, spec in TABLE])
    table.print_header(rule=True)
    rows = []
    for job in jobs:
        row = _measure(job) if device == "cuda" else _in_child(job)
        rows.append(row)
        table.print_row(*(row[key] for key, _, _ in TABLE))
    peak = "max_memory_allocated, weights included" if device == "cuda" else "growth of peak RSS, weights excluded"
    print(f"peak MiB: {peak}")
    if args.json:
        common.write_results(args.json, {"device": name, "torch": str(torch.__version__), "rows": rows})


if __name__ == "__main__":
    main()
