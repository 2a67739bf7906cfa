"""Polyp segmentation on the Endo-FM backbone (CVC-12k, docs/original.md §4.2): TransUNet and a light decoder.

Two decoders share one interface, :class:`SegmentationModel` (video (B, 3, T, H, W) -> logits (B, T, K, H, W)):

- ``"transunet"``: the official model (:class:`TransUNet`). A ResNetV2 stem (StdConv + GroupNorm) with skip
  features, a 1×1 patch embedding with its own ``position_embeddings``, then the backbone's ``blocks``, ``norm``
  and ``cls_token`` over the tokens of all frames of a sequence (time = the sequence's frames), then
  TransUNet's DecoderCup and a 3×3 head. As in the original, the backbone's ``patch_embed``, ``pos_embed`` and
  ``time_embed`` are **not used**: the tokens carry no time embedding and the CLS no position embedding.
- ``"light"``: the backbone as is (``forward_features(dense=True)``) and :class:`LightDecoder`, a small
  progressive-upsampling conv decoder per frame.

:func:`segmentation_loss` is the official objective: 0.5·cross-entropy + 0.5·TransUNet's soft Dice.

Layer: data and models (docs/architecture.md). May import: foundation and the other models modules.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from endofm.config import check_fields, setting
from endofm.models.vit import BackboneConfig, GridInterp, TimeSformer, build_backbone, check_video, resize_pos_embed

DecoderKind = Literal["transunet", "light"]

#: Total stride of the TransUNet stem (root conv 2, max-pool 2, block2 2, block3 2); the patch embedding is 1×1.
TRANSUNET_STRIDE = 16


# ---------------------------------------------------------------------------------------------------- loss


def segmentation_loss(
    logits: torch.Tensor, masks: torch.Tensor, ce_weight: float = 0.5, dice_weight: float = 0.5
) -> torch.Tensor:
    """``ce_weight``·cross-entropy + ``dice_weight``·soft Dice loss, the CVC recipe (docs/original.md §4.2).

    ``logits`` (N, K, H, W) and ``masks`` (N, H, W) of class ids in [0, K); (B, T, K, H, W) with (B, T, H, W)
    is flattened to frames first. The Dice term is TransUNet's ``DiceLoss(softmax=True)``: per class k over the
    whole batch, ``D_k = (2·Σ p·y + 1e-5) / (Σ p² + Σ y² + 1e-5)`` with softmax probabilities p and one-hot y
    (note the *squared* probabilities in the denominator, TransUNet's ``utils.DiceLoss``), and the loss is the mean over all K classes,
    background included, of ``1 - D_k``. Cross-entropy is the mean over pixels.
    """
    if logits.ndim == 5 and masks.ndim == 4:
        logits, masks = logits.flatten(0, 1), masks.flatten(0, 1)
    if logits.ndim != 4 or not logits.is_floating_point():
        raise ValueError(
            f"segmentation_loss: logits must be float (N, K, H, W), got {logits.dtype} {tuple(logits.shape)}"
        )
    if masks.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"segmentation_loss: masks must have shape (N, H, W) = {tuple(logits.shape[:1] + logits.shape[2:])}, "
            f"got {tuple(masks.shape)}"
        )
    if masks.is_floating_point() or masks.is_complex() or masks.dtype == torch.bool:
        raise TypeError(f"segmentation_loss: masks must hold integer class ids, got {masks.dtype}")
    k = logits.shape[1]
    masks = masks.long()
    lo, hi = (int(masks.min()), int(masks.max())) if masks.numel() else (0, 0)
    if lo < 0 or hi >= k:
        raise ValueError(f"segmentation_loss: mask values must be class ids in [0, {k}), got values in [{lo}, {hi}]")
    ce = F.cross_entropy(logits, masks)
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(masks, k).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    smooth = 1e-5
    inter = (probs * onehot).sum(dims)
    dice = (2 * inter + smooth) / ((probs * probs).sum(dims) + onehot.sum(dims) + smooth)  # y² = y for one-hot
    return ce_weight * ce + dice_weight * (1.0 - dice).mean()


# ---------------------------------------------------------------------------------------------- shared bits


def _group_norm(channels: int, groups: int, eps: float = 1e-6) -> nn.GroupNorm:
    # The original always uses 32 groups; the gcd keeps narrow (test-size) stems valid and equals 32 at paper widths.
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=eps)


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    # nn.UpsamplingBilinear2d(scale_factor=2), TransUNet's choice, is bilinear with align_corners=True.
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


# ------------------------------------------------------------------------------------------------ TransUNet


@dataclasses.dataclass
class TransUNetConfig:
    """TransUNet settings; defaults are the official ``R50-ViT-B_16`` at 224² (docs/original.md §4.2).

    ``img_size`` fixes the stored ``position_embeddings`` grid (``img_size / 16`` squared); other input sizes
    resize it at run time with ``pos_interp`` (the original never resizes: it always runs at 224²).
    ``stem_width``/``stem_units`` size the ResNetV2 stem (paper: 64, (3, 4, 9)); its stage widths are
    (w, 4w, 8w, 16w). ``gn_groups`` GroupNorm groups (capped to divide the channels). ``head_channels`` is
    ``conv_more``'s output; ``decoder_channels`` the four ×2 decoder stages; ``n_skip`` (0-3) how many stem
    features (8w at 1/8, 4w at 1/4, w at 1/2) are concatenated into the first decoder stages. ``dropout`` acts on
    the embeddings (TransUNet's ``transformer.dropout_rate``).
    """

    img_size: int = setting(
        224,
        f"Input size the stored position_embeddings grid is sized for (a multiple of {TRANSUNET_STRIDE})",
        minimum=1,
        multiple_of=TRANSUNET_STRIDE,
    )
    stem_width: int = setting(64, "ResNetV2 stem base width (stages w, 4w, 8w, 16w)", minimum=1)
    stem_units: tuple[int, int, int] = setting((3, 4, 9), "ResNetV2 units per stage", each=dict(minimum=1))
    gn_groups: int = setting(32, "GroupNorm groups of the stem (capped to divide the channels)", minimum=1)
    head_channels: int = setting(512, "Output channels of conv_more", minimum=1)
    decoder_channels: tuple[int, int, int, int] = setting(
        (256, 128, 64, 16), "Channels of the four x2 decoder stages", each=dict(minimum=1)
    )
    n_skip: int = setting(3, "Stem features concatenated into the decoder (0-3)", minimum=0, maximum=3)
    dropout: float = setting(0.1, "Dropout on the embeddings", minimum=0, exclusive_maximum=1)
    pos_interp: GridInterp = setting(
        "nearest", "How position_embeddings are resized to other input sizes (the original never resizes)"
    )

    def __post_init__(self) -> None:
        self.stem_units = tuple(self.stem_units)
        self.decoder_channels = tuple(self.decoder_channels)
        check_fields(self)

    @classmethod
    def tiny(cls, **overrides) -> TransUNetConfig:
        """A CPU-test size: 64² grid, stem width 8 with one unit per stage, narrow decoder."""
        settings = dict(
            img_size=64, stem_width=8, stem_units=(1, 1, 1), head_channels=32, decoder_channels=(32, 16, 8, 8)
        )
        return cls(**(settings | overrides))


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (per output filter: zero mean, unit variance, eps 1e-5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (self.weight - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Bottleneck(nn.Module):
    """TransUNet's ``PreActBottleneck``, which despite its name is post-activation: conv1×1 -> GN -> ReLU ->
    conv3×3 (stride) -> GN -> ReLU -> conv1×1 -> GN, plus the (projected) input, then ReLU."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1, gn_groups: int = 32) -> None:
        super().__init__()
        self.gn1 = _group_norm(cmid, gn_groups)
        self.conv1 = StdConv2d(cin, cmid, kernel_size=1, bias=False)
        self.gn2 = _group_norm(cmid, gn_groups)
        self.conv2 = StdConv2d(cmid, cmid, kernel_size=3, stride=stride, padding=1, bias=False)
        self.gn3 = _group_norm(cout, gn_groups)
        self.conv3 = StdConv2d(cmid, cout, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, kernel_size=1, stride=stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)  # one group per channel, default eps: as the original

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.gn_proj(self.downsample(x)) if hasattr(self, "downsample") else x
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return self.relu(residual + y)


class ResNetV2(nn.Module):
    """TransUNet's hybrid stem: root (StdConv 7×7/2, GN, ReLU), max-pool 3/2 (no padding), three stages.

    ``forward`` returns the stride-16 map (16w channels) and the skip features, deepest first:
    [8w at H/8, 4w at H/4, w at H/2]. The max-pool without padding leaves stage 1 one row/column short
    (H/4 - 1); like the original, its skip copy is zero-padded at the bottom/right to H/4, while the
    unpadded map continues into stage 2.
    """

    def __init__(self, units: Sequence[int] = (3, 4, 9), width: int = 64, gn_groups: int = 32) -> None:
        super().__init__()
        self.width = width
        self.root = nn.Sequential(
            OrderedDict(
                conv=StdConv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False),
                gn=_group_norm(width, gn_groups),
                relu=nn.ReLU(inplace=True),
            )
        )
        stages = []
        cin = width
        for i, (n, stride) in enumerate(zip(units, (1, 2, 2), strict=True)):
            cmid = width * 2**i
            cout = cmid * 4
            stage = OrderedDict()
            for u in range(n):
                stage[f"unit{u + 1}"] = Bottleneck(cin, cout, cmid, stride if u == 0 else 1, gn_groups)
                cin = cout
            stages.append((f"block{i + 1}", nn.Sequential(stage)))
        self.body = nn.Sequential(OrderedDict(stages))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, w = x.shape[-2:]
        x = self.root(x)
        features = [x]
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=0)
        for i, stage in enumerate(self.body[:-1]):
            x = stage(x)
            rh, rw = h // (4 * (i + 1)), w // (4 * (i + 1))
            features.append(F.pad(x, (0, rw - x.shape[-1], 0, rh - x.shape[-2])))
        return self.body[-1](x), features[::-1]


