"""The one training-loop skeleton: small pieces that pretraining and every fine-tuning loop compose.

- **Processes**: :func:`init_distributed`/:func:`distributed_session` read torchrun's ``RANK``,
  ``WORLD_SIZE`` and ``LOCAL_RANK`` (gloo on CPU, NCCL on CUDA); without them the run is one plain
  process. :func:`wrap_ddp`/:func:`unwrap`, :func:`barrier`, :func:`reduce_mean`, :func:`any_rank`,
  :func:`all_gather_cat`.
- **Numerics**: :func:`resolve_precision`, :func:`autocast`, :func:`grad_scaler` (bf16 autocast on
  CUDA by default, fp16 + GradScaler on request, fp32 on CPU); :func:`seed_everything`;
  :func:`cosine_schedule` (DINO's per-iteration schedule) and :func:`lr_schedule` (fine-tuning's).
- **Data**: :func:`build_loader` over a :class:`ResumableSampler`; :func:`set_loader_epoch` makes an
  epoch's order and worker seeds a function of (seed, epoch, rank) only, and can skip the batches a
  pre-empted run already consumed, so a resumed run sees exactly the batches the uninterrupted one would.
- **Runs**: :func:`save_training_checkpoint`/:func:`load_training_checkpoint` (``checkpoint.pt``
  every epoch, ``checkpoint_{epoch:04d}.pt`` every N, atomic, rank 0 writes);
  :class:`PreemptionHandler` (SIGTERM/SIGUSR1 -> checkpoint at the next step boundary -> exit
  :data:`PREEMPTED_EXIT_CODE`); :func:`check_finite`; :func:`progress`; :class:`EpochMeter` and
  :class:`MetricsLog` (one CSV row per epoch, continued on resume).

Layer: engine and metrics (docs/architecture.md). May import: foundation, data, models.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from endofm.io import atomic_path, write_csv
from endofm.logs import progress as log_progress
from endofm.models.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]

#: Exit status of a run stopped by SIGTERM/SIGUSR1 after writing its checkpoint: ``EX_TEMPFAIL`` of
#: sysexits.h ("temporary failure, retry"). A SLURM script requeues the job on it; the rerun resumes.
PREEMPTED_EXIT_CODE = 75
CHECKPOINT_NAME = "checkpoint.pt"
NUMBERED_CHECKPOINT = "checkpoint_{epoch:04d}.pt"


# ----------------------------------------------------------------------------------------------------
# Processes and devices


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: ``cuda:<local_rank>`` when CUDA is available, else CPU; ``cuda`` gets the local rank's index."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {dev} requested but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return dev


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``); a plain single process when ``WORLD_SIZE`` is unset or 1.

    The backend is NCCL on CUDA and gloo otherwise. An already initialised group is reused.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise RuntimeError(
            f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local_rank}"
        )
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world} but {name} is not set; launch with torchrun")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
        log.info("rank %d/%d joined the %s process group on %s", rank, world, backend, dev)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


@contextlib.contextmanager
def distributed_session(device: str = "auto") -> Iterator[DistInfo]:
    """:func:`init_distributed`, and on exit destroy the process group if this call created it."""
    created = not in_process_group()
    info = init_distributed(device)
    try:
        yield info
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def wrap_ddp(model: nn.Module, info: DistInfo, **kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` itself."""
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel wrappers, however deep (or ``model`` itself)."""
    while isinstance(model, DistributedDataParallel | DataParallel):
        model = model.module
    return model


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if not info.distributed:
        return
    if info.device.type == "cuda":
        dist.barrier(device_ids=[info.device.index])
    else:
        dist.barrier()


def reduce_mean(values: Mapping[str, torch.Tensor | float], info: DistInfo) -> dict[str, float]:
    """Mean of each scalar over all ranks, with one collective (and one device sync) for all of them."""
    names = list(values)
    stacked = torch.stack(
        [torch.as_tensor(values[n], dtype=torch.float32, device=info.device).detach().reshape(()) for n in names]
    )
    if info.distributed:
        dist.all_reduce(stacked)
        stacked /= info.world_size
    return dict(zip(names, stacked.tolist(), strict=True))


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if not info.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@torch.no_grad()
def in_process_group() -> bool:
    """Whether this process is in an initialised ``torch.distributed`` process group (the collectives apply)."""
    return dist.is_available() and dist.is_initialized()


def all_gather_cat(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``x`` (same shape on every rank) concatenated along ``dim`` in rank order, without
    gradient; ``x`` itself (detached) outside a process group."""
    if not in_process_group() or dist.get_world_size() == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=dim)


# ----------------------------------------------------------------------------------------------------
# Numerics


