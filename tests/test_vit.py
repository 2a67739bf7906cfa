"""TimeSformer backbone: official names/sizes, token flow, positional-encoding resizing, attention paths."""

from __future__ import annotations

import pytest
import torch

from endofm.config import ConfigError, from_dict, to_dict
from endofm.models.checkpoint import load_backbone
from endofm.models.vit import PRESETS, BackboneConfig, TimeSformer, build_backbone

D_B = 768
BLOCK_SHAPES = {  # docs/original.md §2.2, without the ``backbone.`` prefix
    "norm1.weight": [D_B],
    "norm1.bias": [D_B],
    "attn.qkv.weight": [2304, D_B],
    "attn.qkv.bias": [2304],
    "attn.proj.weight": [D_B, D_B],
    "attn.proj.bias": [D_B],
    "temporal_norm1.weight": [D_B],
    "temporal_norm1.bias": [D_B],
    "temporal_attn.qkv.weight": [2304, D_B],
    "temporal_attn.qkv.bias": [2304],
    "temporal_attn.proj.weight": [D_B, D_B],
    "temporal_attn.proj.bias": [D_B],
    "temporal_fc.weight": [D_B, D_B],
    "temporal_fc.bias": [D_B],
    "norm2.weight": [D_B],
    "norm2.bias": [D_B],
    "mlp.fc1.weight": [3072, D_B],
    "mlp.fc1.bias": [3072],
    "mlp.fc2.weight": [D_B, 3072],
    "mlp.fc2.bias": [D_B],
}
STEM_SHAPES = {
    "cls_token": [1, 1, D_B],
    "pos_embed": [1, 197, D_B],
    "time_embed": [1, 8, D_B],
    "patch_embed.proj.weight": [D_B, 3, 16, 16],
    "patch_embed.proj.bias": [D_B],
    "norm.weight": [D_B],
    "norm.bias": [D_B],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def micro(seed: int = 0, **overrides) -> TimeSformer:
    """A micro backbone with every parameter random (so temporal branches and time_embed are active)."""
    torch.manual_seed(seed)
    model = build_backbone("vit_micro_patch8", **overrides).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


@pytest.fixture(scope="module")
def vit_b_meta() -> TimeSformer:
    with torch.device("meta"):
        return build_backbone("vit_base_patch16")


def test_official_names_and_shapes(vit_b_meta):
    expected = dict(STEM_SHAPES)
    for i in range(12):
        expected.update({f"blocks.{i}.{k}": v for k, v in BLOCK_SHAPES.items()})
    got = {k: list(v.shape) for k, v in vit_b_meta.state_dict().items()}
    assert len(expected) == 247
    assert got == expected


def test_official_teacher_layout_loads_strictly(vit_b_meta):
    """The full §2.2 teacher (backbone + DINO head, official shapes) loads strictly; the head is set aside."""
    teacher = {f"backbone.{k}": v for k, v in STEM_SHAPES.items()}
    for i in range(12):
        teacher.update({f"backbone.blocks.{i}.{k}": v for k, v in BLOCK_SHAPES.items()})
    head = {
        "head.mlp.0.weight": [2048, 768],
        "head.mlp.0.bias": [2048],
        "head.mlp.2.weight": [2048, 2048],
        "head.mlp.2.bias": [2048],
        "head.mlp.4.weight": [256, 2048],
        "head.mlp.4.bias": [256],
        "head.last_layer.weight_g": [65536, 1],
        "head.last_layer.weight_v": [65536, 256],
    }
    ckpt = {"teacher": {k: torch.empty(v, device="meta") for k, v in (teacher | head).items()}}
    assert sum(torch.Size(v).numel() for v in head.values()) == 23_138_560  # docs/original.md §1
    report = load_backbone(vit_b_meta, ckpt)
    assert report.head_keys == list(head) and report.resized == []


def test_vit_b_parameter_counts(vit_b_meta):
    params = dict(vit_b_meta.named_parameters())
    assert len(params) == 247
    assert sum(p.numel() for p in params.values()) == 121_258_752
    assert sum(p.numel() for k, p in params.items() if k.startswith("blocks.0.")) == 10_042_368
    assert sum(p.numel() for k, p in params.items() if k.startswith("patch_embed.")) == 590_592
    assert params["pos_embed"].numel() == 151_296 and params["time_embed"].numel() == 6_144


def test_preset_sizes():
    tiny = build_backbone("vit_tiny_patch8")
    n = sum(p.numel() for p in tiny.parameters())
    assert 550_000 < n < 700_000  # "~0.6 M" in CPU_BUDGET.md
    assert tiny.pos_embed.shape == (1, 1 + 8 * 8, 96) and tiny.time_embed.shape == (1, 4, 96)
    with torch.device("meta"):
        small = build_backbone("vit_small_patch16")
    assert small.embed_dim == 384 and len(small.blocks) == 12 and small.blocks[0].attn.num_heads == 6


def test_init_quirks_and_structure():
    model = build_backbone("vit_tiny_patch8")
    for blk in model.blocks:
        assert torch.count_nonzero(blk.temporal_fc.weight) == 0 and torch.count_nonzero(blk.temporal_fc.bias) == 0
        assert torch.count_nonzero(blk.mlp.fc1.weight) > 0
        assert blk.attn.qkv.bias is not None and blk.temporal_attn.qkv.bias is not None
    assert torch.count_nonzero(model.time_embed) == 0
    assert torch.count_nonzero(model.cls_token) > 0 and torch.count_nonzero(model.pos_embed) > 0
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3 * 4 + 1 and all(m.eps == 1e-6 for m in norms)
    # stochastic depth linear 0 -> 0.1 over 4 blocks
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)
    rates = [blk.drop_path.drop_prob for blk in model.blocks[1:]]
    assert rates == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])