class Embeddings(nn.Module):
    """Stem + 1×1 patch embedding to the backbone width + learned ``position_embeddings`` (zero-init) + dropout."""

    def __init__(self, config: TransUNetConfig, embed_dim: int) -> None:
        super().__init__()
        self.pos_interp = config.pos_interp
        self.grid_size = config.img_size // TRANSUNET_STRIDE
        self.hybrid_model = ResNetV2(config.stem_units, config.stem_width, config.gn_groups)
        self.patch_embeddings = nn.Conv2d(config.stem_width * 16, embed_dim, kernel_size=1, stride=1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid_size**2, embed_dim))
        self.dropout = nn.Dropout(config.dropout)

    def position_embeddings_for(self, gh: int, gw: int) -> torch.Tensor:
        """``position_embeddings`` for a (gh, gw) grid: (1, gh·gw, C)."""
        if (gh, gw) == (self.grid_size, self.grid_size):
            return self.position_embeddings
        pe = self.position_embeddings
        # resize_pos_embed keeps a leading CLS slot; this table has none, so lend it one and drop it again.
        return resize_pos_embed(torch.cat([pe[:, :1], pe], dim=1), (gh, gw), self.pos_interp)[:, 1:]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
        """Frames (N, 3, H, W) -> tokens (N, H/16 · W/16, C) row-major, skip features, and the grid."""
        x, features = self.hybrid_model(x)
        x = self.patch_embeddings(x)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self.position_embeddings_for(gh, gw)
        return self.dropout(x), features, (gh, gw)


