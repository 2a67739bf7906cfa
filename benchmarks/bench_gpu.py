"""The prepared device check: proves the CUDA path of every stage in one command, one table and one JSON.

Runs on whatever device exists (CUDA if visible, else the CPU). Each part runs in its own process under
its own time limit; a part that fails or runs out of time reports its error in the table and the others
still run. Parts and their limits on a GPU (sum 445 s, so the whole check ends in under 8 minutes on one
H100):

- ``backbone`` (60 s): ViT-B/16 8x224 forward+backward at batch 8, fp32 / bf16 / fp16 autocast x SDPA /
  explicit attention: clips/s, TFLOP/s (``torch.utils.flop_counter``), MFU against the card's dense bf16
  peak (:data:`BF16_PEAK_TFLOPS`, else unknown), peak memory, and the relative error of the bf16 and fp16
  outputs against fp32 on the same weights and clip.
- ``pretrain`` (90 s): one Endo-FM pretraining step at ``config/paper.yaml``'s recipe (2 global views of
  8/16 frames at 224, 8 local views at 96, K = 65,536, batch 3), run by the training loop's own step
  (``endofm.pretraining.train``) on a batch of its own loader: steps/s, TFLOP/s, MFU, peak memory, and the
  hours 30 epochs of the paper's 32,896 clips would take on 4 GPUs at global batch 12 (as the original)
  and at the largest per-GPU batch that fits (doubling, then bisection to within 1/8); also the step in
  the original's fp16 with the GradScaler (the config's ``auto`` gives bf16 on a GPU that has it).
- ``torchrun`` (75 s): the same step under ``torchrun --nproc_per_node=1``, NCCL (gloo on CPU), the
  student wrapped in DDP; its losses must equal the single-process ones (relative difference <= 1e-4).
- ``finetune`` (90 s): a real fine-tuning run (``endofm.tasks.runs.finetune_benchmark``: 2 epochs of 2
  steps, evaluation, checkpoints) of each benchmark at the paper's sizes (PolypDiag 8x224 batch 4,
  TransUNet CVC-12k on 25-frame sequences, the KUMC detector at 640x640, T = 3) on a small synthetic
  benchmark, in the recipe's precision (auto: bf16 on CUDA) and in fp16 with the GradScaler.
- ``workflow`` (130 s): ``snakemake all`` on ``tests/configs/tiny.yaml`` with ``device: cuda``, timed.

``--dry`` runs every part at tiny sizes on the CPU (the tiny config; the workflow part is a dry run,
``snakemake -n``), in under a minute: the logic of the check, tested in ``make test``.

    python benchmarks/bench_gpu.py [--json PATH] [--parts backbone pretrain ...] [--dry]

The JSON (default ``results/benchmarks/gpu_check.json``) is rewritten after every part; each part's log
is kept beside it in ``<name>.logs/``. Exit status 0 when every part passed, 1 otherwise.
"""

from __future__ import annotations

# Only the standard library at the top: the driver starts fast and answers bad input in a fraction of a
# second; torch and endofm are imported inside each part's process.
import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER = ROOT / "config/paper.yaml"
TINY = ROOT / "tests/configs/tiny.yaml"
PARTS = ("backbone", "pretrain", "torchrun", "finetune", "workflow")
#: Seconds per part on a GPU; their sum (445, plus at most 5 s to stop each) keeps the whole check under 8 minutes.
LIMITS = {"backbone": 60, "pretrain": 90, "torchrun": 75, "finetune": 90, "workflow": 130}
#: Guards only in --dry: the whole dry run takes well under a minute.
DRY_LIMITS = {"backbone": 40, "pretrain": 40, "torchrun": 40, "finetune": 60, "workflow": 60}
DEFAULT_JSON = ROOT / "results/benchmarks/gpu_check.json"

