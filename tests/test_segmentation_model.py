"""Segmentation models: the CVC loss, TransUNet on the backbone's blocks, the light decoder, parameter groups."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from endofm.config import ConfigError, from_dict, to_dict
from endofm.models.segmentation import (
    LightDecoder,
    SegmentationModel,
    TransUNet,
    TransUNetConfig,
    build_segmentation_model,
    segmentation_loss,
)
from endofm.models.vit import TimeSformer, build_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = TransUNetConfig.tiny()


def micro(seed: int = 0) -> TimeSformer:
    torch.manual_seed(seed)
    return build_backbone("vit_micro_patch8")


def transunet_model(seed: int = 0, **overrides) -> SegmentationModel:
    backbone = micro(seed)
    return SegmentationModel(backbone, "transunet", transunet=TransUNetConfig.tiny(**overrides))


def perturb_temporal_fc(backbone: TimeSformer, seed: int = 1) -> None:
    """temporal_fc starts at zero (the original's init), which hides the temporal branch; make it active, and
    scale up the other block weights (trunc_normal 0.02) so that the branch's effect is large."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blk in backbone.blocks:
            assert not blk.temporal_fc.weight.any()
            for p in blk.parameters():
                if p.ndim == 2:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# ------------------------------------------------------------------------------------------------- loss


def test_loss_matches_hand_computation():
    # One image of two pixels. Pixel 1: logits (0, ln 3) -> p = (1/4, 3/4), class 1. Pixel 2: (0, 0) -> (1/2, 1/2),
    # class 0.
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]])  # (1, 2, 1, 2)
    masks = torch.tensor([[[1, 0]]])
    s = 1e-5
    ce = (-math.log(3 / 4) - math.log(1 / 2)) / 2
    # TransUNet's Dice: (2 Σ p·y + s) / (Σ p² + Σ y² + s), per class over the batch.
    dice0 = (2 * (1 / 2) + s) / ((1 / 16 + 1 / 4) + 1 + s)
    dice1 = (2 * (3 / 4) + s) / ((9 / 16 + 1 / 4) + 1 + s)
    dice_loss = ((1 - dice0) + (1 - dice1)) / 2
    got = segmentation_loss(logits, masks)
    assert got.item() == pytest.approx(0.5 * ce + 0.5 * dice_loss, rel=1e-6)
    assert segmentation_loss(logits, masks, ce_weight=1.0, dice_weight=0.0).item() == pytest.approx(ce, rel=1e-6)
    assert segmentation_loss(logits, masks, ce_weight=0.0, dice_weight=1.0).item() == pytest.approx(dice_loss, rel=1e-6)


def test_loss_flattens_video_logits_and_has_finite_gradients():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 3, 8, 8, requires_grad=True)  # (B, T, K, H, W)
    masks = torch.randint(0, 3, (2, 3, 8, 8))
    loss = segmentation_loss(logits, masks)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert loss.item() == pytest.approx(segmentation_loss(logits.flatten(0, 1), masks.flatten(0, 1)).item())
    # A confident correct prediction has (almost) zero loss; the all-background class absent from the masks still
    # counts in the Dice mean (its Dice is smooth/smooth = 1 when p is 0 there too).
    perfect = torch.nn.functional.one_hot(masks, 3).permute(0, 1, 4, 2, 3).float() * 50.0
    assert segmentation_loss(perfect, masks).item() == pytest.approx(0.0, abs=1e-4)
    only_zero = torch.zeros(1, 4, 4, dtype=torch.long)
    assert segmentation_loss(torch.tensor([[100.0, 0.0]])[..., None, None].expand(1, 2, 4, 4), only_zero).item() < 1e-4


def test_loss_rejects_bad_input():
    logits = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="masks must have shape"):
        segmentation_loss(logits, torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer class ids"):
        segmentation_loss(logits, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\)"):
        segmentation_loss(logits, torch.full((1, 4, 4), 2))
    with pytest.raises(ValueError, match="logits must be float"):
        segmentation_loss(torch.zeros(2, 4, 4), torch.zeros(2, 4, dtype=torch.long))


# ------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("t", [1, 3, 5])
@pytest.mark.parametrize("hw", [(64, 64), (64, 96)])
def test_light_output_shape(t, hw):
    model = SegmentationModel(micro(), "light", num_classes=3, light_channels=(16, 8, 8)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, t, *hw))
    assert out.shape == (2, t, 3, *hw)