def _reference_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention on one sequence (L, C), with qkv rows read as (3, heads, head_dim)."""
    length, c = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).reshape(length, 3, h, c // h).unbind(1)
    heads = [torch.softmax(q[:, i] @ k[:, i].T * (c // h) ** -0.5, dim=-1) @ v[:, i] for i in range(h)]
    return attn.proj(torch.cat(heads, dim=-1))


def _reference_forward(model: TimeSformer, clip: torch.Tensor) -> torch.Tensor:
    """docs/original.md §1 token flow, written with explicit loops over locations and frames: (1 + N·T, C)."""
    _, t_len, h_img, w_img = clip.shape
    p = model.patch_size
    gh, gw = h_img // p, w_img // p
    pos = model.interpolate_pos_embed(gh, gw)[0]
    time = model.interpolate_time_embed(t_len)[0]
    locs = [(i, j) for i in range(gh) for j in range(gw)]
    tok = {}
    for t in range(t_len):
        feat = model.patch_embed.proj(clip[None, :, t])[0]
        for i, j in locs:
            tok[i, j, t] = feat[:, i, j] + pos[1 + i * gw + j] + time[t]
    cls = model.cls_token[0, 0] + pos[0]
    for blk in model.blocks:
        for i, j in locs:  # temporal
            seq = torch.stack([tok[i, j, t] for t in range(t_len)])
            res = blk.temporal_fc(_reference_attention(blk.temporal_attn, blk.temporal_norm1(seq)))
            for t in range(t_len):
                tok[i, j, t] = tok[i, j, t] + res[t]
        cls_res = []
        new = {}
        for t in range(t_len):  # spatial, CLS repeated per frame
            seq = torch.stack([cls] + [tok[i, j, t] for i, j in locs])
            res = _reference_attention(blk.attn, blk.norm1(seq))
            cls_res.append(res[0])
            for n, (i, j) in enumerate(locs):
                new[i, j, t] = tok[i, j, t] + res[1 + n]
        cls = cls + torch.stack(cls_res).mean(0)
        cls = cls + blk.mlp(blk.norm2(cls))
        tok = {key: v + blk.mlp(blk.norm2(v)) for key, v in new.items()}
    seq = torch.stack([cls] + [tok[i, j, t] for i, j in locs for t in range(t_len)])  # (h, w, t) order
    return model.norm(seq)


@pytest.mark.parametrize("shape", [(3, 32, 24), (1, 16, 16)])
@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_matches_loop_reference(shape, attention):
    model = micro(attention=attention)
    torch.manual_seed(1)
    clip = torch.randn(2, 3, *shape)
    with torch.no_grad():
        got = model.forward_features(clip)
        want = torch.stack([_reference_forward(model, c) for c in clip])
    assert got.shape == (2, 1 + (shape[1] // 8) * (shape[2] // 8) * shape[0], 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(clip), want[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(4, 32, 32), (1, 32, 32), (2, 32, 32), (16, 32, 32), (4, 96, 96), (3, 64, 96)])
def test_sdpa_equals_explicit_and_shapes(shape):
    model = micro()
    clip = torch.randn(2, 3, *shape)
    t, gh, gw = shape[0], shape[1] // 8, shape[2] // 8
    with torch.no_grad():
        cls = model(clip)
        dense = model.forward_features(clip, dense=True)
        model.set_attention("explicit")
        assert model.attention == "explicit"
        cls_explicit = model(clip)
    assert cls.shape == (2, 32)
    assert dense.patches.shape == (2, t, gh, gw, 32) and dense.cls.shape == (2, 32)
    torch.testing.assert_close(dense.cls, cls)
    torch.testing.assert_close(cls_explicit, cls, atol=1e-5, rtol=0)


def test_dense_layout_matches_token_order():
    model = micro()
    clip = torch.randn(1, 3, 3, 24, 16)
    with torch.no_grad():
        tokens = model.forward_features(clip)
        patches = model.forward_features(clip, dense=True).patches
    gw, t_len = 2, 3
    for t, i, j in [(0, 0, 0), (2, 1, 0), (1, 2, 1)]:
        torch.testing.assert_close(patches[0, t, i, j], tokens[0, 1 + (i * gw + j) * t_len + t])


def test_time_embed_nearest_by_hand():
    model = micro()  # stored time_embed has 4 frames
    stored = model.time_embed.detach().clone()
    cases = {
        1: [0],
        2: [0, 2],
        3: [0, 1, 2],
        4: [0, 1, 2, 3],
        8: [0, 0, 1, 1, 2, 2, 3, 3],
        16: [i // 4 for i in range(16)],
    }
    for frames, index in cases.items():
        torch.testing.assert_close(model.interpolate_time_embed(frames), stored[:, index], rtol=0, atol=0)
    assert torch.equal(model.time_embed, stored)  # never modified in place


def test_pos_embed_nearest_by_hand_and_modes():
    model = micro()  # stored grid 4x4
    stored = model.pos_embed.detach().clone()
    grid = stored[0, 1:].reshape(4, 4, -1)
    got = model.interpolate_pos_embed(2, 6)[0]
    rows, cols = [0, 2], [0, 0, 1, 2, 2, 3]  # floor(i * 4 / out)
    want = grid[rows][:, cols].reshape(12, -1)
    torch.testing.assert_close(got[0], stored[0, 0], rtol=0, atol=0)
    torch.testing.assert_close(got[1:], want, rtol=0, atol=0)
    assert torch.equal(model.interpolate_pos_embed(4, 4), stored)

    smooth = micro(pos_interp="bicubic", time_interp="linear")
    assert smooth.interpolate_pos_embed(12, 12).shape == (1, 145, 32)
    assert not torch.equal(smooth.interpolate_pos_embed(8, 8), micro().interpolate_pos_embed(8, 8))
    lin = smooth.interpolate_time_embed(8)
    torch.testing.assert_close(lin[:, 1], 0.75 * smooth.time_embed[:, 0] + 0.25 * smooth.time_embed[:, 1])
    clip = torch.randn(1, 3, 2, 96, 64)
    with torch.no_grad():
        assert smooth(clip).shape == (1, 32)
    assert torch.equal(smooth.pos_embed, micro().pos_embed)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 3, 4, 30, 32), r"multiples of the patch size 8, got T=4, H=30, W=32"),
        ((1, 3, 0, 32, 32), r"T >= 1"),
        ((1, 1, 4, 32, 32), r"\(B, 3, T, H, W\), got \(1, 1, 4, 32, 32\)"),
        ((3, 4, 32, 32), r"\(B, 3, T, H, W\)"),
    ],
)
def test_bad_input_shape(shape, match):
    with pytest.raises(ValueError, match=match):
        micro()(torch.zeros(shape))


def test_cls_invariant_to_frame_order_without_temporal_signal():
    """With zero temporal_fc and time_embed (the init state) frames interact only through the CLS mean,
    so permuting frames leaves the CLS unchanged and permutes the patch grid alike."""
    model = micro()
    with torch.no_grad():
        model.time_embed.zero_()
        for blk in model.blocks:
            blk.temporal_fc.weight.zero_()
            blk.temporal_fc.bias.zero_()
    clip = torch.randn(2, 3, 4, 32, 32)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        a = model.forward_features(clip, dense=True)
        b = model.forward_features(clip[:, :, perm], dense=True)
    torch.testing.assert_close(b.cls, a.cls, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.patches, a.patches[:, perm], atol=1e-5, rtol=0)

    model_t = micro()  # with a time embedding the order matters: the test above is not vacuous
    with torch.no_grad():
        assert not torch.allclose(model_t(clip[:, :, perm]), model_t(clip), atol=1e-3)


def test_cls_is_mean_over_frames():
    """With zero time_embed a static clip of T identical frames gives the CLS of the single frame
    (temporal attention over identical tokens equals that over one); a sum would scale with T."""
    model = micro()
    with torch.no_grad():
        model.time_embed.zero_()
        frame = torch.randn(2, 3, 1, 32, 32)
        single = model(frame)
        for frames in (2, 5):
            torch.testing.assert_close(model(frame.expand(-1, -1, frames, -1, -1)), single, atol=1e-5, rtol=0)


def test_gradient_checkpointing_same_values_and_grads():
    clip = torch.randn(2, 3, 2, 16, 24)
    grads = []
    for flag in (False, True):
        model = micro()
        model.set_grad_checkpointing(flag)
        model(clip).square().sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-6, rtol=1e-5)


def test_config_from_dict_and_registry():
    cfg = from_dict(BackboneConfig, {"name": "vit_tiny_patch8", "num_frames": 8, "attention": "explicit"})
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.num_frames) == (96, 4, 3, 8, 8)
    assert cfg.pos_interp == "nearest" and cfg.attention == "explicit"
    assert from_dict(BackboneConfig, to_dict(cfg)) == cfg
    assert BackboneConfig().embed_dim == 768 and set(PRESETS) >= {"vit_base_patch16", "vit_small_patch16"}
    model = build_backbone(cfg, depth=2)
    assert len(model.blocks) == 2 and model.attention == "explicit" and model.time_embed.shape[1] == 8
    with pytest.raises(ConfigError, match="unknown key.*'embed_dims'"):
        from_dict(BackboneConfig, {"embed_dims": 3})
    with pytest.raises(ConfigError, match="attention: expected one of"):
        from_dict(BackboneConfig, {"attention": "flash"})
    with pytest.raises(ConfigError, match="'mine' is not a preset.*must set img_size"):
        from_dict(BackboneConfig, {"name": "mine", "embed_dim": 64})
    with pytest.raises(ConfigError, match="img_size 100 is not a multiple of patch_size 16"):
        from_dict(BackboneConfig, {"img_size": 100})
    with pytest.raises(ValueError, match="unknown backbone 'vit_huge'"):
        build_backbone("vit_huge")
    with pytest.raises(ValueError, match="attention must be one of"):
        micro().set_attention("flash")


def test_space_only_and_clip_settings():
    """``space_only`` (the official option's name): no temporal modules or ``time_embed``; the CLIP flags
    come from the ``vit_base_patch16_clip`` preset and can be set on any preset."""
    cfg = from_dict(BackboneConfig, {"name": "vit_micro_patch8", "attention_type": "space_only", "pre_norm": True})
    assert (cfg.attention_type, cfg.pre_norm, cfg.act_layer, cfg.norm_eps, cfg.patch_bias) == (
        "space_only",
        True,
        "gelu",
        1e-6,
        True,
    )
    assert from_dict(BackboneConfig, to_dict(cfg)) == cfg
    names = set(build_backbone(cfg).state_dict())
    assert not any("temporal" in n or n == "time_embed" for n in names)
    assert {"norm_pre.weight", "norm_pre.bias", "patch_embed.proj.bias"} <= names
    default = BackboneConfig()
    assert (default.attention_type, default.pre_norm, default.act_layer, default.norm_eps, default.patch_bias) == (
        "divided_space_time",
        False,
        "gelu",
        1e-6,
        True,
    )
    clip = BackboneConfig(name="vit_base_patch16_clip")
    assert (clip.attention_type, clip.pre_norm, clip.act_layer, clip.norm_eps, clip.patch_bias) == (
        "space_only",
        True,
        "quick_gelu",
        1e-5,
        False,
    )
    assert BackboneConfig(name="vit_base_patch16_clip", act_layer="gelu").act_layer == "gelu"
    with pytest.raises(ConfigError, match="attention_type: .*'joint_space_time'"):
        from_dict(BackboneConfig, {"attention_type": "joint_space_time"})
    with pytest.raises(ConfigError, match="norm_eps must be > 0"):
        from_dict(BackboneConfig, {"norm_eps": 0.0})


def test_space_only_gradient_checkpointing_same_values_and_grads():
    model = micro(attention_type="space_only", pre_norm=True).train()
    x = torch.randn(2, 3, 3, 16, 16)
    out = model(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out2 = model(x)
    out2.square().sum().backward()
    assert torch.equal(out, out2)
    assert all(torch.allclose(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
