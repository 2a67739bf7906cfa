"""TimeSformer ViT with divided space-time attention, parameter-compatible with Endo-FM's backbone.

Layout and numerics follow the official ``models/timesformer.py`` as described in docs/original.md §1:
per block temporal attention -> spatial attention -> MLP, a CLS token repeated per frame for
spatial attention and averaged back, LayerNorm eps 1e-6, and ``pos_embed``/``time_embed``
resized at run time (nearest by default) for any grid and frame count. Parameter names equal the
official state dict, so the released teacher backbone loads strictly (see ``checkpoint.py``).

Tokens of a clip are ``[CLS] + patches ordered (h, w, t)``: space-major, time-minor.

``attention_type="space_only"`` (the official TimeSformer's option of that name) makes it an image
ViT run frame by frame: no temporal modules and no ``time_embed``, every frame its own CLS through
the blocks, the clip's CLS the mean of the frames' CLS before the final norm. With ``pre_norm``,
``act_layer="quick_gelu"``, ``norm_eps=1e-5`` and ``patch_bias=False`` (preset
``vit_base_patch16_clip``) it is CLIP's image tower, parameter names as timm's ``vit_base_patch16_clip_*``.

Layer: data and models (docs/architecture.md). May import: foundation and the other models modules.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, NamedTuple, overload

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from endofm.config import check_fields, setting
from endofm.models.layers import DropPath, Mlp, QuickGELU, trunc_normal_

AttentionKind = Literal["sdpa", "explicit"]
GridInterp = Literal["nearest", "bilinear", "bicubic"]
TimeInterp = Literal["nearest", "linear"]
AttentionType = Literal["divided_space_time", "space_only"]
ActLayer = Literal["gelu", "quick_gelu"]

#: Size presets. ``vit_base_patch16`` is the official Endo-FM backbone; the patch-8 sizes are for CPU runs.
PRESETS: dict[str, dict[str, int | float]] = {
    "vit_base_patch16": dict(
        img_size=224,
        num_frames=8,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        drop_path_rate=0.1,
    ),
    "vit_small_patch16": dict(
        img_size=224,
        num_frames=8,
        patch_size=16,
        embed_dim=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4.0,
        drop_path_rate=0.1,
    ),
    # ~0.6 M parameters: the size measured in CPU_BUDGET.md (2 cores, minutes of pretraining).
    "vit_tiny_patch8": dict(
        img_size=64,
        num_frames=4,
        patch_size=8,
        embed_dim=96,
        depth=4,
        num_heads=3,
        mlp_ratio=4.0,
        drop_path_rate=0.1,
    ),
    # CLIP's ViT-B/16 image tower (OpenAI weights, timm's ``vit_base_patch16_clip_quickgelu_224``), per frame.
    "vit_base_patch16_clip": dict(
        img_size=224,
        num_frames=1,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
        attention_type="space_only",
        pre_norm=True,
        act_layer="quick_gelu",
        norm_eps=1e-5,
        patch_bias=False,
    ),
    # For unit tests only.
    "vit_micro_patch8": dict(
        img_size=32,
        num_frames=4,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        drop_path_rate=0.0,
    ),
}

_SIZE_FIELDS = tuple(PRESETS["vit_base_patch16"])
#: Architecture fields: a preset may set them; left ``None`` they take these values (the TimeSformer's).
_ARCH_DEFAULTS: dict[str, object] = dict(
    attention_type="divided_space_time", pre_norm=False, act_layer="gelu", norm_eps=1e-6, patch_bias=True
)


@dataclasses.dataclass
class BackboneConfig:
    """Backbone settings. Size fields left ``None`` are filled from the preset ``name``.

    ``img_size``/``num_frames`` fix the stored ``pos_embed``/``time_embed`` sizes only; inputs of
    other sizes are handled by resizing them at run time with ``pos_interp`` (spatial grid) and
    ``time_interp`` (frames). The official model uses ``nearest`` for both.

    Architecture fields left ``None`` come from the preset, else from the TimeSformer's values:
    ``attention_type`` (``space_only``: a per-frame image ViT, see the module docstring), ``pre_norm``
    (a LayerNorm ``norm_pre`` after the embeddings), ``act_layer`` of the MLP, ``norm_eps`` of every
    LayerNorm, ``patch_bias`` of the patch projection.
    """

    name: str = setting(
        "vit_base_patch16",
        f"Preset ({', '.join(PRESETS)}; vit_base_patch16 is the official ViT-B/16), or a name of your own that "
        "sets every size field",
    )
    img_size: int | None = setting(
        None,
        "Frame size the stored pos_embed grid is sized for (null: the preset's); other sizes resize it at run time",
        minimum=1,
    )
    num_frames: int | None = setting(
        None, "Frame count the stored time_embed is sized for (null: the preset's)", minimum=1
    )
    patch_size: int | None = setting(None, "Patch side in pixels (null: the preset's)", minimum=1)
    embed_dim: int | None = setting(None, "Token width (null: the preset's)", minimum=1)
    depth: int | None = setting(None, "Number of divided space-time blocks (null: the preset's)", minimum=1)
    num_heads: int | None = setting(None, "Attention heads per block (null: the preset's)", minimum=1)
    mlp_ratio: float | None = setting(None, "MLP hidden width / embed_dim (null: the preset's)", exclusive_minimum=0)
    drop_path_rate: float | None = setting(
        None,
        "Stochastic depth of the last block, linear from 0 over depth (null: the preset's)",
        minimum=0,
        exclusive_maximum=1,
    )
    pos_interp: GridInterp = setting(
        "nearest", "How pos_embed is resized to another patch grid (the original: nearest)"
    )
    time_interp: TimeInterp = setting(
        "nearest", "How time_embed is resized to another frame count (the original: nearest)"
    )
    attention: AttentionKind = setting(
        "sdpa", "sdpa: PyTorch's fused attention; explicit: softmax(q k^T) v as the original (same weights)"
    )
    grad_checkpointing: bool = setting(
        False, "Recompute each block in the backward pass (less memory, ~30% more compute)"
    )
    attention_type: AttentionType | None = setting(
        None, "space_only: a per-frame image ViT (ST-Adapter, CLIP); null: from the preset"
    )
    pre_norm: bool | None = setting(None, "LayerNorm norm_pre after the embeddings (CLIP); null: from the preset")
    act_layer: ActLayer | None = setting(None, "MLP activation (CLIP: quick_gelu); null: from the preset")
    norm_eps: float | None = setting(
        None, "LayerNorm eps (TimeSformer 1e-6, CLIP 1e-5); null: from the preset", exclusive_minimum=0
    )
    patch_bias: bool | None = setting(None, "Bias of the patch projection (CLIP: false); null: from the preset")

    def __post_init__(self) -> None:
        check_fields(self)
        preset = PRESETS.get(self.name)
        for f, default in _ARCH_DEFAULTS.items():
            if getattr(self, f) is None:
                setattr(self, f, (preset or {}).get(f, default))
        unset = [f for f in _SIZE_FIELDS if getattr(self, f) is None]
        if preset is None and unset:
            raise ValueError(
                f"backbone {self.name!r} is not a preset ({', '.join(PRESETS)}); "
                f"a custom backbone must set {', '.join(unset)}"
            )
        for f in unset:
            setattr(self, f, preset[f])
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def space_only(self) -> bool:
        return self.attention_type == "space_only"


class DenseFeatures(NamedTuple):
    """Normalised outputs for dense heads: ``cls`` (B, C) and ``patches`` (B, T, H/p, W/p, C)."""

    cls: torch.Tensor
    patches: torch.Tensor


class Attention(nn.Module):
    """Multi-head self-attention; ``qkv`` rows are laid out (3, heads, head_dim) as in the original."""

    def __init__(self, dim: int, num_heads: int, attention: AttentionKind = "sdpa") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attention = attention
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu"):
            # bf16 autocast on the CPU: PyTorch's bf16 SDPA kernel there is several times slower than its fp32
            # one, and explicit bf16 attention is faster than both. The softmax kernel computes in fp32 and
            # rounds once to bf16 (docs/decisions.md: Pretraining throughput).
            x = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        elif self.attention == "sdpa":
            # SDPA's default scale is head_dim ** -0.5, the original's scale.
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


_ACT_LAYERS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


class Block(nn.Module):
    """Divided space-time block: temporal attention, then spatial attention, then MLP (all pre-norm).

    With ``space_only`` it is a plain ViT block (attention, then MLP) without the temporal modules.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path: float,
        attention: AttentionKind = "sdpa",
        *,
        space_only: bool = False,
        act_layer: ActLayer = "gelu",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.space_only = space_only
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, attention)
        if not space_only:
            self.temporal_norm1 = nn.LayerNorm(dim, eps=norm_eps)
            self.temporal_attn = Attention(dim, num_heads, attention)
            self.temporal_fc = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=_ACT_LAYERS[act_layer])

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """``x``: (B, 1 + N·T, C) with patches ordered (n, t); returns the same shape.

        ``space_only``: ``x`` is (B·T, 1 + N, C), one image per row, and ``frames`` is not used.
        """
        if self.space_only:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        b, length, c = x.shape
        t = frames
        n = (length - 1) // t
        cls, patches = x[:, :1], x[:, 1:]

        # Temporal attention over the T tokens of each spatial location; no CLS. Like the original,
        # drop_path here acts on the regrouped batch (B·N), i.e. per location rather than per clip.
        xt = patches.reshape(b * n, t, c)
        res = self.drop_path(self.temporal_attn(self.temporal_norm1(xt)))
        patches = patches + self.temporal_fc(res.reshape(b, n * t, c))

        # Spatial attention per frame, with the block's input CLS repeated for every frame (batch B·T).
        xs = patches.reshape(b, n, t, c).transpose(1, 2).reshape(b * t, n, c)
        xs = torch.cat([cls.repeat_interleave(t, dim=0), xs], dim=1)
        res = self.drop_path(self.attn(self.norm1(xs)))
        res_cls = res[:, :1].reshape(b, t, c).mean(dim=1, keepdim=True)  # averaged over frames
        res_patches = res[:, 1:].reshape(b, t, n, c).transpose(1, 2).reshape(b, n * t, c)
        x = torch.cat([cls + res_cls, patches + res_patches], dim=1)

        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Per-frame non-overlapping patch projection (Conv2d, kernel = stride = patch size)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B·T, 3, H, W) -> (B·T, H/p · W/p, C), patches row-major."""
        return self.proj(x).flatten(2).transpose(1, 2)


def check_video(x: torch.Tensor, multiple: int, what: str = "", who: str = "") -> tuple[int, int, int, int]:
    """(B, T, H, W) of a (B, 3, T, H, W) clip whose H and W are positive multiples of ``multiple``
    (``what`` names it in the error, ``who`` prefixes it); ValueError otherwise."""
    prefix = f"{who}: " if who else ""
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"{prefix}expected a clip of shape (B, 3, T, H, W), got {tuple(x.shape)}")
    b, _, t, h, w = x.shape
    if t < 1 or h < multiple or w < multiple or h % multiple or w % multiple:
        raise ValueError(
            f"{prefix}expected T >= 1 and H, W positive multiples of {f'{what} ' if what else ''}{multiple}, "
            f"got T={t}, H={h}, W={w}"
        )
    return b, t, h, w


class TimeSformer(nn.Module):
    """Divided space-time ViT backbone (no classifier head), or a per-frame image ViT (``space_only``).

    Input (B, 3, T, H, W) for any T >= 1 and H, W multiples of the patch size. ``forward`` returns
    the CLS embedding after the final LayerNorm (B, C); ``forward_features`` returns all tokens or,
    with ``dense=True``, the CLS and the patch grid (B, T, H/p, W/p, C). ``space_only``: the frames
    run as a batch of images; the clip's CLS is the final norm of the mean of the frames' CLS tokens
    (as the official ``space_only`` and ST-Adapter), and the patch grid keeps every frame.
    """

    def __init__(self, config: BackboneConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else BackboneConfig()
        self.config = cfg
        self.patch_size = cfg.patch_size
        self.embed_dim = self.num_features = cfg.embed_dim
        self.grid_size = cfg.img_size // cfg.patch_size
        self.grad_checkpointing = cfg.grad_checkpointing

        self.space_only = cfg.space_only

        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim, bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size**2, cfg.embed_dim))
        if not self.space_only:
            self.time_embed = nn.Parameter(torch.zeros(1, cfg.num_frames, cfg.embed_dim))
        self.norm_pre = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear 0 -> rate
        self.blocks = nn.ModuleList(
            Block(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                rate,
                cfg.attention,
                space_only=self.space_only,
                act_layer=cfg.act_layer,
                norm_eps=cfg.norm_eps,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The original's init: Linear trunc_normal(0.02)/0, LayerNorm 1/0, cls/pos trunc_normal(0.02),
        ``time_embed`` 0, patch conv left at PyTorch's default, and every ``temporal_fc`` zeroed."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if not self.space_only:
            nn.init.zeros_(self.time_embed)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The original meant to skip block 0 (loop guard `i > 0`), but index 0 is the ModuleList
        # container, so every block's temporal branch starts as a no-op. Reproduced deliberately.
        for blk in self.blocks:
            if not blk.space_only:
                nn.init.zeros_(blk.temporal_fc.weight)
                nn.init.zeros_(blk.temporal_fc.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"} | (set() if self.space_only else {"time_embed"})

    @property
    def attention(self) -> AttentionKind:
        return self.blocks[0].attn.attention

    def set_attention(self, kind: AttentionKind) -> None:
        """Switch every attention layer between SDPA and the explicit softmax path."""
        if kind not in AttentionKind.__args__:
            raise ValueError(f"attention must be one of {list(AttentionKind.__args__)}, got {kind!r}")
        for m in self.modules():
            if isinstance(m, Attention):
                m.attention = kind

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward (saves activation memory, ~30% more compute)."""
        self.grad_checkpointing = enable

    def _check_input(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        b, t, h, w = check_video(x, self.patch_size, "the patch size")
        return b, t, h // self.patch_size, w // self.patch_size

    def interpolate_pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """``pos_embed`` for a (gh, gw) patch grid: (1, 1 + gh·gw, C); the CLS slot is kept as is."""
        if (gh, gw) == (self.grid_size, self.grid_size):
            return self.pos_embed
        return resize_pos_embed(self.pos_embed, (gh, gw), self.config.pos_interp)

    def interpolate_time_embed(self, frames: int) -> torch.Tensor:
        """``time_embed`` for ``frames`` frames: (1, T, C)."""
        if frames == self.time_embed.shape[1]:
            return self.time_embed
        return resize_time_embed(self.time_embed, frames, self.config.time_interp)

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
        """Embed a clip: (B, 1 + gh·gw·T, C) with patches ordered (h, w, t); ``space_only``: one
        image per frame, (B·T, 1 + gh·gw, C), each with its CLS."""
        b, t, gh, gw = self._check_input(x)
        x = self.patch_embed(x.transpose(1, 2).flatten(0, 1))  # (B·T, N, C)
        pos = self.interpolate_pos_embed(gh, gw)
        x = x + pos[:, 1:]
        if self.space_only:
            cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
            return self.norm_pre(torch.cat([cls, x], dim=1)), t, gh, gw
        n, c = x.shape[1], x.shape[2]
        x = x.reshape(b, t, n, c).transpose(1, 2) + self.interpolate_time_embed(t).unsqueeze(1)  # (B, N, T, C)
        cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)  # identical for every frame; no time embedding
        return self.norm_pre(torch.cat([cls, x.reshape(b, n * t, c)], dim=1)), t, gh, gw

    def _run_block(self, index: int, x: torch.Tensor, t: int, gh: int, gw: int) -> torch.Tensor:
        return self.blocks[index](x, t)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
        x, t, gh, gw = self._tokens(x)
        for i in range(len(self.blocks)):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(self._run_block, i, x, t, gh, gw, use_reentrant=False)
            else:
                x = self._run_block(i, x, t, gh, gw)
        if self.space_only:
            x = frames_to_clip(x, t)
        return self.norm(x), t, gh, gw

    @overload
    def forward_features(self, x: torch.Tensor, dense: Literal[False] = False) -> torch.Tensor: ...
    @overload
    def forward_features(self, x: torch.Tensor, dense: Literal[True]) -> DenseFeatures: ...

    def forward_features(self, x: torch.Tensor, dense: bool = False) -> torch.Tensor | DenseFeatures:
        """All normalised tokens (B, 1 + N·T, C) in (h, w, t) order (the original's ``get_all``),
        or with ``dense=True`` a :class:`DenseFeatures` of cls (B, C) and patches (B, T, H/p, W/p, C)."""
        x, t, gh, gw = self._encode(x)
        if not dense:
            return x
        patches = x[:, 1:].reshape(x.shape[0], gh, gw, t, x.shape[-1]).permute(0, 3, 1, 2, 4)
        return DenseFeatures(cls=x[:, 0], patches=patches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CLS embedding after the final LayerNorm: (B, C)."""
        return self._encode(x)[0][:, 0]


def frames_to_clip(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Per-frame tokens (B·T, 1 + N, C) -> clip tokens (B, 1 + N·T, C): the mean of the frames' CLS,
    then the patches ordered (n, t)."""
    bt, length, c = x.shape
    b, n = bt // frames, length - 1
    cls = x[:, 0].reshape(b, frames, c).mean(dim=1, keepdim=True)
    patches = x[:, 1:].reshape(b, frames, n, c).transpose(1, 2).reshape(b, n * frames, c)
    return torch.cat([cls, patches], dim=1)


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], mode: GridInterp = "nearest") -> torch.Tensor:
    """Resize the square patch grid of a (1, 1 + g², C) ``pos_embed`` to ``grid``; the CLS slot is kept.

    Returns a new tensor; the input is not modified.
    """
    n = pos_embed.shape[1] - 1
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"pos_embed has {n} patch positions, not a square grid")
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    if (g, g) != tuple(grid):
        c = pos_embed.shape[-1]
        patches = patches.transpose(1, 2).reshape(1, c, g, g)
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        patches = F.interpolate(patches, size=tuple(grid), mode=mode, **kwargs).flatten(2).transpose(1, 2)
    return torch.cat([cls, patches], dim=1)


def resize_time_embed(time_embed: torch.Tensor, frames: int, mode: TimeInterp = "nearest") -> torch.Tensor:
    """Resize a (1, T0, C) ``time_embed`` to ``frames`` along time; returns a new tensor."""
    if time_embed.shape[1] == frames:
        return time_embed.clone()
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(time_embed.transpose(1, 2), size=frames, mode=mode, **kwargs).transpose(1, 2)


def build_backbone(name: str | BackboneConfig = "vit_base_patch16", **overrides) -> TimeSformer:
    """Build a backbone from a preset name or a :class:`BackboneConfig`, with field overrides."""
    if isinstance(name, BackboneConfig):
        cfg = dataclasses.replace(name, **overrides)
    else:
        if name not in PRESETS:
            raise ValueError(f"unknown backbone {name!r}; presets: {', '.join(PRESETS)}")
        cfg = BackboneConfig(name=name, **overrides)
    return TimeSformer(cfg)
