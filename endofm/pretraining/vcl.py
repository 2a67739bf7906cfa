"""VCL (Qian et al., "Static and Dynamic Concepts for Self-supervised Video Representation Learning",
ECCV 2022) as a pretraining objective of the shared loop (docs/original.md §7.1).

The original trains 3D CNNs (R(2+1)D-18); here the objective runs on the same TimeSformer, corpus,
epochs, batch and optimiser (AdamW, cosine schedules) as Endo-FM, so a comparison isolates the
objective. The CLS token is the global feature and the patch tokens the feature map.

Per clip, six streams (:class:`VCLDataset`): two consecutive RGB clips of ``T`` frames at one random
stride, their static views (the frame at one random position of each raw clip, augmented on its own and
repeated over ``T``, :func:`static_view`) and dynamic views (differences of consecutive normalised frames,
frame 0 minus the last, :func:`dynamic_view`). Losses (:class:`VCLLoss`), summed as the original's
``train.py`` (each with its ``*_weight``, the original's 1, 1, 0.1, 1, 1):

1. InfoNCE (``temperature`` 0.07, keys detached and all-gathered over processes: every other clip of the
   global batch is a negative) through the five heads of :data:`HEADS`: RGB 1 ↔ RGB 2 (``fvv``, two
   directions, halved), each RGB clip (``fvs``) ↔ the other clip's static view (``fsv``) and each RGB clip
   (``fvd``) ↔ the other clip's dynamic view (``fdv``) (four directed terms each, halved).
2. Concepts: per stream type an MLP (Linear, BatchNorm, ReLU, Linear), L2-normalised, then prototypes
   (a bias-free Linear to 2K, rows re-normalised every step, frozen for ``freeze_prototypes_epochs``):
   the first K outputs are static concepts, the last K dynamic. Targets are Sinkhorn-Knopp assignments
   (ε ``sinkhorn_eps`` 0.05, 3 iterations) over the batch and a queue of earlier scores (used from epoch
   ``queue_start_epoch``); swapped prediction at ``concept_temp`` 0.1, the mean over ordered pairs among
   {RGB 1, RGB 2, static 1, static 2} for static concepts plus that among {RGB 1, RGB 2, dynamic 1,
   dynamic 2} for dynamic ones.
3. Diversity: Σ p log p (minimised, so entropy maximised) of static-concept probabilities on the dynamic
   views plus that of dynamic-concept probabilities on the static views.
4. Fidelity: per stream type an MLP (Linear, BatchNorm, ReLU, Linear) maps the raw prototype scores (RGB:
   all 2K; static views the static K, dynamic views the dynamic K) of its two views back to their detached
   backbone features; minus the mean cosine, summed over the three types.
5. Local concepts (``local_concepts``, from epoch ``local_start_epoch``): per stream type the matching
   prototypes (RGB all 2K, static the static K, dynamic the dynamic K) gather each view's patch tokens
   (:class:`LocalConcepts`, the original's ``LocalfeatureIntegrationTransformer``); the two views' concept
   features are matched by :func:`local_match` (summed over the three types).

``backbone.pt`` holds the TimeSformer in the layout of every other pretrained backbone.

Layer: pretraining (docs/architecture.md). May import: foundation, data, models, engine and the
pretraining modules below the loop (``contract``, ``objective``, ``views``), not :mod:`~endofm.pretraining.train`.
"""

from __future__ import annotations

import dataclasses
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