def resolve_precision(precision: Precision, device: torch.device) -> Literal["fp32", "bf16", "fp16"]:
    """``auto``: bf16 on CUDA (fp16 on GPUs without bf16), fp32 elsewhere. fp16 needs CUDA."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be one of auto, fp32, bf16, fp16; got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 (with a GradScaler) needs a CUDA device, got {device}")
    return precision


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward-pass context: ``torch.autocast`` in bf16/fp16, nothing in fp32."""
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if resolved == "bf16" else torch.float16)


def grad_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is active only in fp16 (a disabled one passes ``scale``/``step`` through)."""
    return torch.amp.GradScaler(device.type, enabled=resolve_precision(precision, device) == "fp16")


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed Python, NumPy and torch (all devices) with ``seed + rank``; returns that seed."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


def cosine_schedule(
    base: float,
    final: float,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0,
    start_warmup: float = 0.0,
) -> np.ndarray:
    """DINO's per-iteration schedule, ``epochs · steps_per_epoch`` values.

    A linear warm-up from ``start_warmup`` to ``base`` (both included) over ``round(warmup_epochs ·
    steps_per_epoch)`` iterations, then ``final + (base - final)/2 · (1 + cos(π i / n))`` for
    i = 0..n-1 over the n remaining iterations: it starts at ``base`` again and its last value is
    one cosine step short of ``final``, exactly as the original.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"cosine_schedule: epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}"
        )
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"cosine_schedule: warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
    total = epochs * steps_per_epoch
    warmup = round(warmup_epochs * steps_per_epoch)
    ramp = np.linspace(start_warmup, base, warmup)
    i = np.arange(total - warmup)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(len(i), 1)))
    return np.concatenate([ramp, cosine])


def lr_schedule(
    kind: Literal["cosine", "poly", "step", "constant"],
    base: float,
    epochs: int,
    steps_per_epoch: int,
    *,
    warmup_epochs: float = 0,
    final: float = 0.0,
    power: float = 0.9,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
) -> np.ndarray:
    """A per-iteration learning rate for fine-tuning, ``epochs · steps_per_epoch`` values.

    After a linear warm-up from 0 over ``round(warmup_epochs · steps_per_epoch)`` iterations:
    ``cosine`` is :func:`cosine_schedule` to ``final``; ``poly`` is ``base · (1 - i/n)^power``
    (TransUNet's); ``step`` multiplies by ``gamma`` at each milestone, given as fractions of the run
    (STFT's 64k/80k/88k of 96k are 2/3, 5/6, 11/12); ``constant`` keeps ``base``.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"lr_schedule: epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}")
    if kind == "cosine":
        return cosine_schedule(base, final, epochs, steps_per_epoch, warmup_epochs)
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"lr_schedule: warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
    total = epochs * steps_per_epoch
    i = np.arange(total, dtype=np.float64)
    if kind == "poly":
        lr = base * (1.0 - i / total) ** power
    elif kind == "step":
        if any(not 0 < m < 1 for m in milestones):
            raise ValueError(f"lr_schedule: step milestones are fractions in (0, 1), got {list(milestones)}")
        lr = base * gamma ** np.searchsorted(np.sort(np.asarray(milestones, dtype=np.float64)) * total, i, "right")
    elif kind == "constant":
        lr = np.full(total, float(base))
    else:
        raise ValueError(f"lr_schedule: kind must be cosine, poly, step or constant, got {kind!r}")
    warmup = round(warmup_epochs * steps_per_epoch)
    lr[:warmup] *= np.linspace(0.0, 1.0, warmup + 1)[1:] if warmup else 1.0
    return lr


# ----------------------------------------------------------------------------------------------------
# Data


class ResumableSampler(DistributedSampler):
    """A DistributedSampler whose epoch may start part-way: ``set_epoch(epoch, skip=n)`` drops this
    rank's first ``n`` samples of that epoch. The order itself depends only on ``seed`` and the epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"cannot skip {skip} samples of an epoch of {self.num_samples} on this rank")
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def build_loader(
    dataset: Dataset,
    batch_size: int,
    info: DistInfo,
    *,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    collate_fn: Any = None,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader over this rank's share of ``dataset`` (a :class:`ResumableSampler`) with its own
    seeded generator, so it never draws from the global RNG. Call :func:`set_loader_epoch` before
    each epoch.

    ``persistent_workers=None`` keeps workers alive across epochs unless the dataset has
    ``set_epoch`` (per-epoch state set in the main process would not reach persistent workers);
    asking for persistent workers with such a dataset is an error. ``pin_memory`` defaults to CUDA.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    per_epoch = callable(getattr(dataset, "set_epoch", None))
    if persistent_workers is None:
        persistent_workers = not per_epoch
    elif persistent_workers and per_epoch:
        raise ValueError(
            f"{type(dataset).__name__} takes its per-epoch randomness from set_epoch(), which persistent "
            "workers would not see; use persistent_workers=False"
        )
    sampler = ResumableSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=info.device.type == "cuda" if pin_memory is None else pin_memory,
        drop_last=drop_last,
        persistent_workers=persistent_workers and num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_ignore_preemption_signals,
    )
    if len(loader) == 0:
        raise ValueError(
            f"{len(dataset)} items do not fill one batch of {batch_size} per process on {info.world_size} "
            "process(es) (last partial batch dropped); use more data or a smaller batch"
        )
    return loader


