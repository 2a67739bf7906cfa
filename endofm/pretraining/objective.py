"""Endo-FM's self-distillation objective and the optimisation helpers of its training loop (docs/original.md §3.5-3.6).

- :class:`MultiViewModel`: backbone + head over a list of views, one backbone pass per run of
  same-shaped consecutive views (the official ``MultiCropWrapper(vary_fr=True)`` grouping).
- :class:`EndoFMLoss`: cross-entropy between the centred, sharpened teacher distribution of each
  global view and the student distribution of every other view, split into the paper's L_dm
  (global->global) and L_cv (global->local) terms; owns the centre.
- :func:`ema_update`, :func:`param_groups`, :func:`clip_gradients`,
  :func:`cancel_last_layer_gradients`, :func:`teacher_temperature_schedule`: the official recipe's
  teacher EMA, weight-decay grouping, per-tensor gradient clipping and last-layer freezing.

Layer: pretraining (docs/architecture.md). May import: foundation, data, models, engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from endofm.engine import in_process_group, unwrap

_MAX_NAMED = 8


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMED])
    return shown + (f", ... and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else "")


def group_views(views: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of consecutive views with equal per-sample shape (C, T, H, W).

    For the paper's 10 views (g1 8×224², g2 16×224², locals 2, 2, 4, 4, 8, 8, 16, 16 frames at 96²)
    this is [0:1], [1:2], [2:4], [4:6], [6:8], [8:10]. Equal shapes that are not adjacent stay apart.
    """
    groups: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(views) + 1):
        if i == len(views) or views[i].shape[1:] != views[start].shape[1:]:
            groups.append((start, i))
            start = i
    return groups


class MultiViewModel(nn.Module):
    """Backbone + head over a list of views of one batch: (n_views·B, out_dim), rows in view order.

    The backbone runs once per :func:`group_views` group on the batch-concatenated views; the head
    runs once on all CLS embeddings. State-dict keys are ``backbone.*`` and ``head.*`` (our
    checkpoint layout, docs/original.md §2.2).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, views: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(views, torch.Tensor):
            views = [views]
        if len(views) == 0:
            raise ValueError("MultiViewModel: expected at least one view, got an empty list")
        for i, v in enumerate(views):
            if not isinstance(v, torch.Tensor) or v.ndim != 5:
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"MultiViewModel: view {i} must be a (B, 3, T, H, W) tensor, got {got}")
            if v.shape[0] != views[0].shape[0]:
                raise ValueError(
                    f"MultiViewModel: every view needs the same batch size; view 0 has {views[0].shape[0]}, "
                    f"view {i} has {v.shape[0]}"
                )
        features = [self.backbone(torch.cat(list(views[a:b]))) for a, b in group_views(views)]
        return self.head(torch.cat(features))


def teacher_temperature_schedule(warmup: float, final: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Teacher temperature per epoch: ``linspace(warmup, final, warmup_epochs)`` (end point included,
    as in the original), then ``final``. Endo-FM uses 0.04 throughout (``warmup_epochs=0``)."""
    if epochs < 1:
        raise ValueError(f"teacher temperature schedule: epochs must be >= 1, got {epochs}")
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"teacher temperature schedule: warmup_epochs must be in [0, {epochs}], got {warmup_epochs}")
    if warmup <= 0 or final <= 0:
        raise ValueError(f"teacher temperature schedule: temperatures must be > 0, got {warmup} and {final}")
    return np.concatenate([np.linspace(warmup, final, warmup_epochs), np.full(epochs - warmup_epochs, final)])


Centering = Literal["center", "sinkhorn"]


