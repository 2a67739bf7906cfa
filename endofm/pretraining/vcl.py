"""VCL (Qian et al., "Static and Dynamic Concepts for Self-supervised Video Representation Learning",
ECCV 2022) as a pretraining objective of the shared loop (docs/original.md §7.1).

The original trains 3D CNNs (R(2+1)D-18); here the objective runs on the same TimeSformer, corpus,
epochs, batch and optimiser (AdamW, cosine schedules) as Endo-FM, so a comparison isolates the
objective. The CLS token is the global feature and the patch tokens the feature map.

Per clip, six streams (:class:`VCLDataset`): two consecutive RGB clips of ``T`` frames at one random
stride, their static views (one random frame repeated over ``T``, :func:`static_view`) and dynamic views
(differences of consecutive normalised frames, frame 0 minus the last, :func:`dynamic_view`). Losses
(:class:`VCLLoss`), summed:

1. InfoNCE (``temperature`` 0.07, keys detached, in-batch negatives, one projector per stream type):
   RGB 1 ↔ RGB 2 (two directions, halved), each RGB clip ↔ the other clip's static view and dynamic view
   (four directed terms each, halved).
2. Concepts: per stream type an MLP (Linear, BatchNorm, ReLU, Linear), L2-normalised, then prototypes
   (a bias-free Linear to 2K, rows re-normalised every step, frozen for ``freeze_prototypes_epochs``):
   the first K outputs are static concepts, the last K dynamic. Targets are Sinkhorn-Knopp assignments
   (ε ``sinkhorn_eps`` 0.05, 3 iterations) over the batch and a queue of earlier scores (used from epoch
   ``queue_start_epoch``); swapped prediction at ``concept_temp`` 0.1 among {RGB 1, RGB 2, static 1,
   static 2} for static concepts and {RGB 1, RGB 2, dynamic 1, dynamic 2} for dynamic ones.
3. Diversity (``diversity_weight`` 0.1): Σ p log p (minimised, so entropy maximised) of static-concept
   probabilities on dynamic views and of dynamic-concept probabilities on static views.
4. Fidelity: per stream type an MLP maps the concept probabilities (RGB: both halves, 2K; static and
   dynamic: their K) back to the detached backbone feature; loss −cosine.
5. Local concepts (``local_concepts``, from epoch ``local_start_epoch``): prototypes, projected to the
   token width, attend once over a view's patch tokens, then a residual MLP, giving one feature per
   concept; for the two views of each stream type, concepts among the ``local_topk`` highest-scoring in
   both views of a sample are matched: squared distance for the same sample, ``relu(local_margin − d)²``
   averaged over the other samples, normalised by the number of active (sample, concept) pairs.

``backbone.pt`` holds the TimeSformer in the layout of every other pretrained backbone.

Layer: pretraining (docs/architecture.md). May import: foundation, data, models, engine and the
pretraining modules below the loop (``contract``, ``objective``, ``views``), not :mod:`~endofm.pretraining.train`.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from endofm.config import from_dict, merge, setting, to_dict
from endofm.data.video import VideoReader
from endofm.engine import unwrap
from endofm.models.vit import build_backbone
from endofm.pretraining.contract import LoopConfig, Objective
from endofm.pretraining.objective import sinkhorn_knopp
from endofm.pretraining.views import Augmentation, MultiViewDataset, augment_view

#: Stream order of a sample: RGB 1, RGB 2, static 1, static 2, dynamic 1, dynamic 2.
STREAMS = ("rgb1", "rgb2", "static1", "static2", "dynamic1", "dynamic2")
KINDS = ("rgb", "rgb", "static", "static", "dynamic", "dynamic")


@dataclass
class VCLViewConfig(Augmentation):
    """Two consecutive clips per sample and their augmentation (:class:`~endofm.pretraining.views.Augmentation`,
    applied per clip by :func:`augment_view`). Augmentation defaults are the original's (colour jitter 0.5,
    0.5, 0.5, 0.25 always, grayscale 0.5); the crop scale is Endo-FM's global views', the crop rule the clean
    one (Endo-FM's quirk is not VCL's)."""

    frames: int = setting(8, "Frames per clip; the two clips are consecutive", minimum=1, before="ratio")
    size: int = setting(224, "Clip side in pixels", minimum=1)
    scale: tuple[float, float] = setting(
        (0.4, 1.0), "Crop area as a fraction of the frame (min, max)", each=dict(exclusive_minimum=0)
    )
    max_stride: int = setting(
        3, "Frame stride drawn in [1, min(max_stride, frames of the clip // (2 frames))]", minimum=1
    )
    crop_rule: Literal["original", "last_valid"] = setting(
        "last_valid", "Random resized crop rule, as pretrain.settings.views.crop_rule", after="ratio"
    )
    # VCL's defaults of the shared augmentation settings
    color_jitter: float = 1.0
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.25
    grayscale: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale[0] > self.scale[1]:
            raise ValueError(f"views.scale must satisfy 0 < min <= max, got {self.scale}")


@dataclass
class VCLConfig(LoopConfig):
    """VCL pretraining settings: the loop's (:class:`~endofm.pretraining.contract.LoopConfig`, Endo-FM's
    recipe) and the objective's, the original's (docs/original.md §7.1) with 768-d features on the ViT-B."""

    views: VCLViewConfig = setting(
        description="Two consecutive clips per sample and their augmentation", factory=VCLViewConfig, after="backbone"
    )
    proj_dim: int = setting(128, "InfoNCE projector output (hidden width = the backbone's)", minimum=1)
    num_concepts: int = setting(100, "K static and K dynamic prototypes", minimum=1)
    temperature: float = setting(0.07, "InfoNCE temperature", exclusive_minimum=0)
    concept_temp: float = setting(
        0.1, "Temperature of the swapped prediction and concept probabilities", exclusive_minimum=0
    )
    sinkhorn_eps: float = setting(0.05, "Sinkhorn-Knopp epsilon", exclusive_minimum=0)
    sinkhorn_iterations: int = setting(3, "Sinkhorn-Knopp normalisation rounds (the original: 3)", minimum=1)
    queue_length: int = setting(1024, "Earlier scores per stream in the Sinkhorn-Knopp targets; 0: none", minimum=0)
    queue_start_epoch: int = setting(1, "First epoch whose targets use the queue", minimum=0)
    freeze_prototypes_epochs: int = setting(1, "Epochs with the prototypes frozen", minimum=0)
    nce_weight: float = setting(1.0, "Weight of the InfoNCE terms", minimum=0)
    concept_weight: float = setting(1.0, "Weight of the swapped concept prediction", minimum=0)
    diversity_weight: float = setting(0.1, "Weight of the diversity (entropy) term", minimum=0)
    fidelity_weight: float = setting(1.0, "Weight of the fidelity (reconstruction) term", minimum=0)
    local_concepts: bool = setting(True, "Local concept contrast over patch tokens")
    local_weight: float = setting(1.0, "Weight of the local concept contrast (local_concepts)", minimum=0)
    local_topk: int = setting(
        9, "Concepts above the (k+1)-th highest score count as present (below 2 num_concepts)", minimum=1
    )
    local_margin: float = setting(1.4, "Margin of the negative pairs' distance", exclusive_minimum=0)
    local_start_epoch: int = setting(10, "First epoch with local concepts", minimum=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.local_topk >= 2 * self.num_concepts:
            raise ValueError(f"local_topk must be < 2 · num_concepts = {2 * self.num_concepts}, got {self.local_topk}")
        if self.views.size % self.backbone.patch_size:
            raise ValueError(
                f"views.size {self.views.size} is not a multiple of backbone.patch_size {self.backbone.patch_size}"
            )


#: The settings VCL takes over from Endo-FM's (``pretrain.settings``) in the workflow, so that only the objective
#: differs: the loop's, but for the snapshots, which the workflow sets per pretraining job.
SHARED_SETTINGS = tuple(f.name for f in dataclasses.fields(LoopConfig) if f.name != "snapshots")


def workflow_settings(cfg: Any, variant: str) -> VCLConfig:
    """VCL's settings in the workflow: the budget of ``pretrain.settings`` (:data:`SHARED_SETTINGS`),
    then the ``pretrain.vcl`` overlay."""
    if variant != "default":
        raise ValueError(f"vcl has the one pretraining variant 'default', got {variant!r}")
    base = to_dict(cfg.pretrain.settings)
    shared = {k: base[k] for k in SHARED_SETTINGS}
    return from_dict(VCLConfig, merge(shared, cfg.pretrain.vcl), "pretrain.vcl")


# ----------------------------------------------------------------------------------------------------
# Views


def sample_clip_indices(num_frames: int, frames: int, max_stride: int, rng: np.random.Generator) -> np.ndarray:
    """Frame indices ``(2, frames)`` of two consecutive clips: one stride in ``[1, min(max_stride,
    num_frames // (2·frames))]`` and a random start; indices are clamped to a short clip."""
    if num_frames < 1:
        raise ValueError(f"cannot sample clips from a video of {num_frames} frames")
    stride = int(rng.integers(1, max(1, min(max_stride, num_frames // (2 * frames))) + 1))
    span = 2 * frames * stride
    start = int(rng.integers(0, max(num_frames - span, 0) + 1))
    return np.minimum(start + stride * np.arange(2 * frames), num_frames - 1).reshape(2, frames)


def static_view(clip: torch.Tensor, index: int) -> torch.Tensor:
    """Frame ``index`` of a ``(C, T, H, W)`` clip repeated over ``T``."""
    return clip[:, index : index + 1].expand_as(clip).clone()


def dynamic_view(clip: torch.Tensor) -> torch.Tensor:
    """Frame differences of a ``(C, T, H, W)`` clip, ``x_t − x_{t−1}``, frame 0 minus the last frame."""
    return clip - clip.roll(1, dims=1)


class VCLDataset(MultiViewDataset):
    """One clip as the six :data:`STREAMS`, each ``(3, T, S, S)``; reproducible per (seed, epoch, index)."""

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        index = operator.index(index)
        if not 0 <= index < len(self.paths):
            raise IndexError(f"clip index {index} out of range for {len(self.paths)} clips")
        cfg, rng, path = self.cfg, self.rng(index), self.paths[index]
        with VideoReader(path) as reader:
            if self.frames is not None and reader.num_frames != self.frames[index]:
                raise ValueError(
                    f"{path}: the manifest lists {self.frames[index]} frames but the file has "
                    f"{reader.num_frames}; re-run clip extraction"
                )
            indices = sample_clip_indices(reader.num_frames, cfg.frames, cfg.max_stride, rng)
            wanted, inverse = np.unique(indices.ravel(), return_inverse=True)
            frames = reader.get_frames(wanted)[inverse.reshape(indices.shape)]
        rgb = [augment_view(frames[k], cfg.size, cfg.scale, cfg, rng) for k in range(2)]
        static = [static_view(clip, int(rng.integers(0, cfg.frames))) for clip in rgb]
        return [*rgb, *static, *(dynamic_view(clip) for clip in rgb)]


# ----------------------------------------------------------------------------------------------------
# Model and loss


def _mlp(dims: list[int], norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(b)] if norm else []
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LocalConcepts(nn.Module):
    """One cross-attention step of the prototypes (queries) over a view's tokens, then a residual MLP:
    ``(B, N, D)`` tokens -> ``(B, 2K, D)`` L2-normalised concept features."""

    def __init__(self, concept_dim: int, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(concept_dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.mlp = _mlp([dim, dim, dim])
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        q = self.query(prototypes)  # (2K, D)
        attn = torch.einsum("kd,bnd->bkn", q, self.key(tokens)) / math.sqrt(q.shape[-1])
        c = torch.einsum("bkn,bnd->bkd", attn.softmax(dim=-1), self.value(tokens))
        c = c + self.mlp(self.norm(c))
        return F.normalize(c, dim=-1)


class VCLModel(nn.Module):
    """The TimeSformer and VCL's heads, per stream type: InfoNCE projector, concept MLP + prototypes,
    reconstruction MLP; and the local-concept attention. ``forward`` runs every parameter it trains."""

    def __init__(self, cfg: VCLConfig) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg.backbone)
        d, k = self.backbone.embed_dim, cfg.num_concepts
        self.num_concepts, self.concept_temp = k, cfg.concept_temp
        kinds = ("rgb", "static", "dynamic")
        self.projector = nn.ModuleDict({s: _mlp([d, d, cfg.proj_dim]) for s in kinds})
        self.concept_mlp = nn.ModuleDict({s: _mlp([d, d, d], norm=True) for s in kinds})
        self.prototypes = nn.ModuleDict({s: nn.Linear(d, 2 * k, bias=False) for s in kinds})
        self.reconstruct = nn.ModuleDict({s: _mlp([2 * k if s == "rgb" else k, d, d]) for s in kinds})
        self.local = LocalConcepts(d, d) if cfg.local_concepts else None

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        for layer in self.prototypes.values():
            layer.weight.copy_(F.normalize(layer.weight, dim=1))

    def concept_probabilities(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Static and dynamic concept probabilities of ``(..., 2K)`` scores: softmax over each half."""
        k = self.num_concepts
        return (scores[..., :k] / self.concept_temp).softmax(-1), (scores[..., k:] / self.concept_temp).softmax(-1)

    def forward(self, views: list[torch.Tensor], local: bool = False) -> dict[str, torch.Tensor]:
        """Per stream (leading dim 6, :data:`STREAMS` order): ``feature`` (B, D), ``z`` (B, P), ``scores``
        (B, 2K), ``reconstruction`` (B, D) and, with ``local``, ``local`` (B, 2K, D)."""
        if len(views) != len(STREAMS):
            raise ValueError(f"VCLModel: expected {len(STREAMS)} streams ({', '.join(STREAMS)}), got {len(views)}")
        b = views[0].shape[0]
        x = torch.cat(views)
        if local:
            dense = self.backbone.forward_features(x, dense=True)
            feats, tokens = dense.cls, dense.patches.flatten(1, 3)
        else:
            feats, tokens = self.backbone(x), None
        feats = feats.view(len(STREAMS), b, -1)
        out: dict[str, list[torch.Tensor]] = {"z": [], "scores": [], "reconstruction": [], "local": []}
        for i, kind in enumerate(KINDS):
            out["z"].append(F.normalize(self.projector[kind](feats[i]), dim=-1))
            e = F.normalize(self.concept_mlp[kind](feats[i]), dim=-1)
            scores = self.prototypes[kind](e)
            out["scores"].append(scores)
            p_static, p_dynamic = self.concept_probabilities(scores)
            p = {"rgb": torch.cat([p_static, p_dynamic], -1), "static": p_static, "dynamic": p_dynamic}[kind]
            out["reconstruction"].append(self.reconstruct[kind](p))
            if local:
                view_tokens = tokens[i * b : (i + 1) * b]
                out["local"].append(self.local(view_tokens, self.prototypes[kind].weight))
        result = {k: torch.stack(v) for k, v in out.items() if v}
        result["feature"] = feats
        if self.local is not None and not local and _distributed():  # DDP needs every parameter in the graph
            result["unused"] = sum(p.sum() for p in self.local.parameters()) * 0.0
        return result


def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of L2-normalised ``(B, P)`` rows: row i of ``key`` (detached) is the positive of row i of
    ``query``, the other rows the negatives; mean over rows of ``−log softmax(q·k / τ)_ii``."""
    logits = query @ key.detach().t() / temperature
    return F.cross_entropy(logits, torch.arange(len(query), device=query.device))


def _neg_entropy(p: torch.Tensor) -> torch.Tensor:
    """Mean over rows of Σ p log p."""
    return (p * p.clamp_min(1e-12).log()).sum(-1).mean()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _gather(x: torch.Tensor) -> torch.Tensor:
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=1)


class VCLLoss(nn.Module):
    """VCL's losses (module docstring) over :class:`VCLModel`'s outputs; owns the score queue
    (``queue`` (6, L, 2K), newest first, ``queue_filled`` rows valid). The queue takes every rank's batch
    (all-gathered), so it is the same on every rank and a checkpoint of rank 0's restores all; the
    Sinkhorn-Knopp normalisation sums over ranks, so under DDP each rank's copy of the queue counts once."""

    queue: torch.Tensor
    queue_filled: torch.Tensor

    def __init__(self, cfg: VCLConfig) -> None:
        super().__init__()
        self.cfg, self.k = cfg, cfg.num_concepts
        self.register_buffer("queue", torch.zeros(len(STREAMS), cfg.queue_length, 2 * cfg.num_concepts))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def targets(self, scores: torch.Tensor, epoch: int) -> torch.Tensor:
        """Sinkhorn-Knopp assignments ``(6, B, 2K)`` of each stream's batch, static and dynamic halves apart,
        over the batch and (from ``queue_start_epoch``) the queue."""
        cfg, k, b = self.cfg, self.k, scores.shape[1]
        scores = scores.detach().float()
        if epoch >= cfg.queue_start_epoch and int(self.queue_filled) > 0:
            scores = torch.cat([scores, self.queue[:, : int(self.queue_filled)]], dim=1)
        halves = []
        for part in (scores[..., :k], scores[..., k:]):
            halves.append(torch.stack([sinkhorn_knopp(s, cfg.sinkhorn_eps, cfg.sinkhorn_iterations)[:b] for s in part]))
        return torch.cat(halves, dim=-1)

    @torch.no_grad()
    def enqueue(self, scores: torch.Tensor) -> None:
        if self.cfg.queue_length == 0:
            return
        new = _gather(scores.detach().float())[:, : self.cfg.queue_length]
        n = new.shape[1]
        self.queue.copy_(torch.cat([new, self.queue[:, : self.cfg.queue_length - n]], dim=1))
        self.queue_filled.fill_(min(int(self.queue_filled) + n, self.cfg.queue_length))

    def swapped(self, q: torch.Tensor, scores: torch.Tensor, streams: tuple[int, ...]) -> torch.Tensor:
        """Mean over ordered pairs i ≠ j of ``streams`` of ``CE(q_i, softmax(scores_j / τ))``."""
        log_p = F.log_softmax(scores / self.cfg.concept_temp, dim=-1)
        terms = [-(q[i] * log_p[j]).sum(-1).mean() for i in streams for j in streams if i != j]
        return torch.stack(terms).mean()

    def local_loss(self, local: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Local concept matching between the two views of each stream type (module docstring, 5)."""
        cfg = self.cfg
        total, active = local.new_zeros(()), local.new_zeros(())
        b = local.shape[1]
        for a, c in ((0, 1), (2, 3), (4, 5)):
            present = []
            for v in (a, c):
                kth = scores[v].topk(cfg.local_topk + 1, dim=-1).values[:, -1:]
                present.append(scores[v] > kth)  # (B, 2K)
            dist_ = torch.cdist(local[a].transpose(0, 1), local[c].transpose(0, 1))  # (2K, B, B)
            both = present[0].t()[:, :, None] & present[1].t()[:, None, :]  # concept k in a_i and c_j
            eye = torch.eye(b, dtype=torch.bool, device=local.device)
            pos = (dist_.square() * (both & eye)).sum()
            neg = (F.relu(cfg.local_margin - dist_).square() * (both & ~eye)).sum() / max(b - 1, 1)
            total = total + pos + neg
            active = active + (both & eye).sum()
        return total / active.clamp_min(1)

    def forward(self, out: Mapping[str, torch.Tensor], epoch: int, local: bool) -> dict[str, torch.Tensor]:
        cfg, k = self.cfg, self.k
        with torch.autocast(device_type=out["z"].device.type, enabled=False):
            z, scores = out["z"].float(), out["scores"].float()
            t = cfg.temperature
            nce_vv = (info_nce(z[0], z[1], t) + info_nce(z[1], z[0], t)) / 2
            nce_vs = (info_nce(z[0], z[3], t) + info_nce(z[3], z[0], t) + info_nce(z[1], z[2], t) + info_nce(z[2], z[1], t)) / 2  # fmt: skip
            nce_vd = (info_nce(z[0], z[5], t) + info_nce(z[5], z[0], t) + info_nce(z[1], z[4], t) + info_nce(z[4], z[1], t)) / 2  # fmt: skip
            q = self.targets(scores, epoch)
            concept = (
                self.swapped(q[..., :k], scores[..., :k], (0, 1, 2, 3))
                + self.swapped(q[..., k:], scores[..., k:], (0, 1, 4, 5))
            ) / 2
            p_static = (scores[..., :k] / cfg.concept_temp).softmax(-1)
            p_dynamic = (scores[..., k:] / cfg.concept_temp).softmax(-1)
            diversity = (_neg_entropy(p_static[4:6]) + _neg_entropy(p_dynamic[2:4])) / 2
            fidelity = -F.cosine_similarity(out["reconstruction"].float(), out["feature"].detach().float(), dim=-1)
            fidelity = fidelity.mean()
            local_term = self.local_loss(out["local"].float(), scores.detach()) if local else z.new_zeros(())
            loss = (
                cfg.nce_weight * (nce_vv + nce_vs + nce_vd)
                + cfg.concept_weight * concept
                + cfg.diversity_weight * diversity
                + cfg.fidelity_weight * fidelity
                + cfg.local_weight * local_term
            )
            if "unused" in out:
                loss = loss + out["unused"]
            usage = [q[[0, 1, 2, 3], :, :k], q[[0, 1, 4, 5], :, k:]]
            entropies = []
            for part in usage:
                mean = part.reshape(-1, k).mean(0)
                entropies.append(-(mean * mean.clamp_min(1e-12).log()).sum())
        self.enqueue(scores)
        return {
            "loss": loss,
            "nce_vv": nce_vv.detach(),
            "nce_vs": nce_vs.detach(),
            "nce_vd": nce_vd.detach(),
            "concept": concept.detach(),
            "diversity": diversity.detach(),
            "fidelity": fidelity.detach(),
            "local": local_term.detach(),
            "static_usage": entropies[0].detach(),
            "dynamic_usage": entropies[1].detach(),
        }


class VCLObjective(Objective):
    """VCL as a plug-in of the pretraining loop; ``backbone.pt`` is the trained TimeSformer.

    ``static_usage``/``dynamic_usage`` in ``metrics.csv``: entropy (nats) of the mean Sinkhorn-Knopp target
    over the batch's streams, how many concepts are in use (log K when all are)."""

    name = "vcl"
    config_class = VCLConfig
    terms = ("loss", "nce_vv", "nce_vs", "nce_vd", "concept", "diversity", "fidelity", "local")
    stats = ("static_usage", "dynamic_usage")

    def dataset(self, clips: pd.DataFrame) -> VCLDataset:
        return VCLDataset(clips, self.cfg.views, seed=self.cfg.seed)

    def build_model(self) -> VCLModel:
        return VCLModel(self.cfg)

    def setup(self, model: nn.Module) -> None:
        self.criterion = VCLLoss(self.cfg).to(self.info.device)

    def loss(self, model: nn.Module, views: list[torch.Tensor], epoch: int, step: int) -> dict[str, Any]:
        unwrap(model).normalize_prototypes()
        local = self.cfg.local_concepts and epoch >= self.cfg.local_start_epoch
        return self.criterion(model(views, local=local), epoch, local)

    def after_backward(self, model: nn.Module, epoch: int) -> None:
        super().after_backward(model, epoch)
        if epoch < self.cfg.freeze_prototypes_epochs:
            for p in model.prototypes.parameters():
                p.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"vcl_queue": self.criterion.queue.detach().cpu(), "vcl_queue_filled": int(self.criterion.queue_filled)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.criterion.queue.copy_(state["vcl_queue"])
        self.criterion.queue_filled.fill_(int(state["vcl_queue_filled"]))

    def export_model(self, model: nn.Module) -> nn.Module:
        return model


__all__ = [
    "KINDS",
    "SHARED_SETTINGS",
    "STREAMS",
    "VCLConfig",
    "VCLDataset",
    "VCLLoss",
    "VCLModel",
    "VCLObjective",
    "VCLViewConfig",
    "dynamic_view",
    "info_nce",
    "sample_clip_indices",
    "static_view",
    "workflow_settings",
]