def set_cpu_threads(threads: int, num_workers: int) -> int:
    """Share ``threads`` CPU threads between ``num_workers`` DataLoader workers (one each, as
    PyTorch runs them single-threaded) and this process's torch intra-op threads (the rest, at least
    one); returns the intra-op count it set. Small models slow down badly when the two together
    oversubscribe the cores."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    intra = max(1, threads - num_workers)
    torch.set_num_threads(intra)
    return intra


def _ignore_preemption_signals(worker_id: int) -> None:
    # SLURM signals every process of a job step: workers must outlive the main process's
    # pre-emption checkpoint (they exit by themselves once it is gone).
    for sig in PreemptionHandler.default_signals():
        signal.signal(sig, signal.SIG_IGN)


def set_loader_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Prepare ``loader`` for ``epoch``: sampler order, the dataset's ``set_epoch`` (if any) and the
    workers' base seed all become functions of (seed, epoch, rank); the first ``skip_batches``
    batches of this rank are skipped without being loaded (resuming a pre-empted epoch)."""
    sampler = loader.sampler
    if not isinstance(sampler, ResumableSampler):
        raise TypeError(f"set_loader_epoch needs a loader from build_loader, got a {type(sampler).__name__} sampler")
    if loader.batch_size is None:
        raise TypeError("set_loader_epoch needs a loader with a batch_size")
    sampler.set_epoch(epoch, skip=skip_batches * loader.batch_size)
    set_epoch = getattr(loader.dataset, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(
            int(np.random.SeedSequence([sampler.seed, epoch, sampler.rank]).generate_state(1)[0])
        )


# ----------------------------------------------------------------------------------------------------
# Checkpoints, RNG, pre-emption, failures


def checkpoint_path(out_dir: str | os.PathLike) -> Path:
    """The latest checkpoint of a run: ``out_dir/checkpoint.pt``."""
    return Path(out_dir) / CHECKPOINT_NAME


def save_training_checkpoint(
    out_dir: str | os.PathLike, info: DistInfo, *, epoch: int, keep_every: int = 0, epoch_end: bool = True, **state: Any
) -> Path:
    """Collective: rank 0 writes ``checkpoint.pt`` atomically (keys of
    :data:`~endofm.models.checkpoint.CHECKPOINT_KEYS`), plus a copy ``checkpoint_{epoch:04d}.pt`` at the
    end of every ``keep_every``-th epoch (``epoch`` = epochs completed); then every rank waits for it,
    so none can exit (or be killed by torchrun) while the file is being written."""
    path = checkpoint_path(out_dir)
    if info.is_main:
        save_checkpoint(path, epoch=epoch, **state)
        if epoch_end and keep_every > 0 and epoch % keep_every == 0:
            with atomic_path(Path(out_dir) / NUMBERED_CHECKPOINT.format(epoch=epoch)) as tmp:
                shutil.copyfile(path, tmp)
    barrier(info)
    return path


def load_training_checkpoint(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's latest checkpoint (on the CPU), or None when it has none yet."""
    path = checkpoint_path(out_dir)
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    log.info("resuming from %s (epoch %s, step %s)", path, ckpt.get("epoch"), ckpt.get("step"))
    return ckpt


def gather_rng_states(info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's :func:`~endofm.models.checkpoint.capture_rng_state`, in rank order (collective)."""
    state = capture_rng_state()
    if not info.distributed:
        return [state]
    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, state)
    return states


def restore_rng_states(states: Sequence[Mapping[str, Any]], info: DistInfo) -> bool:
    """Restore this rank's generators from :func:`gather_rng_states`' list. Returns False (restoring
    nothing) when the list was saved by a different number of processes."""
    if len(states) != info.world_size:
        return False
    restore_rng_state(states[info.rank])
    return True


class Preempted(SystemExit):
    """Raised once the pre-emption checkpoint is written; the process exits with :data:`PREEMPTED_EXIT_CODE`."""

    def __init__(self, message: str) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PreemptionHandler:
    """Context manager turning SIGTERM and SIGUSR1 into a flag the loop polls at step boundaries.

    SLURM sends SIGTERM before killing a job (and SIGUSR1 with ``--signal=USR1@<s>``); torchrun
    forwards SIGTERM to its workers. The previous handlers are restored on exit.
    """

    def __init__(self, signals: Sequence[int] | None = None) -> None:
        self.signals = tuple(self.default_signals() if signals is None else signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @staticmethod
    def default_signals() -> list[int]:
        return [signal.SIGTERM] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])

    def __enter__(self) -> PreemptionHandler:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum

    @property
    def requested(self) -> bool:
        return self.received is not None

    def should_stop(self, info: DistInfo) -> bool:
        """Collective: True on every rank once any rank has received a signal."""
        return any_rank(self.requested, info)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


def check_finite(value: float, *, epoch: int, step: int, checkpoint: str | os.PathLike | None = None) -> None:
    """Raise :class:`NonFiniteLossError` unless ``value`` is finite. Pass the rank-averaged loss
    (:func:`reduce_mean`) so that every rank stops at the same step; call it before the optimiser
    step so no weight (and no checkpoint) is touched by the bad step."""
    if math.isfinite(value):
        return
    if checkpoint is not None and Path(checkpoint).exists():
        kept = f"the last good checkpoint {checkpoint} is left untouched"
    else:
        kept = "no checkpoint had been written yet"
    raise NonFiniteLossError(
        f"loss is {value} at epoch {epoch}, step {step}; stopped before the optimiser step and {kept}. "
        "Lower the learning rate, lengthen the warm-up or use bf16/fp32 instead of fp16."
    )


# ----------------------------------------------------------------------------------------------------
# Progress and metrics


def progress(iterable: Iterable, info: DistInfo, *, total: int | None = None, desc: str | None = None):
    """A progress bar on rank 0 only (:func:`endofm.logs.progress`: a tqdm bar on a terminal, one log
    line at most every 30 s in a job log)."""
    return log_progress(iterable, total=total, desc=desc, unit="step", disable=not info.is_main)


class EpochMeter:
    """Running means of per-step scalars within an epoch, plus steps, items and seconds; its state
    travels in a mid-epoch checkpoint so a resumed epoch still reports whole-epoch means."""

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        state = state or {}
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.steps: int = int(state.get("steps", 0))
        self.items: int = int(state.get("items", 0))
        self._seconds_before = float(state.get("seconds", 0.0))
        self._start = time.perf_counter()

    def update(self, values: Mapping[str, float], items: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.steps += 1
        self.items += items

    @property
    def seconds(self) -> float:
        return self._seconds_before + time.perf_counter() - self._start

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}

    def summary(self) -> dict[str, float]:
        """Means, then ``steps``, ``seconds`` and ``items_per_s``."""
        seconds = self.seconds
        return {**self.means(), "steps": self.steps, "seconds": seconds, "items_per_s": self.items / max(seconds, 1e-9)}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "steps": self.steps, "items": self.items, "seconds": self.seconds}