@torch.no_grad()
def sinkhorn_knopp(teacher: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Teacher targets by Sinkhorn-Knopp (SwAV, DINOv2's alternative to the centre): ``exp(t/τ)``
    normalised alternately so that every prototype gets an equal share of the batch (across all ranks)
    and every row sums to 1. Returns (rows, K) probabilities. Equipartition within the batch rules
    out both collapses, which small-batch runs need (the running centre of the original cannot stop
    a uniform collapse when the batch is tiny)."""
    logits = teacher.float() / temperature
    distributed = in_process_group()
    shift = logits.max()
    if distributed:  # one shift for every rank: the per-prototype sums add the ranks' columns together
        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    q = (logits - shift).exp().t()  # (K, rows); a global shift cancels in the normalisations
    rows = torch.tensor(q.shape[1], device=q.device, dtype=q.dtype)
    if distributed:
        dist.all_reduce(rows)
    k = q.shape[0]
    total = q.sum()
    if distributed:
        dist.all_reduce(total)
    q /= total
    for _ in range(iterations):
        per_prototype = q.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(per_prototype)
        q /= per_prototype * k
        q /= q.sum(dim=0, keepdim=True) * rows
    return (q * rows).t()


class EndoFMLoss(nn.Module):
    """Multi-view self-distillation loss with a teacher centre (state dict: ``center`` [1, out_dim]).

    Inputs are the student output for ``n_views`` views and the teacher output for the first
    ``n_global`` (global) views, each view a block of B rows in view order. For teacher view q and
    student view v ≠ q the term is ``mean_b CE(softmax((t_q - c)/τ_t), log_softmax(s_v/τ_s))``. Terms
    with v global form L_dm (dynamic motion), terms with v local form L_cv (cross-view); the paper's
    2 + 8 views give 2 dm and 16 cv terms. The loss is

        loss = (dm_weight · Σ dm terms + cv_weight · Σ cv terms) / (dm_weight · n_dm + cv_weight · n_cv),

    which with the default weights 1, 1 is the original's plain mean over all terms. Only the ratio
    of the weights matters: it scales each term of one kind against a term of the other (at 1, 1 the
    kinds weigh n_dm : n_cv = 2 : 16 overall); a zero weight keeps only the other kind. Softmax,
    cross-entropy and centre maths run in fp32, also under autocast.
    """

    center: torch.Tensor

    def __init__(
        self,
        out_dim: int,
        n_global: int,
        n_views: int,
        *,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        epochs: int = 100,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        cv_weight: float = 1.0,
        dm_weight: float = 1.0,
        centering: Centering = "center",
        sinkhorn_iterations: int = 3,
    ) -> None:
        super().__init__()
        if centering not in ("center", "sinkhorn"):
            raise ValueError(f"EndoFMLoss: centering must be 'center' or 'sinkhorn', got {centering!r}")
        if sinkhorn_iterations < 1:
            raise ValueError(f"EndoFMLoss: sinkhorn_iterations must be >= 1, got {sinkhorn_iterations}")
        self.centering, self.sinkhorn_iterations = centering, int(sinkhorn_iterations)
        if out_dim < 1:
            raise ValueError(f"EndoFMLoss: out_dim must be >= 1, got {out_dim}")
        if not 1 <= n_global <= n_views:
            raise ValueError(f"EndoFMLoss: need 1 <= n_global <= n_views, got n_global={n_global}, n_views={n_views}")
        if student_temp <= 0:
            raise ValueError(f"EndoFMLoss: student_temp must be > 0, got {student_temp}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"EndoFMLoss: center_momentum must be in [0, 1], got {center_momentum}")
        if cv_weight < 0 or dm_weight < 0:
            raise ValueError(f"EndoFMLoss: cv_weight and dm_weight must be >= 0, got {cv_weight} and {dm_weight}")
        self.out_dim, self.n_global, self.n_views = out_dim, n_global, n_views
        self.n_dm_terms = n_global * (n_global - 1)
        self.n_cv_terms = n_global * (n_views - n_global)
        self.cv_weight, self.dm_weight = float(cv_weight), float(dm_weight)
        self._norm = self.dm_weight * self.n_dm_terms + self.cv_weight * self.n_cv_terms
        if self._norm == 0:
            raise ValueError(
                f"EndoFMLoss: no weighted terms (n_dm={self.n_dm_terms} at dm_weight={dm_weight}, "
                f"n_cv={self.n_cv_terms} at cv_weight={cv_weight})"
            )
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.teacher_temps = teacher_temperature_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, epochs
        )
        self.register_buffer("center", torch.zeros(1, out_dim))

    @property
    def n_terms(self) -> int:
        return self.n_dm_terms + self.n_cv_terms

    def teacher_temp(self, epoch: int) -> float:
        if not 0 <= epoch < len(self.teacher_temps):
            raise ValueError(f"EndoFMLoss: epoch {epoch} is outside the schedule's [0, {len(self.teacher_temps)})")
        return float(self.teacher_temps[epoch])

    def _batch_size(self, student_out: torch.Tensor, teacher_out: torch.Tensor) -> int:
        for name, out, views in (("student", student_out, self.n_views), ("teacher", teacher_out, self.n_global)):
            if out.ndim != 2 or out.shape[1] != self.out_dim or out.shape[0] == 0 or out.shape[0] % views:
                raise ValueError(
                    f"EndoFMLoss: {name} output must be ({views}·B, {self.out_dim}) for {views} views, "
                    f"got {tuple(out.shape)}"
                )
        batch = teacher_out.shape[0] // self.n_global
        if student_out.shape[0] != self.n_views * batch:
            raise ValueError(
                f"EndoFMLoss: teacher output has B={batch} ({teacher_out.shape[0]} rows / {self.n_global} views) "
                f"but student output has {student_out.shape[0]} rows, expected {self.n_views * batch}"
            )
        return batch

    def forward(
        self, student_out: torch.Tensor, teacher_out: torch.Tensor, epoch: int, *, update_center: bool = True
    ) -> dict[str, torch.Tensor | float]:
        """Loss and statistics; then (unless ``update_center=False``) the centre update.

        Returns ``loss`` (with gradient), and detached: ``dm``/``cv`` (mean of their own terms, NaN
        when there are none), ``teacher_entropy`` (mean entropy of the teacher distributions, nats;
        it falls towards 0 on collapse to one prototype and rises to log(out_dim) on a uniform
        collapse), ``batch_entropy`` (entropy of the teacher distribution averaged over the global batch: how many
        prototypes the batch uses; healthy training keeps it well above ``teacher_entropy``, and the two
        meet on either collapse), ``center_norm`` (after the update), and ``teacher_temp`` (float).
        """
        batch = self._batch_size(student_out, teacher_out)
        tau_t = self.teacher_temp(epoch)
        g, v, k = self.n_global, self.n_views, self.out_dim
        with torch.autocast(device_type=student_out.device.type, enabled=False):
            teacher = teacher_out.detach().float()
            if self.centering == "sinkhorn":
                p = sinkhorn_knopp(teacher, tau_t, self.sinkhorn_iterations)
                log_p = p.clamp_min(1e-30).log()
            else:
                log_p = F.log_softmax((teacher - self.center) / tau_t, dim=-1)
                p = log_p.exp()
            log_q = F.log_softmax(student_out.float() / self.student_temp, dim=-1)
            # ce[q, s]: batch mean of the cross-entropy from teacher view q to student view s.
            ce = -torch.einsum("gbk,vbk->gv", p.view(g, batch, k), log_q.view(v, batch, k)) / batch
            teacher_view = torch.arange(g, device=ce.device)[:, None]
            student_view = torch.arange(v, device=ce.device)[None, :]
            dm_mask = (student_view < g) & (student_view != teacher_view)
            cv_mask = (student_view >= g).expand(g, v)
            dm_sum, cv_sum = (ce * dm_mask).sum(), (ce * cv_mask).sum()
            loss = (self.dm_weight * dm_sum + self.cv_weight * cv_sum) / self._norm
            teacher_entropy = -(p * log_p).sum(dim=-1).mean()
            p_mean = p.sum(dim=0)  # over the global batch, so every rank reports the same value
            rows = p.shape[0]
            if in_process_group():
                dist.all_reduce(p_mean)
                rows *= dist.get_world_size()
            p_mean = p_mean / rows
            batch_entropy = -(p_mean * p_mean.clamp_min(1e-30).log()).sum()
            if update_center:
                self.update_center(teacher)
        nan = torch.tensor(math.nan, device=ce.device)
        return {
            "loss": loss,
            "dm": (dm_sum / self.n_dm_terms).detach() if self.n_dm_terms else nan,
            "cv": (cv_sum / self.n_cv_terms).detach() if self.n_cv_terms else nan,
            "teacher_entropy": teacher_entropy.detach(),
            "batch_entropy": batch_entropy.detach(),
            "center_norm": self.center.norm().detach(),
            "teacher_temp": tau_t,
        }

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """``c <- m·c + (1 - m)·mean of the teacher rows``; the mean spans all ranks when
        ``torch.distributed`` is initialised (sum all-reduced, divided by rows × world size)."""
        teacher = teacher_out.detach().float()
        batch_center = teacher.sum(dim=0, keepdim=True)
        rows = teacher.shape[0]
        if in_process_group():
            dist.all_reduce(batch_center)
            rows *= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_center / rows, alpha=1.0 - self.center_momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum·teacher + (1 - momentum)·student`` for every parameter, in place; buffers
    are copied. Parameters are matched by name; DDP/DataParallel wrappers are unwrapped."""
    momentum = float(momentum)  # schedules hand out NumPy scalars
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update: momentum must be in [0, 1], got {momentum}")
    teacher, student = unwrap(teacher), unwrap(student)
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    t_buffers, s_buffers = dict(teacher.named_buffers()), dict(student.named_buffers())
    for kind, t_items, s_items in (("parameters", t_params, s_params), ("buffers", t_buffers, s_buffers)):
        if t_items.keys() != s_items.keys():
            only_t = [n for n in t_items if n not in s_items]
            only_s = [n for n in s_items if n not in t_items]
            raise ValueError(
                f"ema_update: teacher and student {kind} differ; only in teacher: {_names(only_t) or '-'}; "
                f"only in student: {_names(only_s) or '-'}"
            )
        shapes = [
            f"{n} {list(t.shape)} vs {list(s_items[n].shape)}"
            for n, t in t_items.items()
            if t.shape != s_items[n].shape
        ]
        if shapes:
            raise ValueError(f"ema_update: teacher and student {kind} shapes differ: {_names(shapes)}")
    if t_params:
        t_list = list(t_params.values())
        torch._foreach_mul_(t_list, momentum)
        torch._foreach_add_(t_list, [s_params[n].detach() for n in t_params], alpha=1.0 - momentum)
    for name, buffer in t_buffers.items():
        buffer.copy_(s_buffers[name])


def param_groups(model: nn.Module) -> list[dict]:
    """The original's two AdamW groups over trainable parameters: ``[decayed, not decayed]``.

    Biases and 1-D tensors (norm weights) get ``weight_decay=0``; everything else is decayed. Like
    the original, ``no_weight_decay()`` is not consulted, so ``pos_embed``, ``time_embed`` and
    ``cls_token`` (3-D) are decayed. The first group takes the optimiser's (scheduled) weight decay.
    """
    decayed, not_decayed = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (not_decayed if name.endswith(".bias") or p.ndim == 1 else decayed).append(p)
    return [{"params": decayed}, {"params": not_decayed, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float) -> list[float]:
    """The original's per-tensor clipping: each gradient whose norm exceeds ``clip`` is rescaled by
    ``clip / (norm + 1e-6)`` on its own (not a global norm). Returns the pre-clipping norms of the
    tensors that have a gradient, in parameter order. Unscale fp16 gradients first."""
    clip = float(clip)
    if clip <= 0:
        raise ValueError(f"clip_gradients: clip must be > 0, got {clip}")
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return []
    norms = torch._foreach_norm(grads)
    scales = torch._foreach_add(norms, 1e-6)
    torch._foreach_reciprocal_(scales)
    torch._foreach_mul_(scales, clip)
    torch._foreach_clamp_max_(scales, 1.0)  # a factor of exactly 1 leaves small gradients untouched
    torch._foreach_mul_(grads, scales)
    device = norms[0].device
    return torch.stack([n.to(device, torch.float32) for n in norms]).tolist()


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_last_layer: int) -> list[str]:
    """Drop the gradients of the head's ``last_layer`` while ``epoch < freeze_last_layer`` (the
    original freezes it for epoch 0), so the optimiser skips it. Returns the names whose gradient was dropped."""
    if epoch >= freeze_last_layer:
        return []
    named = [(n, p) for n, p in model.named_parameters() if "last_layer" in n.split(".")]
    if not named:
        raise ValueError("cancel_last_layer_gradients: the model has no parameter under a 'last_layer' module")
    dropped = [n for n, p in named if p.grad is not None]
    for _, p in named:
        p.grad = None
    return dropped