class Encoder(nn.Module):
    """The backbone's ``blocks``, ``norm`` and ``cls_token`` (the same modules, not copies) under the original's
    names ``layer``, ``encoder_norm`` and ``cls_token``."""

    def __init__(self, backbone: TimeSformer) -> None:
        super().__init__()
        self.layer = backbone.blocks
        self.encoder_norm = backbone.norm
        self.cls_token = backbone.cls_token
        self._backbone = (backbone,)  # a tuple is not registered: only the three parts above belong to the model

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """Per-frame tokens (B·T, N, C) -> encoded (B·T, N, C), attending over the T frames of each sequence.

        Tokens are ordered (h w t) with the raw ``cls_token`` prepended (no position or time embedding), as in
        the official ``Encoder``; the CLS is dropped after the final norm.
        """
        bt, n, c = x.shape
        b = bt // frames
        x = x.reshape(b, frames, n, c).transpose(1, 2).reshape(b, n * frames, c)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        checkpointing = self._backbone[0].grad_checkpointing and torch.is_grad_enabled()
        for blk in self.layer:
            if checkpointing:
                x = torch.utils.checkpoint.checkpoint(blk, x, frames, use_reentrant=False)
            else:
                x = blk(x, frames)
        x = self.encoder_norm(x)[:, 1:]
        return x.reshape(b, n, frames, c).transpose(1, 2).reshape(bt, n, c)