class MetricsLog:
    """A CSV with one row per epoch (column ``epoch``, 0-based), rewritten atomically at each append.

    A resumed run passes ``start_epoch`` and the ``history`` of rows saved in its checkpoint
    (:attr:`rows`); the file is rebuilt from them, so it survives being deleted in between (Snakemake
    deletes the outputs of a job it reruns). Without a history the existing file's rows are used.
    Rows of epochs >= ``start_epoch``, written before an interruption, are dropped to be recomputed.
    With ``enabled=False`` (ranks > 0) rows are kept in memory only.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        start_epoch: int = 0,
        enabled: bool = True,
        history: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.enabled = enabled
        rows = [dict(r) for r in history] if history is not None else self._read()
        for i, row in enumerate(rows):
            if "epoch" not in row:
                raise ValueError(f"{self.path}: metrics row {i} has no 'epoch' (keys: {sorted(row)})")
        self.rows = [{k: v.item() if isinstance(v, np.generic) else v for k, v in r.items()} for r in rows]
        self.rows = [r for r in self.rows if r["epoch"] < start_epoch]
        if len(self.rows) < len(rows):
            log.info("%s: dropping %d row(s) of epochs >= %d", self.path, len(rows) - len(self.rows), start_epoch)
        if enabled and (history is not None or len(self.rows) < len(rows)):
            self._write()

    def _read(self) -> list[dict[str, Any]]:
        if not self.enabled or not self.path.exists():
            return []
        try:
            frame = pd.read_csv(self.path)
        except pd.errors.EmptyDataError:
            return []
        if len(frame) and "epoch" not in frame.columns:
            raise ValueError(f"{self.path}: metrics log has no 'epoch' column (columns: {list(frame.columns)})")
        return frame.to_dict("records")

    def _write(self) -> None:
        if self.rows:
            write_csv(self.path, pd.DataFrame(self.rows))
        else:
            self.path.unlink(missing_ok=True)

    def append(self, row: Mapping[str, Any]) -> None:
        if "epoch" not in row:
            raise ValueError(f"{self.path}: a metrics row needs an 'epoch' value, got {sorted(row)}")
        self.rows.append(dict(row))
        if self.enabled:
            self._write()
