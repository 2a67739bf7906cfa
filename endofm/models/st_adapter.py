"""ST-Adapter (Pan et al., NeurIPS 2022): a frozen image ViT run frame by frame, with trainable
spatio-temporal adapters (docs/original.md §7.2).

Adapter: ``fc1`` Linear C→r, the patch tokens reshaped to (B, r, T, h, w), a depth-wise ``conv``
Conv3d of kernel (k_t, 1, 1) with padding (k_t // 2, 0, 0), ``fc2`` Linear r→C, no activation,
added to the patch tokens only (the CLS is untouched). ``conv`` weight and bias and both Linear
biases start at zero, the Linear weights keep PyTorch's default init, so at initialisation every
adapter adds exactly zero and the model equals its image backbone bit for bit.

Placement on the residual stream (outside the LayerNorm branches): ``12x384`` one adapter before the
MLP of every block (the original's Kinetics-400 configuration), ``24x384`` one before the attention
and one before the MLP (its Something-Something v2 configuration).

Trainable parameters of one adapter, C = 768, r = 384, k_t = 3:
``fc1`` 768·384 + 384 = 295,296; ``conv`` 384·3 + 384 = 1,536; ``fc2`` 384·768 + 768 = 295,680;
in all (2·C + k_t + 1)·r + C = 592,512. ViT-B/16 ``12x384``: 12 · 592,512 = 7,110,144;
``24x384``: 14,220,288. The image backbone (86 M) never trains; the task head does.

The image backbone is a :class:`~endofm.models.vit.TimeSformer` with ``attention_type="space_only"``
(for CLIP weights the preset ``vit_base_patch16_clip``, which a CLIP file selects:
:func:`~endofm.models.checkpoint.file_backbone`), so the clip's CLS is the final norm of the
mean over frames of the per-frame CLS (the original's head input), and the dense tasks get the patch
grid (B, T, h, w, C) like the TimeSformer's. Differences from the original: the frozen weights stay in
the model's dtype (the original casts them to fp16), and the backbone's stochastic depth is never
applied (the original's CLIP blocks have none).

Normalisation: CLIP's weights expect CLIP's pixel normalisation (:data:`CLIP_MEAN`, :data:`CLIP_STD`). With
``normalization="clip"`` the backbone takes ImageNet-normalised RGB, what every task's ``imagenet`` option
feeds, and turns it into CLIP's with a fixed per-channel affine (:class:`Renormalize`) before the patch
embedding, so the tasks need no CLIP option: ``(x·s_in + m_in − m_clip) / s_clip``, exact.

Layer: data and models (docs/architecture.md). May import: foundation and the other models modules.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from endofm.config import ConfigError, check_fields, setting
from endofm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from endofm.models.checkpoint import LoadReport, load_backbone
from endofm.models.vit import BackboneConfig, TimeSformer

AdapterLayout = Literal["12x384", "24x384"]
#: Layout -> (adapter before attention, adapter before MLP) in every block.
PLACEMENTS: dict[str, tuple[bool, bool]] = {"12x384": (False, True), "24x384": (True, True)}
ADAPTER_PREFIX = "adapters."
#: CLIP's pixel normalisation (OpenAI's ``clip`` preprocessing), which CLIP weights expect.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: ``normalization``: ``task`` takes the task's input as it is; ``clip`` converts ImageNet-normalised RGB to CLIP's.
Normalization = Literal["task", "clip"]


@dataclass
class AdapterConfig:
    """ST-Adapter settings: ``layout`` (where the adapters sit, see the module docstring), the
    ``bottleneck`` width r and the temporal kernel size ``kernel_t`` (odd, so the output keeps T)."""

    layout: AdapterLayout = setting(
        "12x384", "12x384: one adapter before the MLP of every block; 24x384: before attention and MLP"
    )
    bottleneck: int = setting(384, "Adapter width r (384 for ViT-B)", minimum=1)
    kernel_t: int = setting(3, "Temporal kernel of the depth-wise convolution (odd, so the output keeps T)", minimum=1)

    def __post_init__(self) -> None:
        check_fields(self, "adapter")
        if self.kernel_t % 2 == 0:
            raise ConfigError(f"adapter.kernel_t must be odd (the padding keeps T), got {self.kernel_t}")


def adapter_parameter_count(dim: int, bottleneck: int, kernel_t: int) -> int:
    """Parameters of one adapter: fc1 (dim·r + r) + depth-wise conv (r·k_t + r) + fc2 (r·dim + dim)."""
    return (dim * bottleneck + bottleneck) + (bottleneck * kernel_t + bottleneck) + (bottleneck * dim + dim)


class Adapter(nn.Module):
    """fc1 -> depth-wise Conv3d over (T, h, w) -> fc2 on the patch tokens, added residually; CLS untouched."""

    def __init__(self, dim: int, bottleneck: int = 384, kernel_t: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, bottleneck)
        self.conv = nn.Conv3d(
            bottleneck, bottleneck, (kernel_t, 1, 1), padding=(kernel_t // 2, 0, 0), groups=bottleneck
        )
        self.fc2 = nn.Linear(bottleneck, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The original's init: Linear weights PyTorch's default, conv weight/bias and Linear biases zero."""
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()
        for t in (self.conv.weight, self.conv.bias, self.fc1.bias, self.fc2.bias):
            nn.init.zeros_(t)

    def forward(self, x: torch.Tensor, frames: int, grid: tuple[int, int]) -> torch.Tensor:
        """``x``: per-frame tokens (B·T, 1 + h·w, C), frames of a clip consecutive; returns the same shape."""
        bt, length, c = x.shape
        gh, gw = grid
        y = self.fc1(x[:, 1:])
        r = y.shape[-1]
        y = y.reshape(bt // frames, frames, gh, gw, r).permute(0, 4, 1, 2, 3)  # (B, r, T, h, w)
        y = self.conv(y).permute(0, 2, 3, 4, 1).reshape(bt, length - 1, r)
        return torch.cat([x[:, :1], x[:, 1:] + self.fc2(y)], dim=1)


class Renormalize(nn.Module):
    """Per-channel affine from one normalisation to another on (B, 3, T, H, W) clips: pixels normalised
    with (``mean_in``, ``std_in``) become pixels normalised with (``mean_out``, ``std_out``). The buffers
    are not saved (they are constants of the backbone's construction)."""

    def __init__(self, mean_in, std_in, mean_out, std_out) -> None:
        super().__init__()
        m_in, s_in, m_out, s_out = (torch.tensor(v, dtype=torch.float32) for v in (mean_in, std_in, mean_out, std_out))
        self.register_buffer("scale", (s_in / s_out).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("shift", ((m_in - m_out) / s_out).view(1, 3, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


class BlockAdapters(nn.Module):
    """The adapters of one block: ``pre_attn`` and/or ``pre_mlp`` (absent ones are not registered)."""

    def __init__(self, dim: int, cfg: AdapterConfig) -> None:
        super().__init__()
        pre_attn, pre_mlp = PLACEMENTS[cfg.layout]
        self.pre_attn = Adapter(dim, cfg.bottleneck, cfg.kernel_t) if pre_attn else None
        self.pre_mlp = Adapter(dim, cfg.bottleneck, cfg.kernel_t) if pre_mlp else None


class STAdapterBackbone(TimeSformer):
    """A per-frame image ViT (``attention_type="space_only"``) with ST-Adapters, or without (``adapter=None``,
    the frozen-backbone mode); the backbone interface of :class:`~endofm.models.vit.TimeSformer`.

    ``forward`` -> CLS (B, C); ``forward_features`` -> all tokens (B, 1 + N·T, C) in (h, w, t) order, or with
    ``dense=True`` :class:`~endofm.models.vit.DenseFeatures` (cls (B, C), patches (B, T, h, w, C)). The image
    ViT's parameters keep their names (``patch_embed.*``, ``blocks.{i}.*``, ``norm.*``, ...); the adapters are
    ``adapters.{i}.pre_attn.*`` / ``adapters.{i}.pre_mlp.*``. :meth:`adapter_parameters` is what trains;
    :meth:`freeze_backbone` stops gradients everywhere else.
    """

    def __init__(
        self, config: BackboneConfig, adapter: AdapterConfig | None = None, normalization: Normalization = "task"
    ) -> None:
        if normalization not in ("task", "clip"):
            raise ConfigError(f"ST-Adapter normalization must be 'task' or 'clip', got {normalization!r}")
        if not config.space_only:
            raise ConfigError(
                f"ST-Adapter needs an image ViT: backbone.attention_type must be 'space_only', "
                f"got {config.attention_type!r}"
            )
        super().__init__(config)
        self.adapter_config = adapter
        if adapter is not None:
            self.adapters = nn.ModuleList(BlockAdapters(config.embed_dim, adapter) for _ in range(config.depth))
        else:
            self.adapters = None
        self.normalization = normalization
        self.renormalize = (
            Renormalize(IMAGENET_MEAN, IMAGENET_STD, CLIP_MEAN, CLIP_STD) if normalization == "clip" else nn.Identity()
        )

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
        return super()._tokens(self.renormalize(x))

    @torch.no_grad()
    def init_weights(self) -> None:
        """The image ViT's init, then the adapters' (zero residuals)."""
        super().init_weights()
        for m in self.modules():
            if isinstance(m, Adapter):
                m.reset_parameters()

    def _run_block(self, index: int, x: torch.Tensor, t: int, gh: int, gw: int) -> torch.Tensor:
        # The block's two residual steps with the adapters before them; no stochastic depth in the frozen ViT.
        blk = self.blocks[index]
        ad = self.adapters[index] if self.adapters is not None else None
        if ad is not None and ad.pre_attn is not None:
            x = ad.pre_attn(x, t, (gh, gw))
        x = x + blk.attn(blk.norm1(x))
        if ad is not None and ad.pre_mlp is not None:
            x = ad.pre_mlp(x, t, (gh, gw))
        return x + blk.mlp(blk.norm2(x))

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The parameters that train in ``full`` mode (empty without adapters)."""
        return [] if self.adapters is None else list(self.adapters.parameters())

    def image_parameters(self) -> list[nn.Parameter]:
        """The image ViT's parameters: frozen in every mode."""
        adapters = {id(p) for p in self.adapter_parameters()}
        return [p for p in self.parameters() if id(p) not in adapters]

    def freeze_backbone(self) -> STAdapterBackbone:
        """Only the adapters require gradients from now on; returns ``self``."""
        for p in self.image_parameters():
            p.requires_grad_(False)
        for p in self.adapter_parameters():
            p.requires_grad_(True)
        return self


def build_st_adapter(
    backbone: BackboneConfig, adapter: AdapterConfig | None = None, normalization: Normalization = "task"
) -> STAdapterBackbone:
    """An :class:`STAdapterBackbone` on the image ViT ``backbone`` (``attention_type: space_only``), with
    ``adapter`` (None: no adapters, the frozen mode) and ``normalization``, its image ViT already frozen."""
    return STAdapterBackbone(backbone, adapter, normalization).freeze_backbone()


def load_image_backbone(
    model: STAdapterBackbone,
    path_or_dict: str | os.PathLike | Mapping[str, Any],
    *,
    which: str = "teacher",
    trusted: bool = False,
    source: str | None = None,
) -> LoadReport:
    """Load image-ViT weights into ``model``, strictly except for the adapters (which keep their init).

    Reads every layout :func:`~endofm.models.checkpoint.load_backbone` does: our ``backbone.pt`` or training
    checkpoint of a ``space_only`` ViT, a timm ``vit_base_patch16_clip_*`` state dict (``norm_pre``, no patch
    bias; its ``head.*`` set aside), or OpenAI/OpenCLIP CLIP weights (``visual.*``, e.g. the
    ``clip_vitb16`` download's ``open_clip_model.safetensors``; the text tower set aside).
    """
    return load_backbone(
        model, path_or_dict, which=which, trusted=trusted, skip_missing=(ADAPTER_PREFIX,), source=source
    )