class Transformer(nn.Module):
    def __init__(self, config: TransUNetConfig, backbone: TimeSformer) -> None:
        super().__init__()
        self.embeddings = Embeddings(config, backbone.embed_dim)
        self.encoder = Encoder(backbone)

    def forward(self, frames: torch.Tensor, t: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Frames (B·T, 3, H, W), grouped per sequence -> feature map (B·T, C, H/16, W/16) and skip features."""
        x, features, (gh, gw) = self.embeddings(frames)
        x = self.encoder(x, t)
        return x.transpose(1, 2).reshape(x.shape[0], -1, gh, gw), features


class Conv2dReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU, TransUNet's decoder unit."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, padding=padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )


class DecoderBlock(nn.Module):
    """×2 bilinear upsampling (align_corners=True), optional skip concatenation, two 3×3 Conv2dReLU."""

    def __init__(self, cin: int, cout: int, skip: int = 0) -> None:
        super().__init__()
        self.conv1 = Conv2dReLU(cin + skip, cout)
        self.conv2 = Conv2dReLU(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = _upsample2(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    """``conv_more`` (embed -> head_channels) then four DecoderBlocks; the first ``n_skip`` take stem skips."""

    def __init__(self, config: TransUNetConfig, embed_dim: int) -> None:
        super().__init__()
        self.n_skip = config.n_skip
        w = config.stem_width
        skips = [c if i < config.n_skip else 0 for i, c in enumerate((8 * w, 4 * w, w, 0))]
        cins = (config.head_channels, *config.decoder_channels[:-1])
        self.conv_more = Conv2dReLU(embed_dim, config.head_channels)
        self.blocks = nn.ModuleList(
            DecoderBlock(cin, cout, s) for cin, cout, s in zip(cins, config.decoder_channels, skips, strict=True)
        )

    def forward(self, x: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        # The original reshapes (B, n_patch, C) to a square grid; taking the map keeps non-square inputs valid.
        x = self.conv_more(x)
        for i, block in enumerate(self.blocks):
            x = block(x, features[i] if i < self.n_skip else None)
        return x


class TransUNet(nn.Module):
    """The official CVC-12k model (docs/original.md §4.2 "Model") on a :class:`TimeSformer`.

    ``forward``: video (B, 3, T, H, W) -> logits (B, T, K, H, W), H and W multiples of 16. Every frame goes
    through the CNN stem and the patch embedding; the frames of each sequence then form the time axis of the
    backbone's divided space-time blocks (the official code runs one sequence, B = 1, of T = 6-25 frames);
    the decoder works per frame. Only the backbone's ``blocks``, ``norm`` and ``cls_token`` are used and
    registered (shared, not copied); its ``patch_embed``, ``pos_embed`` and ``time_embed`` are unused, an
    original quirk, and are frozen here. ``grad_checkpointing`` follows the backbone's flag.

    State-dict names equal the official Endo-FM TransUNet's: ``transformer.embeddings.{hybrid_model.root.*,
    hybrid_model.body.block{1,2,3}.unit{i}.*, patch_embeddings.*, position_embeddings}``,
    ``transformer.encoder.{layer.{i}.*, encoder_norm.*, cls_token}`` (= backbone ``blocks``, ``norm``,
    ``cls_token``), ``decoder.{conv_more, blocks.{i}.conv{1,2}}.{0 (conv), 1 (BN)}`` and
    ``segmentation_head.0``. Differences: the GroupNorm group count is capped to divide narrow stems, and the
    ``position_embeddings`` are resized for grids other than ``img_size / 16``.
    """

    def __init__(self, backbone: TimeSformer, config: TransUNetConfig | None = None, num_classes: int = 2) -> None:
        super().__init__()
        if not isinstance(backbone, TimeSformer):
            raise TypeError(f"TransUNet: backbone must be a TimeSformer, got {type(backbone).__name__}")
        if backbone.space_only:
            raise ValueError("TransUNet: the backbone must use divided space-time attention, not space_only")
        if num_classes < 1:
            raise ValueError(f"TransUNet: num_classes must be >= 1, got {num_classes}")
        self.config = config if config is not None else TransUNetConfig()
        self.num_classes = num_classes
        for p in (*backbone.patch_embed.parameters(), backbone.pos_embed, backbone.time_embed):
            p.requires_grad_(False)
        self.transformer = Transformer(self.config, backbone)
        self.decoder = DecoderCup(self.config, backbone.embed_dim)
        self.segmentation_head = nn.Sequential(nn.Conv2d(self.config.decoder_channels[-1], num_classes, 3, padding=1))

    @property
    def backbone(self) -> TimeSformer:
        """The backbone whose ``blocks``/``norm``/``cls_token`` this model uses (loading weights into it updates them)."""
        return self.transformer.encoder._backbone[0]

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, t, h, w = check_video(video, TRANSUNET_STRIDE, who="TransUNet")
        x, features = self.transformer(video.transpose(1, 2).flatten(0, 1), t)
        logits = self.segmentation_head(self.decoder(x, features))
        return logits.reshape(b, t, *logits.shape[1:])


# --------------------------------------------------------------------------------------------- light decoder


class LightDecoder(nn.Module):
    """Progressive-upsampling decoder on the backbone's patch grid, per frame.

    Patch tokens (B, T, h, w, C) -> for each width in ``channels``: ×2 bilinear upsampling, 3×3 conv, GroupNorm,
    ReLU -> 1×1 conv to ``num_classes`` -> logits (B, T, K, H, W), bilinearly resized to ``size`` when the
    decoder's 2**len(channels) upsampling does not reach it (patch size != 2**len(channels)).
    """

    def __init__(self, embed_dim: int, num_classes: int = 2, channels: Sequence[int] = (128, 64, 32)) -> None:
        super().__init__()
        channels = tuple(channels)
        if embed_dim < 1 or num_classes < 1:
            raise ValueError(f"LightDecoder: embed_dim and num_classes must be >= 1, got {embed_dim}, {num_classes}")
        if not channels or min(channels) < 1:
            raise ValueError(f"LightDecoder: channels must be a non-empty sequence of widths >= 1, got {channels}")
        self.channels = channels
        stages = []
        cin = embed_dim
        for c in channels:
            stages.append(
                nn.Sequential(nn.Conv2d(cin, c, 3, padding=1, bias=False), _group_norm(c, 8, eps=1e-5), nn.ReLU(True))
            )
            cin = c
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Conv2d(cin, num_classes, kernel_size=1)

    def forward(self, patches: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if patches.ndim != 5:
            raise ValueError(f"LightDecoder: expected patch tokens (B, T, h, w, C), got {tuple(patches.shape)}")
        b, t = patches.shape[:2]
        x = patches.flatten(0, 1).permute(0, 3, 1, 2)
        for stage in self.stages:
            x = stage(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = self.classifier(x)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return x.reshape(b, t, *x.shape[1:])


# ------------------------------------------------------------------------------------------ the model


class SegmentationModel(nn.Module):
    """Video segmentation: (B, 3, T, H, W) float -> logits (B, T, K, H, W) at the input resolution.

    ``decoder="transunet"`` wraps :class:`TransUNet` (as ``self.transunet``); ``"light"`` runs the whole backbone
    (as ``self.encoder``) and :class:`LightDecoder` (as ``self.decoder``) on its dense patch features.
    :meth:`backbone_parameters` are the pretrained backbone parameters the model uses (transunet: ``blocks``,
    ``norm``, ``cls_token``; light: all), :meth:`head_parameters` everything else; together they are exactly
    ``parameters()``. In transunet mode the backbone's unused ``patch_embed``/``pos_embed``/``time_embed`` are
    outside ``parameters()`` (and the state dict) and frozen.
    """

    def __init__(
        self,
        backbone: TimeSformer,
        decoder: DecoderKind = "transunet",
        num_classes: int = 2,
        transunet: TransUNetConfig | None = None,
        light_channels: Sequence[int] = (128, 64, 32),
    ) -> None:
        super().__init__()
        if not isinstance(backbone, TimeSformer):
            raise TypeError(f"SegmentationModel: backbone must be a TimeSformer, got {type(backbone).__name__}")
        if decoder not in DecoderKind.__args__:
            raise ValueError(f"SegmentationModel: decoder must be one of {list(DecoderKind.__args__)}, got {decoder!r}")
        if decoder == "light" and transunet is not None:
            raise ValueError("SegmentationModel: a TransUNetConfig was given for decoder='light'")
        self.kind: DecoderKind = decoder
        self.num_classes = num_classes
        if decoder == "transunet":
            self.transunet = TransUNet(backbone, transunet, num_classes)
        else:
            self.encoder = backbone
            self.decoder = LightDecoder(backbone.embed_dim, num_classes, light_channels)

    @property
    def backbone(self) -> TimeSformer:
        """The pretrained backbone (load weights into it before or after building; its used parts are shared)."""
        return self.transunet.backbone if self.kind == "transunet" else self.encoder

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The backbone's parameters that the forward pass uses (for freezing or a separate learning rate)."""
        used = self.transunet.transformer.encoder if self.kind == "transunet" else self.encoder
        return list(used.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """Every other parameter: stem, patch embedding, position embeddings and decoder (transunet), or decoder."""
        backbone = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in backbone]

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if self.kind == "transunet":
            return self.transunet(video)
        patches = self.encoder.forward_features(video, dense=True).patches
        return self.decoder(patches, tuple(video.shape[-2:]))