#: The original's pretraining corpus (docs/original.md §3.1) and cluster: 32,896 clips, 4 GPUs.
CORPUS_CLIPS = 32_896
ORIGINAL_GPUS = 4
#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s from NVIDIA's datasheets; first match of the
#: device name wins. A MIG slice or an unlisted card gets no MFU.
BF16_PEAK_TFLOPS = (
    (r"H200 NVL", 835.0),
    (r"GH200|H200", 989.4),
    (r"H100 NVL", 835.0),
    (r"H100 PCIe", 756.0),
    (r"H100", 989.4),  # SXM5 ("H100 80GB HBM3")
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"L40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
)
#: torchrun part: steps compared, and the largest relative loss difference that counts as equal.
DDP_STEPS = 3
DDP_RTOL = 1e-4
#: --dry: a pretend device memory for the largest-batch search (batches above it "do not fit").
DRY_BATCH_CAP = 8
TABLE = ("part", "case", "status", "s/step", "items/s", "TFLOP/s", "MFU", "peak MiB", "note")


class UserError(Exception):
    """Bad input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UserError(message)


def peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of the card called ``name`` (:data:`BF16_PEAK_TFLOPS`), or None."""
    if "MIG" in name:
        return None
    return next((peak for pattern, peak in BF16_PEAK_TFLOPS if re.search(pattern, name)), None)


# ----------------------------------------------------------------------------------------------------
# Processes