def test_light_decoder_resizes_when_upsampling_falls_short():
    # Two ×2 stages on a patch-16 grid reach H/4 only; the final bilinear resize brings it to the input size.
    dec = LightDecoder(32, num_classes=2, channels=(8, 8)).eval()
    with torch.no_grad():
        out = dec(torch.randn(1, 2, 3, 5, 32), (48, 80))
    assert out.shape == (1, 2, 2, 48, 80)
    with pytest.raises(ValueError, match="channels"):
        LightDecoder(32, channels=())


@pytest.mark.parametrize("t", [1, 3, 5])
@pytest.mark.parametrize("hw", [(64, 64), (48, 80)])
def test_transunet_output_shape(t, hw):
    model = transunet_model().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, t, *hw))
    assert out.shape == (1, t, 2, *hw)


def test_transunet_rejects_sizes_off_the_stride():
    model = transunet_model().eval()
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 3, 2, 64, 72))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.randn(3, 64, 64))


def test_paper_scale_structure():
    """R50-ViT-B_16 at 224²: the official shapes, and TransUNet's published size once the temporal parts are out."""
    with torch.device("meta"):
        model = TransUNet(build_backbone("vit_base_patch16"))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["transformer.embeddings.patch_embeddings.weight"] == (768, 1024, 1, 1)  # 16w -> 768, 1×1
    assert shapes["transformer.embeddings.position_embeddings"] == (1, 196, 768)
    assert shapes["transformer.embeddings.hybrid_model.root.conv.weight"] == (64, 3, 7, 7)
    assert "transformer.embeddings.hybrid_model.body.block3.unit9.conv3.weight" in shapes  # units (3, 4, 9)
    assert "transformer.embeddings.hybrid_model.body.block3.unit10.conv3.weight" not in shapes
    assert shapes["transformer.encoder.cls_token"] == (1, 1, 768)
    assert shapes["transformer.encoder.layer.11.temporal_fc.weight"] == (768, 768)
    assert shapes["decoder.conv_more.0.weight"] == (512, 768, 3, 3)
    # Decoder inputs: previous width + skip (512, 256, 64, none with n_skip 3).
    assert shapes["decoder.blocks.0.conv1.0.weight"] == (256, 512 + 512, 3, 3)
    assert shapes["decoder.blocks.1.conv1.0.weight"] == (128, 256 + 256, 3, 3)
    assert shapes["decoder.blocks.2.conv1.0.weight"] == (64, 128 + 64, 3, 3)
    assert shapes["decoder.blocks.3.conv1.0.weight"] == (16, 64, 3, 3)
    assert shapes["segmentation_head.0.weight"] == (2, 16, 3, 3)
    assert not any(k.startswith(("transformer.encoder.patch_embed", "transformer.encoder.pos_embed")) for k in shapes)
    # Removing the TimeSformer-only temporal parts (2,954,496 per block, docs/original.md §1 vs a plain ViT block) and the
    # CLS gives plain R50-ViT-B_16 TransUNet, published as 105.28 M parameters (recalled, Chen et al. 2021).
    temporal = 12 * (2 * 768 + (768 * 2304 + 2304) + 2 * (768 * 768 + 768))
    total = sum(p.numel() for p in model.parameters())
    assert round((total - temporal - 768) / 1e6, 2) == 105.28


# ------------------------------------------------------------------------------------- backbone reuse / time


def test_transunet_shares_the_backbone_modules():
    model = transunet_model()
    backbone = model.backbone
    enc = model.transunet.transformer.encoder
    assert enc.layer is backbone.blocks and enc.encoder_norm is backbone.norm and enc.cls_token is backbone.cls_token
    # Loading weights into the backbone after building changes what the model computes.
    model.eval()
    x = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        before = model(x)
        backbone.norm.weight.mul_(3.0)
        after = model(x)
    assert not torch.allclose(before, after)