from endofm.config import setting
from endofm.data.video import VideoReader
from endofm.engine import all_gather_cat, in_process_group, unwrap
from endofm.models.checkpoint import check_start, load_start
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
    nce_weight: float = setting(1.0, "Weight of the InfoNCE terms (vv + vs + vd)", minimum=0)
    concept_weight: float = setting(1.0, "Weight of the swapped concept prediction (static + dynamic)", minimum=0)
    diversity_weight: float = setting(0.1, "Weight of the diversity (entropy) terms (static + dynamic)", minimum=0)
    fidelity_weight: float = setting(
        1.0, "Weight of the fidelity (reconstruction) terms (RGB + static + dynamic)", minimum=0
    )
    local_concepts: bool = setting(True, "Local concept contrast over patch tokens")
    local_weight: float = setting(
        1.0, "Weight of the local concept terms (RGB + static + dynamic; local_concepts)", minimum=0
    )
    local_topk: int = setting(
        9, "Concepts above the (k+1)-th highest score count as present (below num_concepts)", minimum=1
    )
    local_margin: float = setting(1.4, "Margin of the negative pairs' distance", exclusive_minimum=0)
    local_start_epoch: int = setting(10, "First epoch with local concepts", minimum=0)
    init: str = setting(
        "random",
        "Initial backbone weights: random, or a weights file (any layout endofm reads, its head set aside); the "
        "workflow takes pretrain.settings.init, Endo-FM's start, unless pretrain.vcl sets it",
        min_length=1,
        after="seed",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.local_topk >= self.num_concepts:
            raise ValueError(f"local_topk must be < num_concepts = {self.num_concepts}, got {self.local_topk}")
        if self.views.size % self.backbone.patch_size:
            raise ValueError(
                f"views.size {self.views.size} is not a multiple of backbone.patch_size {self.backbone.patch_size}"
            )


#: The settings VCL takes over from Endo-FM's (``pretrain.settings``) in the workflow, so that only the objective
#: differs: the loop's, but for the snapshots, which the workflow sets per pretraining job.
SHARED_SETTINGS = tuple(f.name for f in dataclasses.fields(LoopConfig) if f.name != "snapshots")


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


def static_view(frame: torch.Tensor, frames: int) -> torch.Tensor:
    """A one-frame view ``(C, 1, H, W)`` repeated over ``frames`` frames."""
    return frame.expand(-1, frames, -1, -1).contiguous()


def dynamic_view(clip: torch.Tensor) -> torch.Tensor:
    """Frame differences of a ``(C, T, H, W)`` clip, ``x_t − x_{t−1}``, frame 0 minus the last frame."""
    return clip - clip.roll(1, dims=1)


class VCLDataset(MultiViewDataset):
    """One clip as the six :data:`STREAMS`, each ``(3, T, S, S)``; reproducible per (seed, epoch, index)."""

    def open_video(self, path: str) -> VideoReader:
        return VideoReader(path)  # looked up in this module, where it can be replaced for VCL alone

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        index = operator.index(index)
        if not 0 <= index < len(self.paths):
            raise IndexError(f"clip index {index} out of range for {len(self.paths)} clips")
        cfg, rng = self.cfg, self.rng(index)
        frames, rows = self.read_frames(
            index, lambda num_frames: sample_clip_indices(num_frames, cfg.frames, cfg.max_stride, rng)
        )
        frames = frames[rows]  # (2, frames, H, W, 3)
        still = int(rng.integers(0, cfg.frames))  # the original's back_idx: one position for both clips
        rgb = [augment_view(frames[k], cfg.size, cfg.scale, cfg, rng) for k in range(2)]
        # The static views get their own augmentation, as the original transforms the repeated frame on its
        # own; one frame augmented then repeated equals the repeated frames augmented with one draw.
        static = [
            static_view(augment_view(frames[k, still : still + 1], cfg.size, cfg.scale, cfg, rng), cfg.frames)
            for k in range(2)
        ]
        return [*rgb, *static, *(dynamic_view(clip) for clip in rgb)]


# ----------------------------------------------------------------------------------------------------
# Model and loss

#: The original's five InfoNCE projection heads (``model.py`` ``MI_estimation``) and the streams each projects:
#: ``fvv``, ``fvs`` and ``fvd`` the two RGB clips, ``fsv`` the static views, ``fdv`` the dynamic views.
HEADS = {"fvv": (0, 1), "fvs": (0, 1), "fvd": (0, 1), "fsv": (2, 3), "fdv": (4, 5)}
#: Per stream type: its two streams and the concepts (prototype rows, score columns) its reconstruction and
#: local concepts use: RGB all 2K, static views the first (static) K, dynamic views the last (dynamic) K.
KIND_STREAMS = {"rgb": (0, 1), "static": (2, 3), "dynamic": (4, 5)}


def _concepts(kind: str, k: int) -> slice:
    return {"rgb": slice(0, 2 * k), "static": slice(0, k), "dynamic": slice(k, 2 * k)}[kind]


def _mlp(dims: list[int], norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(b)] if norm else []
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LocalConcepts(nn.Module):
    """The original's ``LocalfeatureIntegrationTransformer`` with one iteration: the concepts' prototypes
    (templates) gather a view's tokens, ``(B, N, D)`` tokens and ``(n, D)`` prototypes -> ``(B, n, D)``
    L2-normalised concept features.

    Keys and values are bias-free projections of the LayerNormed tokens, queries of the LayerNormed
    prototypes scaled by ``D^-1/2``; the attention is a softmax over the concepts, plus 1e-8, then
    L1-normalised over the tokens; the result plus the prototypes (residual), then plus a LayerNorm–MLP
    (``D -> D/2 -> D``) of itself."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_inputs, self.norm_templates, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, dim))
        self.scale = dim**-0.5

    def forward(self, tokens: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        x = self.norm_inputs(tokens)
        k, v = self.key(x), self.value(x)  # (B, N, D)
        q = self.query(self.norm_templates(prototypes)) * self.scale  # (n, D), the same for every sample
        attn = torch.einsum("nd,bld->bln", q, k).softmax(dim=-1) + 1e-8  # over concepts
        attn = attn / attn.sum(dim=1, keepdim=True)  # L1 over tokens
        c = torch.einsum("bld,bln->bnd", v, attn) + prototypes
        c = c + self.mlp(self.norm_mlp(c))
        return F.normalize(c, dim=-1)


class VCLModel(nn.Module):
    """The TimeSformer and VCL's heads as the original's ``GreatModel``: the five InfoNCE heads
    (:data:`HEADS`, Linear–ReLU–Linear); per stream type a concept MLP (Linear–BN–ReLU–Linear), prototypes
    and a reconstruction MLP (Linear–BN–ReLU–Linear on the raw prototype scores); one local-concept
    module. ``forward`` runs every parameter it trains."""

    def __init__(self, cfg: VCLConfig) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg.backbone)
        d, k = self.backbone.embed_dim, cfg.num_concepts
        self.num_concepts, self.concept_temp = k, cfg.concept_temp
        self.heads = nn.ModuleDict({h: _mlp([d, d, cfg.proj_dim]) for h in HEADS})
        self.concept_mlp = nn.ModuleDict({s: _mlp([d, d, d], norm=True) for s in KIND_STREAMS})
        self.prototypes = nn.ModuleDict({s: nn.Linear(d, 2 * k, bias=False) for s in KIND_STREAMS})
        self.reconstruct = nn.ModuleDict({s: _mlp([2 * k if s == "rgb" else k, d, d], norm=True) for s in KIND_STREAMS})
        self.local = LocalConcepts(d) if cfg.local_concepts else None

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        for layer in self.prototypes.values():
            layer.weight.copy_(F.normalize(layer.weight, dim=1))

    def forward(self, views: list[torch.Tensor], local: bool = False) -> dict[str, torch.Tensor]:
        """``feature`` (6, B, D) per stream (:data:`STREAMS` order); ``z`` (5, 2, B, P): each head of
        :data:`HEADS` on its two streams, L2-normalised; ``scores`` (6, B, 2K): prototype scores (cosines);
        ``reconstruction`` (6, B, D): each stream's feature rebuilt from its type's scores; with ``local``,
        ``local_<type>`` (2, B, n, D) per stream type: its two views' concept features (n: 2K, K, K)."""
        if len(views) != len(STREAMS):
            raise ValueError(f"VCLModel: expected {len(STREAMS)} streams ({', '.join(STREAMS)}), got {len(views)}")
        b, k = views[0].shape[0], self.num_concepts
        x = torch.cat(views)
        if local:
            dense = self.backbone.forward_features(x, dense=True)
            feats, tokens = dense.cls, dense.patches.flatten(1, 3)
        else:
            feats, tokens = self.backbone(x), None
        feats = feats.view(len(STREAMS), b, -1)
        result = {"feature": feats}
        result["z"] = torch.stack([F.normalize(self.heads[h](feats[list(s)]), dim=-1) for h, s in HEADS.items()])
        scores = [
            self.prototypes[kind](F.normalize(self.concept_mlp[kind](feats[i]), dim=-1)) for i, kind in enumerate(KINDS)
        ]
        result["scores"] = torch.stack(scores)
        rebuilt = []
        for kind, (i, j) in KIND_STREAMS.items():  # both views in one batch: BatchNorm over their 2B rows
            part = _concepts(kind, k)
            rebuilt.append(self.reconstruct[kind](torch.cat([scores[i][:, part], scores[j][:, part]])).view(2, b, -1))
            if local:
                assert self.local is not None and tokens is not None
                prototypes = self.prototypes[kind].weight[part]
                concepts = self.local(tokens[i * b : (j + 1) * b], prototypes)  # (2B, n, D)
                result[f"local_{kind}"] = concepts.view(2, b, *prototypes.shape)
        result["reconstruction"] = torch.cat(rebuilt)
        if self.local is not None and not local and in_process_group():  # DDP needs every parameter in the graph
            result["unused"] = sum(p.sum() for p in self.local.parameters()) * 0.0
        return result


def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of L2-normalised ``(B, P)`` rows over the global batch: the keys of every process are
    all-gathered (detached, :func:`~endofm.engine.all_gather_cat`); row i of this process's ``key`` is the
    positive of row i of ``query``, every other gathered row a negative; mean over this process's rows of
    ``−log softmax(q·k / τ)_i``. Under DDP the mean over processes is the loss of one process holding the
    whole batch, and so is the gradient of the queries."""
    keys = all_gather_cat(key)
    offset = dist.get_rank() * len(query) if in_process_group() else 0
    logits = query @ keys.t() / temperature
    return F.cross_entropy(logits, torch.arange(offset, offset + len(query), device=query.device))


def _neg_entropy(p: torch.Tensor) -> torch.Tensor:
    """Mean over rows of Σ p log p."""
    return (p * p.clamp_min(1e-12).log()).sum(-1).mean()


def local_match(local: torch.Tensor, scores: torch.Tensor, topk: int, margin: float) -> torch.Tensor:
    """The original's ``local_match`` for the two views of one stream type: ``local`` (2, B, n, D)
    L2-normalised concept features, ``scores`` (2, B, n) their (detached) prototype scores.

    A concept is present in a view above its ``topk + 1``-th highest score. For each ordered pair of
    views (query, key), concept c of sample i counts where it is present in both views of i; with the
    distance ``δ(i, j) = sqrt(2 − 2 q_ic·k_jc + 1e-5)`` (keys detached) it adds ``δ(i, i)²`` and
    ``Σ_{j≠i} relu(margin − δ(i, j))² / (B − 1)``. The sum over both orders is divided by
    1 + the number of counted (pair, sample, concept)."""
    b = local.shape[1]
    present = scores > scores.topk(topk + 1, dim=-1).values[..., -1:]  # (2, B, n)
    others = ~torch.eye(b, dtype=torch.bool, device=local.device)
    total, pairs = local.new_zeros(()), local.new_zeros(())
    for i, j in ((0, 1), (1, 0)):
        index = (present[i] & present[j]).to(local.dtype)  # (B, n)
        delta = (2 - 2 * torch.einsum("bnc,pnc->bpn", local[i], local[j].detach()) + 1e-5).sqrt()  # (B, B, n)
        positive = delta.diagonal(dim1=0, dim2=1).t().square() * index
        negative = F.relu(margin - delta).square() * others[:, :, None] * index[:, None, :]
        total = total + positive.sum() + negative.sum() / max(b - 1, 1)
        pairs = pairs + index.sum()
    return total / (pairs + 1)


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
        new = all_gather_cat(scores.detach().float(), dim=1)[:, : self.cfg.queue_length]
        n = new.shape[1]
        self.queue.copy_(torch.cat([new, self.queue[:, : self.cfg.queue_length - n]], dim=1))
        self.queue_filled.fill_(min(int(self.queue_filled) + n, self.cfg.queue_length))

    def swapped(self, q: torch.Tensor, scores: torch.Tensor, streams: tuple[int, ...]) -> torch.Tensor:
        """Mean over ordered pairs i ≠ j of ``streams`` of ``CE(q_i, softmax(scores_j / τ))``."""
        log_p = F.log_softmax(scores / self.cfg.concept_temp, dim=-1)
        terms = [-(q[i] * log_p[j]).sum(-1).mean() for i in streams for j in streams if i != j]
        return torch.stack(terms).mean()

    def forward(self, out: Mapping[str, torch.Tensor], epoch: int, local: bool) -> dict[str, torch.Tensor]:
        cfg, k = self.cfg, self.k
        with torch.autocast(device_type=out["z"].device.type, enabled=False):
            z, scores = out["z"].float(), out["scores"].float()
            fvv, fvs, fvd, fsv, fdv = z  # (2, B, P) each: the head on its two streams
            t = cfg.temperature
            nce_vv = (info_nce(fvv[0], fvv[1], t) + info_nce(fvv[1], fvv[0], t)) / 2
            nce_vs = (info_nce(fvs[0], fsv[1], t) + info_nce(fvs[1], fsv[0], t) + info_nce(fsv[0], fvs[1], t) + info_nce(fsv[1], fvs[0], t)) / 2  # fmt: skip
            nce_vd = (info_nce(fvd[0], fdv[1], t) + info_nce(fvd[1], fdv[0], t) + info_nce(fdv[0], fvd[1], t) + info_nce(fdv[1], fvd[0], t)) / 2  # fmt: skip
            q = self.targets(scores, epoch)
            concept = self.swapped(q[..., :k], scores[..., :k], (0, 1, 2, 3)) + self.swapped(
                q[..., k:], scores[..., k:], (0, 1, 4, 5)
            )
            p_static = (scores[..., :k] / cfg.concept_temp).softmax(-1)
            p_dynamic = (scores[..., k:] / cfg.concept_temp).softmax(-1)
            diversity = _neg_entropy(p_static[4:6]) + _neg_entropy(p_dynamic[2:4])
            cosine = F.cosine_similarity(out["reconstruction"].float(), out["feature"].detach().float(), dim=-1)
            fidelity = -cosine.view(3, -1).mean(1).sum()  # per stream type: minus the mean cosine of its 2B rows
            local_term = z.new_zeros(())
            if local:
                for kind, (i, j) in KIND_STREAMS.items():
                    part_scores = scores[i : j + 1, :, _concepts(kind, k)].detach()
                    local_term = local_term + local_match(
                        out[f"local_{kind}"].float(), part_scores, cfg.local_topk, cfg.local_margin
                    )
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
        return VCLDataset(clips, self.cfg.views, seed=self.cfg.seed, cache_mb=self.cfg.decode_cache_mb)

    def check(self) -> None:
        check_start(self.cfg.init, "pretrain init")

    def build_model(self) -> VCLModel:
        model = VCLModel(self.cfg)
        load_start(model.backbone, self.cfg.init, "pretrain init")
        return model

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
    "HEADS",
    "KINDS",
    "KIND_STREAMS",
    "SHARED_SETTINGS",
    "STREAMS",
    "LocalConcepts",
    "VCLConfig",
    "VCLDataset",
    "VCLLoss",
    "VCLModel",
    "VCLObjective",
    "VCLViewConfig",
    "dynamic_view",
    "info_nce",
    "local_match",
    "sample_clip_indices",
    "static_view",
]