def run_group(
    cmd: list[str], timeout: float, log: Path, env: dict[str, str] | None = None, cwd=None
) -> tuple[int, bool]:
    """Run ``cmd`` in its own session with stdout and stderr to ``log``; at ``timeout`` (or when this process
    is interrupted) the whole session, torchrun's workers and Snakemake's jobs included, is stopped (SIGTERM,
    SIGKILL 5 s later). Returns (exit status, timed out)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        try:
            return proc.wait(timeout=max(timeout, 1.0)), False
        except subprocess.TimeoutExpired:
            _stop(proc)
            return proc.returncode, True
        except BaseException:
            _stop(proc)
            raise


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to ``proc``'s session, SIGKILL to whatever is left of it 5 s later."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def last_line(path: Path) -> str:
    """The last non-empty line of a log (a part's error)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


class Result:
    """A part's result file: ``env``, ``rows`` and ``summary``, rewritten (atomically) after every row, so
    a part stopped at its limit still reports what it measured."""

    def __init__(self, path: Path, limit: float) -> None:
        self.path, self.limit, self.start = path, limit, time.perf_counter()
        self.data: dict = {"env": {}, "rows": [], "summary": {}}

    def left(self) -> float:
        return self.limit - (time.perf_counter() - self.start)

    def row(self, case: str, status: str = "ok", **values) -> dict:
        row = {"case": case, "status": status, **values}
        self.data["rows"].append(row)
        self.flush()
        return row

    def flush(self) -> None:
        from endofm.io import write_json

        write_json(self.path, self.data)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# ----------------------------------------------------------------------------------------------------
# Shared helpers of the parts (torch imported by the caller)


def pick_device():
    import torch

    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def device_env(device) -> dict:
    """What the part ran on."""
    import platform

    import torch

    env = {"torch": str(torch.__version__), "device": str(device), "cpus": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "bf16": torch.cuda.is_bf16_supported(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "peak_bf16_tflops": peak_tflops(props.name),
        }
    else:
        env |= {
            "name": f"CPU ({platform.machine()}, torch threads: {torch.get_num_threads()})",
            "peak_bf16_tflops": None,
        }
    return env


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device) -> float:
    """CUDA: ``max_memory_allocated`` since :func:`reset_peak` (weights included); CPU: the process's peak RSS."""
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def free(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def rates(flops: float | None, seconds: float, env: dict) -> dict:
    """TFLOP/s and MFU (against the dense bf16 peak) of ``flops`` per ``seconds``."""
    if not flops:
        return {"tflops": None, "mfu": None}
    tflops = flops / seconds / 1e12
    peak = env.get("peak_bf16_tflops")
    return {"tflops": tflops, "mfu": tflops / peak if peak else None}


# ----------------------------------------------------------------------------------------------------
# Part 1: backbone


def part_backbone(res: Result, dry: bool, scratch: Path) -> None:
    import torch

    from endofm.models.vit import build_backbone

    device = pick_device()
    env = res.data["env"] = device_env(device)
    model_name, batch, frames, size = ("vit_micro_patch8", 2, 2, 16) if dry else ("vit_base_patch16", 8, 8, 224)
    warmup, iters = (1, 2) if dry else (2, 5)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    torch.manual_seed(0)
    clip = torch.randn(batch, 3, frames, size, size, device=device)
    res.data["summary"] = {"model": model_name, "batch": batch, "clip": f"{frames}x{size}", "iters": iters}
    for attention in ("sdpa", "explicit"):
        torch.manual_seed(0)  # the same weights for both attention kernels
        model = build_backbone(model_name, drop_path_rate=0.0, attention=attention).to(device)
        model.eval()
        with torch.no_grad():
            reference = model(clip).float()
        for name, dtype in dtypes.items():
            case = f"{model_name} {frames}x{size} b{batch} fwd+bwd {attention} {name}"
            try:
                res.row(case, **_backbone_case(model, clip, device, dtype, reference, warmup, iters, env))
            except Exception as exc:  # one configuration failing leaves the others to run
                res.row(case, "error", note=one_line(exc))
            free(device)
        del model
        free(device)


def _backbone_case(model, clip, device, dtype, reference, warmup: int, iters: int, env: dict) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    model.eval()
    with torch.no_grad(), autocast:
        out = model(clip).float()
    rel_err = float((out - reference).norm() / reference.norm())
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            y = model(clip)
        y.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    reset_peak(device)
    with FlopCounterMode(display=False) as counter:  # the first warm-up step counts the FLOPs
        step()
    for _ in range(warmup - 1):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / iters
    flops = counter.get_total_flops()
    return {
        "s_per_step": seconds,
        "items_per_s": len(clip) / seconds,
        **rates(flops, seconds, env),
        "peak_mib": peak_mib(device),
        "gflop_per_clip": flops / len(clip) / 1e9,
        "rel_err_vs_fp32": rel_err,
        "note": f"rel. err vs fp32 {rel_err:.1e}",
    }


# ----------------------------------------------------------------------------------------------------
# Parts 2 and 3: pretraining step, single process and under torchrun


def pretrain_settings(dry: bool, device):
    """The pretraining recipe of the paper config (tiny config with --dry), random init, no workers."""
    from endofm.settings import load_workflow_config

    wf = load_workflow_config(TINY if dry else PAPER)
    cfg = wf.pretrain.variant("default")
    return dataclasses.replace(cfg, init="random", num_workers=0, device=str(device), checkpoint_every=0, snapshots=[])


def make_clips(folder: Path, dry: bool) -> Path:
    """A few textured moving clips and their ``clips.csv`` (two batches' worth)."""
    from benchmarks.common import make_corpus

    return make_corpus(folder, 8 if dry else 6, 16 if dry else 32, 32 if dry else 64, 40 if dry else 80)


def build_pretraining(cfg, info, manifest: Path, out_dir: Path):
    """The training loop's own run object (``endofm.pretraining.train``) and one batch of its loader."""
    from endofm.engine import set_loader_epoch
    from endofm.pretraining.endofm import EndoFMObjective
    from endofm.pretraining.train import _Pretraining

    run = _Pretraining(EndoFMObjective(cfg, info), [manifest], out_dir, 0, "error", "endofm")
    set_loader_epoch(run.loader, 0)
    views = [v.to(info.device) for v in next(iter(run.loader))]
    return run, views


def timed_steps(run, views, device, steps: int) -> float:
    """Seconds per training step, every step at schedule position 0 (the run's schedules may be short)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        run.step = 0
        run._train_step(views, 0)
    sync(device)
    return (time.perf_counter() - start) / steps


def hours(epochs: int, batch_per_gpu: int, s_per_step: float) -> float:
    """Wall hours of ``epochs`` over the paper's corpus on the original's 4 GPUs at ``batch_per_gpu``
    (data-parallel steps as fast as one GPU's, loading not counted)."""
    return epochs * (CORPUS_CLIPS // (batch_per_gpu * ORIGINAL_GPUS)) * s_per_step / 3600


def part_pretrain(res: Result, dry: bool, scratch: Path) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from endofm.engine import DistInfo

    device = pick_device()
    env = res.data["env"] = device_env(device)
    cfg = pretrain_settings(dry, device)
    run, views = build_pretraining(cfg, DistInfo(device=device), make_clips(scratch / "clips", dry), scratch / "run")
    base = cfg.batch_size_per_gpu
    res.data["summary"] = {
        "backbone": cfg.backbone.name,
        "views": f"{cfg.views.global_frames}x{cfg.views.global_size} + {cfg.views.local_frames}x{cfg.views.local_size}",
        "out_dim": cfg.out_dim,
        "precision": run.precision,
        "batch_per_gpu": base,
        "epochs": cfg.epochs,
        "corpus_clips": CORPUS_CLIPS,
        "gpus": ORIGINAL_GPUS,
    }
    reset_peak(device)
    with FlopCounterMode(display=False) as counter:
        run.step = 0
        run._train_step(views, 0)
    flops = counter.get_total_flops()
    timed_steps(run, views, device, 1)
    seconds = timed_steps(run, views, device, 2 if dry else 5)
    h = hours(cfg.epochs, base, seconds)
    res.data["summary"] |= {"s_per_step": seconds, "steps_per_s": 1 / seconds, "hours_paper_batch": h}
    step_row(
        res,
        f"endofm step, batch {base}/GPU ({run.precision})",
        base,
        flops,
        seconds,
        env,
        device,
        implied_hours=h,
        note=f"{cfg.epochs} ep x {CORPUS_CLIPS:,} clips, {ORIGINAL_GPUS} GPUs x {base}: {h:.3g} h",
    )

    # The original's precision, fp16 with the GradScaler: the loop's scale / unscale-then-clip path. A CPU has
    # no fp16 loop, so --dry runs bf16 with a live scaler instead.
    scaled, kept = ("fp16" if device.type == "cuda" else "bf16"), (run.precision, run.scaler)
    run.precision, run.scaler = scaled, torch.amp.GradScaler(device.type)
    case = f"endofm step, batch {base}/GPU ({scaled} + GradScaler{'' if device.type == 'cuda' else ', CPU stand-in'})"
    try:
        reset_peak(device)
        timed_steps(run, views, device, 1)
        seconds = timed_steps(run, views, device, 2 if dry else 3)
        step_row(
            res,
            case,
            base,
            flops,
            seconds,
            env,
            device,
            note=f"loss scale {run.scaler.get_scale():g} after {3 if dry else 4} steps",
        )
    except Exception as exc:
        res.row(case, "error", note=one_line(exc))
    finally:
        run.precision, run.scaler = kept
        free(device)

    def batch_of(b: int) -> list:
        return [v.repeat(math.ceil(b / base), 1, 1, 1, 1)[:b] for v in views]

    failures = []  # errors other than running out of memory: they end the search

    def fits(b: int) -> bool:
        if dry and b > DRY_BATCH_CAP:
            return False
        try:
            timed_steps(run, batch_of(b), device, 1)
            return True
        except torch.OutOfMemoryError:
            return False
        except RuntimeError as exc:  # cuBLAS / cuDNN report a failed allocation as their own error
            if not re.search(r"out of memory|ALLOC_FAILED", str(exc)):
                failures.append(f"batch {b}: {one_line(exc)}")
            return False
        finally:
            free(device)

    reserve = 5 if dry else 25  # seconds kept for timing the batch found
    cap = 4 * DRY_BATCH_CAP if dry else 96
    largest, probes = largest_batch(fits, base, cap, lambda: not failures and res.left() > reserve)
    res.data["summary"] |= {"largest_batch": largest, "batch_probes": probes, "search_errors": failures}
    case = f"endofm step, largest batch {largest}/GPU" + (" (pretend memory)" if dry else "")
    if failures:
        res.row("endofm step, largest-batch search", "error", note=failures[0])
    if largest == base:
        res.row(case, "skipped", note=f"no larger batch fit (probes {probes})")
        return
    try:
        big = batch_of(largest)
        reset_peak(device)
        timed_steps(run, big, device, 1)
        seconds = timed_steps(run, big, device, 2)
    except Exception as exc:
        res.row(case, "error", note=one_line(exc))
        return
    h = hours(cfg.epochs, largest, seconds)
    res.data["summary"] |= {"hours_largest_batch": h}
    step_row(
        res,
        case,
        largest,
        flops * largest / base,  # FLOPs grow with the batch
        seconds,
        env,
        device,
        implied_hours=h,
        note=f"{ORIGINAL_GPUS} GPUs x {largest} (global {ORIGINAL_GPUS * largest}): {h:.3g} h",
    )


def step_row(res, case: str, items: int, flops: float, seconds: float, env, device, **extra) -> None:
    """One timed training-step row: s/step, items/s, TFLOP/s and MFU, peak memory, steps/s, and ``extra``."""
    res.row(
        case,
        s_per_step=seconds,
        items_per_s=items / seconds,
        **rates(flops, seconds, env),
        peak_mib=peak_mib(device),
        steps_per_s=1 / seconds,
        **extra,
    )


def largest_batch(fits, base: int, cap: int, time_left) -> tuple[int, list[list]]:
    """The largest batch ``fits`` accepts: doubling from ``base`` up to ``cap``, then bisection until the
    gap is at most an eighth; stops early when ``time_left()`` is false. Returns it and the probes."""
    ok, bad, probes = base, None, []
    while bad is None and 2 * ok <= cap and time_left():
        b = 2 * ok
        probes.append([b, fits(b)])
        ok, bad = (b, None) if probes[-1][1] else (ok, b)
    while bad is not None and bad - ok > max(1, ok // 8) and time_left():
        b = (ok + bad) // 2
        probes.append([b, fits(b)])
        ok, bad = (b, bad) if probes[-1][1] else (ok, b)
    return ok, probes


def part_torchrun(res: Result, dry: bool, scratch: Path) -> None:
    import torch

    from endofm.engine import DistInfo, seed_everything

    device = pick_device()
    res.data["env"] = device_env(device)
    cfg = pretrain_settings(dry, device)
    manifest = make_clips(scratch / "clips", dry)
    run, views = build_pretraining(cfg, DistInfo(device=device), manifest, scratch / "run_single")
    torch.save([v.cpu() for v in views], scratch / "views.pt")
    seed_everything(cfg.seed)
    single = [run._train_step(views, 0)["loss"] for _ in range(DDP_STEPS)]
    del run, views
    free(device)

    spec = {"dry": dry, "manifest": str(manifest), "views": str(scratch / "views.pt")}
    spec |= {"run_dir": str(scratch / "run_ddp"), "out": str(scratch / "worker.json")}
    (scratch / "worker_spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", __file__]
    log = scratch / "torchrun.log"
    # Stopped before the part's own limit, so that its whole session goes down with it.
    rc, timed_out = run_group([*cmd, "--worker", str(scratch / "worker_spec.json")], res.left() - 12, log)
    if rc != 0 or timed_out:
        raise RuntimeError(f"torchrun {'timed out' if timed_out else f'exited {rc}'}: {last_line(log)}")
    worker = json.loads(Path(spec["out"]).read_text())
    diffs = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(single, worker["losses"], strict=True)]
    equal = all(math.isfinite(x) for x in single + worker["losses"]) and max(diffs) <= DDP_RTOL
    res.data["summary"] = {
        "backend": worker["backend"],
        "world_size": worker["world_size"],
        "wrapper": worker["wrapper"],
        "losses_single": single,
        "losses_torchrun": worker["losses"],
        "max_rel_diff": max(diffs),
        "rtol": DDP_RTOL,
        "equal": equal,
    }
    res.row(
        f"torchrun 1 proc, {worker['backend']}, {worker['wrapper']}, batch {cfg.batch_size_per_gpu}",
        "ok" if equal else "error",
        s_per_step=worker["s_per_step"],
        items_per_s=cfg.batch_size_per_gpu / worker["s_per_step"],
        peak_mib=worker["peak_mib"],
        note=f"{DDP_STEPS} losses {'=' if equal else '!='} single process (max rel. diff {max(diffs):.1e})",
    )


def ddp_worker(spec_path: Path) -> None:
    """One torchrun worker: join an NCCL (gloo on CPU) group, train the single-process run's steps on its
    batch with the student in DDP, write the losses."""
    import torch
    import torch.distributed as dist

    from endofm.engine import DistInfo, seed_everything
    from endofm.io import write_json

    class EveryRankDistInfo(DistInfo):
        # With one process the package runs as a plain process (WORLD_SIZE=1); marking it distributed
        # runs DDP, the all-reduces and the barriers as on the original's 4 GPUs.
        distributed = property(lambda self: True)

    spec = json.loads(Path(spec_path).read_text())
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
    )
    try:
        info = EveryRankDistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)
        cfg = pretrain_settings(spec["dry"], device)
        run, _ = build_pretraining(cfg, info, Path(spec["manifest"]), Path(spec["run_dir"]))
        views = [v.to(device) for v in torch.load(spec["views"])]
        reset_peak(device)
        seed_everything(cfg.seed, info.rank)
        losses, times = [], []
        for _ in range(DDP_STEPS):
            start = time.perf_counter()
            losses.append(run._train_step(views, 0)["loss"])
            times.append(time.perf_counter() - start)
        out = {
            "losses": losses,
            "s_per_step": sum(times[1:]) / max(len(times) - 1, 1),
            "peak_mib": peak_mib(device),
            "backend": str(dist.get_backend()),
            "world_size": dist.get_world_size(),
            "wrapper": type(run.student).__name__,
        }
        if info.is_main:
            write_json(spec["out"], out)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------
# Part 4: fine-tuning runs


def part_finetune(res: Result, dry: bool, scratch: Path) -> None:
    import copy
    import shutil

    import pandas as pd

    from endofm.engine import resolve_precision
    from endofm.settings import load_workflow_config, run_backbone
    from endofm.tasks.benchmarks import get_benchmark, synthesize_raw
    from endofm.tasks.finetune import RunSpec
    from endofm.tasks.runs import finetune_benchmark

    device = pick_device()
    res.data["env"] = device_env(device)
    wf = load_workflow_config(TINY if dry else PAPER)
    # The benchmark is small and its frames tiny; the task's transforms bring them to the paper's sizes.
    synth = load_workflow_config(TINY).synthetic
    if not dry:  # PolypDiag: two batches of 4 training videos; CVC-12k: the longest official sequence
        synth = dataclasses.replace(synth, polypdiag_videos={"train": 8, "val": 4}, cvc_sequence_frames=(25, 25))
    backbone, checkpoint = run_backbone(wf, "scratch", "none")
    precisions = ["auto"] + (["fp16"] if device.type == "cuda" and resolve_precision("auto", device) != "fp16" else [])
    res.data["summary"] = {"backbone": backbone.name, "precisions": precisions, "epochs": 2, "steps_per_epoch": 2}
    for name in ("polypdiag", "cvc12k", "kumc"):
        raw, index = scratch / "raw" / name, scratch / "index" / name
        try:
            synthesize_raw(name, raw, synth)
            get_benchmark(name).index(raw, index)
        except Exception as exc:
            res.row(f"{name} (data)", "error", note=one_line(exc))
            continue
        for precision in precisions:
            task = copy.deepcopy(wf.finetune.task(name))
            if dry and name == "cvc12k":  # TransUNet, shrunk, so --dry runs the paper's decoder too
                task = dataclasses.replace(task, decoder="transunet", transunet=_tiny_transunet(task))
            task.train = dataclasses.replace(
                task.train, epochs=2, max_steps_per_epoch=2, num_workers=0, device=str(device), precision=precision
            )
            resolved = resolve_precision(precision, device)
            case = f"{name} {_task_size(name, task)} {resolved}" + (" + GradScaler" if resolved == "fp16" else "")
            out = scratch / "runs" / f"{name}_{precision}"
            try:
                reset_peak(device)
                start = time.perf_counter()
                spec = RunSpec(name, "scratch", "none", "paper", "full", 0)
                record = finetune_benchmark(spec, task, index / "manifest.csv", raw, out, backbone, checkpoint)
                wall = time.perf_counter() - start
                history = pd.read_csv(out / "history.csv")
                # The second epoch's steps: warm, data loading included.
                warm = float(history["seconds"].iloc[-1]) / (record["steps"] / record["epochs"])
                losses = history["loss"].tolist()
                if not all(math.isfinite(x) for x in losses):
                    raise RuntimeError(f"non-finite training loss {losses}")
                res.row(
                    case,
                    s_per_step=warm,
                    items_per_s=task.train.batch_size / warm,
                    peak_mib=peak_mib(device),
                    run_s=wall,
                    losses=losses,
                    note=f"run {wall:.1f} s (2 epochs x 2 steps + eval), loss {losses[-1]:.3g}",
                )
            except Exception as exc:
                res.row(case, "error", note=one_line(exc))
            finally:
                shutil.rmtree(out, ignore_errors=True)  # a ViT-B run writes ~2 GB of checkpoints
                free(device)


def _tiny_transunet(task):
    from endofm.models.segmentation import TransUNetConfig

    return TransUNetConfig(
        img_size=task.crop_size, stem_width=8, stem_units=(1, 1, 1), gn_groups=4, head_channels=16,
        decoder_channels=(16, 8, 8, 4),
    )  # fmt: skip


def _task_size(name: str, task) -> str:
    b = task.train.batch_size
    if name == "polypdiag":
        return f"{task.num_frames}x{task.crop_size} b{b}"
    if name == "cvc12k":
        return f"{task.decoder} {task.crop_size} b{b}"
    return f"{task.max_size}px T={1 if task.train_ref_range is None else 3} b{b}"


# ----------------------------------------------------------------------------------------------------
# Part 5: the tiny workflow


def part_workflow(res: Result, dry: bool, scratch: Path) -> None:
    import yaml

    res.data["env"] = {"cpus": os.cpu_count()}
    config = yaml.safe_load(TINY.read_text())
    config["pretrain"]["settings"]["device"] = "cuda"
    for bench in config["data"]["benchmarks"]:
        config["finetune"][bench]["train"]["device"] = "cuda"
    workdir = scratch / "workdir"
    (workdir / "config").mkdir(parents=True)
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "all", "--snakefile", str(ROOT / "Snakefile"), "--directory"]
    cmd += [str(workdir), "--cores", str(os.cpu_count() or 1), *(["-n"] if dry else [])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = scratch / "snakemake.log"
    start = time.perf_counter()
    rc, timed_out = run_group(cmd, res.left() - 12, log, env=env)  # before the part's limit, see part_torchrun
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    if rc != 0 or timed_out:
        raise RuntimeError(
            f"snakemake {'timed out' if timed_out else f'exited {rc}'} after {wall:.0f} s: {last_line(log)}"
        )
    if dry:
        jobs = re.findall(r"^total\s+(\d+)$", text, re.M)
        cuda_runs = total_runs = None
        note = f"dry run (-n): {jobs[-1] if jobs else '?'} jobs planned with device cuda"
    else:
        jobs = re.findall(r"(\d+) of \d+ steps \(100%\) done", text)
        devices = [json.loads(p.read_text()).get("device", "") for p in workdir.glob("results/*/**/run.json")]
        total_runs, cuda_runs = len(devices), sum(d.startswith("cuda") for d in devices)
        if total_runs == 0 or cuda_runs < total_runs:
            raise RuntimeError(f"only {cuda_runs} of {total_runs} runs recorded a CUDA device")
        note = f"{jobs[-1] if jobs else '?'} jobs in {wall:.0f} s; {cuda_runs}/{total_runs} runs on cuda"
    jobs_done = int(jobs[-1]) if jobs else 0
    res.data["summary"] = {
        "wall_s": wall,
        "jobs": jobs_done,
        "cuda_runs": cuda_runs,
        "runs": total_runs,
        "dry_run": dry,
    }
    res.row(
        "snakemake all, tests/configs/tiny.yaml, device cuda" + (" (-n)" if dry else ""),
        wall_s=wall,
        jobs=jobs_done,
        note=note,
    )


PART_FUNCTIONS = {
    "backbone": part_backbone,
    "pretrain": part_pretrain,
    "torchrun": part_torchrun,
    "finetune": part_finetune,
    "workflow": part_workflow,
}


def run_part(name: str, result: Path, scratch: Path, limit: float, dry: bool) -> int:
    """In a part's own process: run it and write its result file; 1 on failure (the error in the file)."""
    res = Result(result, limit)
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        PART_FUNCTIONS[name](res, dry, scratch)
        return 0
    except BaseException as exc:
        res.data["error"] = one_line(exc)
        res.flush()
        raise
    finally:
        res.data["seconds"] = time.perf_counter() - res.start
        res.flush()


# ----------------------------------------------------------------------------------------------------
# The driver


def fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def print_table(report: dict) -> None:
    rows = []
    for part, result in report["parts"].items():
        for row in result["rows"]:
            rows.append(
                (part, row["case"], row["status"], fmt(row.get("s_per_step"), ".3g"), fmt(row.get("items_per_s"), ".4g"),
                 fmt(row.get("tflops"), ".4g"), fmt(row.get("mfu"), ".1%"), fmt(row.get("peak_mib"), ".0f"),
                 row.get("note", ""))
            )  # fmt: skip
        if result["status"] != "ok" or not result["rows"]:
            rows.append((part, "(part)", result["status"], "-", "-", "-", "-", "-", result.get("error") or ""))
    widths = [max(len(str(r[i])) for r in [TABLE, *rows]) for i in range(len(TABLE) - 1)]
    line = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    env = report.get("device") or {}
    print(
        f"\nDevice check on {env.get('name', '?')} (torch {env.get('torch', '?')}){' --dry' if report['dry'] else ''}"
    )
    print(line.format(*TABLE))
    print(line.format(*("-" * w for w in widths), "-" * 4))
    for r in rows:
        print(line.format(*r))
    times = ", ".join(f"{p} {r['status']} {r['seconds']:.0f}/{r['limit_s']} s" for p, r in report["parts"].items())
    print(f"parts (time/limit): {times}; total {report['total_s']:.0f} s")


def run_check(parts: list[str], json_path: Path, dry: bool) -> int:
    from endofm.io import write_json

    limits = DRY_LIMITS if dry else LIMITS
    logs = json_path.with_name(json_path.stem + ".logs")
    logs.mkdir(parents=True, exist_ok=True)
    report = {"dry": dry, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": None, "parts": {}}
    report["limits_s"] = {p: limits[p] for p in parts}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if dry:  # tiny sizes on the CPU whatever the machine has, one thread: tiny ops crawl on a busy core
        env |= {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        for part in parts:
            result, log = Path(tmp) / f"{part}.json", logs / f"{part}.log"
            log.unlink(missing_ok=True)
            cmd = [sys.executable, __file__, "--part", part, "--result", str(result), "--limit", str(limits[part])]
            cmd += ["--scratch", str(Path(tmp) / part), *(["--dry"] if dry else [])]
            t0 = time.perf_counter()
            rc, timed_out = run_group(cmd, limits[part], log, env=env, cwd=ROOT)
            data = json.loads(result.read_text()) if result.is_file() else {"rows": []}
            failed = [r for r in data["rows"] if r["status"] == "error"]
            if timed_out:
                status, error = "timeout", f"stopped at its {limits[part]} s limit"
            elif rc != 0:
                status, error = "error", data.get("error") or last_line(log) or f"exit status {rc}"
            else:
                status, error = ("error", f"{len(failed)} case(s) failed") if failed else ("ok", None)
            report["parts"][part] = {
                "status": status,
                "error": error,
                "seconds": time.perf_counter() - t0,
                "limit_s": limits[part],
                "log": str(log),
                "rows": data["rows"],
                "summary": data.get("summary", {}),
                "env": data.get("env", {}),
            }
            if report["device"] is None and data.get("env", {}).get("device"):
                report["device"] = data["env"]
            report["total_s"] = time.perf_counter() - start
            write_json(json_path, report)
            print(
                f"[{part}] {status} in {report['parts'][part]['seconds']:.1f} s" + (f": {error}" if error else ""),
                flush=True,
            )
    print_table(report)
    print(f"JSON: {json_path}; logs: {logs}/")
    return 0 if all(r["status"] == "ok" for r in report["parts"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help=f"result file (default: {DEFAULT_JSON.relative_to(ROOT)})")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run, in order")
    parser.add_argument("--dry", action="store_true", help="every part at tiny sizes on the CPU (under a minute)")
    # Internal: one part in its own process, or one torchrun worker.
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    try:
        args = parser.parse_args(argv)
        if args.worker:
            ddp_worker(args.worker)
            return 0
        if args.part:
            return run_part(args.part, args.result, args.scratch, args.limit, args.dry)
        json_path = (args.json or DEFAULT_JSON).resolve()
        if json_path.is_dir() or json_path.suffix != ".json":
            raise UserError(f"--json {args.json}: expected a .json file path")
        if len(set(args.parts)) < len(args.parts):
            raise UserError(f"--parts {' '.join(args.parts)}: a part is named twice")
        return run_check(args.parts, json_path, args.dry)
    except UserError as exc:
        print(f"bench_gpu.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