def test_transunet_token_order_is_hwt_with_cls_first():
    """The tokens entering block 0 are [cls_token] + per-frame embeddings regrouped (h w t), as in the original."""
    model = transunet_model().eval()
    video = torch.randn(2, 3, 3, 48, 32)
    seen = {}
    model.backbone.blocks[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0], t=args[1]))
    with torch.no_grad():
        model(video)
        frames = video.transpose(1, 2).flatten(0, 1)
        emb, _, (gh, gw) = model.transunet.transformer.embeddings(frames)  # (B·T, N, C), N row-major
    assert (gh, gw) == (3, 2) and seen["t"] == 3
    x = seen["x"]
    assert x.shape == (2, 1 + 6 * 3, 32)
    torch.testing.assert_close(x[:, 0], model.backbone.cls_token[:, 0].expand(2, -1))
    emb = emb.reshape(2, 3, gh, gw, 32)  # (b, t, h, w, c)
    for b, t, h, w in [(0, 0, 0, 0), (1, 2, 2, 1), (0, 1, 1, 0), (1, 0, 2, 0)]:
        torch.testing.assert_close(x[b, 1 + (h * gw + w) * 3 + t], emb[b, t, h, w])


def test_transunet_attends_over_the_frames_of_a_sequence_only():
    model = transunet_model()
    perturb_temporal_fc(model.backbone)
    # PyTorch's default conv init with fresh BatchNorm shrinks signals ~100× over the tiny decoder; He init keeps
    # their scale, so a change in the encoder output shows clearly in the logits.
    for m in model.transunet.decoder.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    model.eval()  # BatchNorm in eval mode, so frames interact only through the backbone
    torch.manual_seed(3)
    video = torch.randn(2, 3, 3, 32, 32)
    changed = video.clone()
    changed[0, :, 0] = torch.randn(3, 32, 32)  # a new frame 0 of sequence 0
    with torch.no_grad():
        a, b = model(video), model(changed)
    assert (a[0, 2] - b[0, 2]).abs().max() > 0.05 * a.std()  # frame 2 of the same sequence sees it
    assert torch.equal(a[1], b[1])  # the other sequence does not