def build_segmentation_model(
    backbone: TimeSformer | BackboneConfig | str,
    decoder: DecoderKind = "transunet",
    num_classes: int = 2,
    **kwargs,
) -> SegmentationModel:
    """A :class:`SegmentationModel` from a backbone (module, config or preset name).

    Keyword arguments: for ``"transunet"``, ``transunet=TransUNetConfig(...)`` and/or its fields as overrides
    (e.g. ``stem_width=8``); for ``"light"``, ``light_channels``.
    """
    if not isinstance(backbone, TimeSformer):
        backbone = build_backbone(backbone)
    if decoder == "transunet":
        base = kwargs.pop("transunet", None) or TransUNetConfig()
        fields = {f.name for f in dataclasses.fields(TransUNetConfig)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise TypeError(
                f"build_segmentation_model: unknown TransUNet setting(s) {unknown}; expected some of {sorted(fields)}"
            )
        return SegmentationModel(backbone, decoder, num_classes, transunet=dataclasses.replace(base, **kwargs))
    unknown = sorted(set(kwargs) - {"light_channels"})
    if unknown:
        raise TypeError(f"build_segmentation_model: unknown setting(s) {unknown} for decoder {decoder!r}")
    return SegmentationModel(backbone, decoder, num_classes, **kwargs)