def test_transunet_ignores_backbone_patch_pos_and_time_embeddings():
    model = transunet_model()
    perturb_temporal_fc(model.backbone)
    model.eval()
    x = torch.randn(1, 3, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        for p in (*model.backbone.patch_embed.parameters(), model.backbone.pos_embed, model.backbone.time_embed):
            p.add_(torch.randn_like(p))
        torch.testing.assert_close(model(x), before)


def test_grad_checkpointing_follows_the_backbone_flag():
    model = transunet_model(dropout=0.0)
    x = torch.randn(1, 3, 2, 32, 32)
    model.train()
    torch.manual_seed(0)
    ref = model(x).sum()
    ref.backward()
    g_ref = model.backbone.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    model.backbone.set_grad_checkpointing(True)
    torch.manual_seed(0)
    out = model(x).sum()
    out.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(model.backbone.blocks[0].attn.qkv.weight.grad, g_ref)


# ------------------------------------------------------------------------------------- parameter groups


@pytest.mark.parametrize("decoder", ["transunet", "light"])
def test_parameter_groups_partition_and_are_all_used(decoder):
    model = build_segmentation_model(micro(), decoder, **({"transunet": TINY} if decoder == "transunet" else {}))
    bb, head = model.backbone_parameters(), model.head_parameters()
    ids = [id(p) for p in model.parameters()]
    assert sorted(ids) == sorted(id(p) for p in bb + head)
    assert not {id(p) for p in bb} & {id(p) for p in head}
    backbone = model.backbone
    if decoder == "transunet":
        used = [*backbone.blocks.parameters(), *backbone.norm.parameters(), backbone.cls_token]
        unused = [*backbone.patch_embed.parameters(), backbone.pos_embed, backbone.time_embed]
        assert {id(p) for p in bb} == {id(p) for p in used}
        assert not {id(p) for p in unused} & set(ids)
        assert all(not p.requires_grad for p in unused)
        assert not any(k.startswith("transunet.transformer.encoder.patch_embed") for k in model.state_dict())
    else:
        assert {id(p) for p in bb} == {id(p) for p in backbone.parameters()}
    # "Used": every parameter of both groups receives a gradient.
    model.train()
    segmentation_loss(model(torch.randn(1, 3, 2, 32, 32)), torch.randint(0, 2, (1, 2, 32, 32))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_decoder_only_fit_leaves_the_backbone_unchanged():
    model = transunet_model()
    for p in model.backbone_parameters():
        p.requires_grad_(False)
    snapshot = [p.detach().clone() for p in model.backbone_parameters()]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = segmentation_loss(model(torch.randn(1, 3, 2, 32, 32)), torch.randint(0, 2, (1, 2, 32, 32)))
    loss.backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(snapshot, model.backbone_parameters(), strict=True))
    assert all(p.grad is not None for p in model.head_parameters())


# ------------------------------------------------------------------------------------------ config / build


def test_transunet_config_defaults_and_validation():
    cfg = TransUNetConfig()
    assert (cfg.img_size, cfg.stem_width, cfg.stem_units, cfg.head_channels) == (224, 64, (3, 4, 9), 512)
    assert (cfg.decoder_channels, cfg.n_skip) == ((256, 128, 64, 16), 3)
    assert from_dict(TransUNetConfig, to_dict(TINY)) == TINY
    with pytest.raises(ConfigError, match="n_skip"):
        from_dict(TransUNetConfig, {"n_skip": 4})
    with pytest.raises(ValueError, match="decoder_channels"):
        TransUNetConfig(decoder_channels=(64, 32, 16))
    with pytest.raises(ValueError, match="img_size"):
        TransUNetConfig(img_size=100)


def test_build_and_constructor_errors():
    model = build_segmentation_model("vit_micro_patch8", "transunet", num_classes=3, **dataclasses.asdict(TINY))
    assert model.transunet.config == TINY
    assert model.transunet.segmentation_head[0].out_channels == 3
    light = build_segmentation_model("vit_micro_patch8", "light", light_channels=(8, 8, 8))
    assert light.decoder.channels == (8, 8, 8)
    with pytest.raises(TypeError, match="unknown TransUNet setting"):
        build_segmentation_model("vit_micro_patch8", "transunet", stem_widht=8)
    with pytest.raises(ValueError, match="decoder must be one of"):
        SegmentationModel(micro(), "unet")
    with pytest.raises(TypeError, match="TimeSformer"):
        SegmentationModel(torch.nn.Linear(2, 2))


def test_position_embeddings_resize_for_other_grids():
    model = transunet_model()  # stored grid 4×4 (64²)
    emb = model.transunet.transformer.embeddings
    with torch.no_grad():
        emb.position_embeddings.copy_(torch.arange(16.0).reshape(1, 16, 1).expand(1, 16, 32))
    assert emb.position_embeddings_for(4, 4) is emb.position_embeddings
    resized = emb.position_embeddings_for(2, 6)
    assert resized.shape == (1, 12, 32)
    # Nearest: rows 0, 2 of the 4×4 grid; columns floor(j · 4/6) = 0, 0, 1, 2, 2, 3.
    expected = torch.tensor([r * 4 + c for r in (0, 2) for c in (0, 0, 1, 2, 2, 3)], dtype=torch.float32)
    torch.testing.assert_close(resized[0, :, 0], expected)


# ------------------------------------------------------------------------------------------------- overfit


def _square_polyp_clip() -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence of two 32×32 frames, each with a 12×12 'polyp' that is redder and darker than the noise."""
    g = torch.Generator().manual_seed(0)
    video = torch.randn(1, 3, 2, 32, 32, generator=g) * 0.3
    masks = torch.zeros(1, 2, 32, 32, dtype=torch.long)
    for t, (y, x) in enumerate([(4, 6), (14, 12)]):
        masks[0, t, y : y + 12, x : x + 12] = 1
    video[:, 0] += masks * 1.5
    video[:, 1] -= masks * 0.5
    return video, masks


def _dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    p, t = pred == 1, target == 1
    return 2 * (p & t).sum().item() / max(p.sum().item() + t.sum().item(), 1)


@pytest.mark.parametrize("decoder", ["transunet", "light"])
def test_tiny_overfit(decoder):
    video, masks = _square_polyp_clip()
    torch.manual_seed(0)
    if decoder == "transunet":
        model = build_segmentation_model("vit_micro_patch8", decoder, transunet=TransUNetConfig.tiny(img_size=32))
    else:
        model = build_segmentation_model("vit_micro_patch8", decoder, light_channels=(16, 16, 8))
    model.eval()
    with torch.no_grad():
        start = _dice(model(video).argmax(2), masks)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        loss = segmentation_loss(model(video), masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        end = _dice(model(video).argmax(2), masks)
    assert start < 0.5
    assert end > 0.8
