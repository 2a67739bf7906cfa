"""ST-Adapter (docs/original.md §7.2): adapter counts, identity at init, frozen backbone, CLS pooling, the tasks'
interface, and CLIP weights (timm and OpenAI layouts) against timm's own CLIP image tower."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import _convert_openai_clip

from endofm.config import ConfigError, from_dict
from endofm.models.checkpoint import BackboneLoadError, from_openai_clip
from endofm.models.detection import DetectionModel
from endofm.models.heads import DINOHead, VideoClassifier
from endofm.models.segmentation import SegmentationModel
from endofm.models.st_adapter import (
    AdapterConfig,
    STAdapterBackbone,
    adapter_parameter_count,
    build_st_adapter,
    load_image_backbone,
)
from endofm.models.vit import BackboneConfig, DenseFeatures, TimeSformer, build_backbone
from endofm.pretraining.objective import MultiViewModel
from endofm.pretraining.train import export_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# docs/original.md §7.2, by hand: fc1 768·384 + 384, depth-wise conv 384·3 + 384, fc2 384·768 + 768.
PER_ADAPTER_B = (768 * 384 + 384) + (384 * 3 + 384) + (384 * 768 + 768)
MICRO = BackboneConfig(name="vit_micro_patch8", attention_type="space_only")  # 32 wide, 2 blocks, patch 8
SMALL_ADAPTER = AdapterConfig(bottleneck=8)


def randomise(model: torch.nn.Module, seed: int = 0, adapters: bool = False) -> torch.nn.Module:
    """Every image-ViT parameter random (and the adapters too if asked), so no branch is trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if adapters or not name.startswith("adapters."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def image_vit_of(model: STAdapterBackbone) -> TimeSformer:
    """The plain image ViT (TimeSformer, space_only) holding ``model``'s image weights."""
    vit = TimeSformer(model.config).eval()
    vit.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("adapters.")})
    return vit


def clip(b: int = 2, t: int = 3, h: int = 16, w: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, t, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------- config


def test_adapter_config_defaults_and_errors() -> None:
    assert AdapterConfig() == AdapterConfig(layout="12x384", bottleneck=384, kernel_t=3)
    with pytest.raises(ConfigError, match=r"adapter\.layout must be one of \['12x384', '24x384'\], got '6x384'"):
        AdapterConfig(layout="6x384")
    with pytest.raises(ConfigError, match=r"adapter\.bottleneck must be >= 1, got 0"):
        AdapterConfig(bottleneck=0)
    with pytest.raises(ConfigError, match=r"adapter\.kernel_t must be odd"):
        AdapterConfig(kernel_t=2)
    with pytest.raises(ConfigError, match=r"st_adapter\.adapter: unknown key 'width'"):
        from_dict(AdapterConfig, {"width": 3}, "st_adapter.adapter")


def test_needs_an_image_vit() -> None:
    with pytest.raises(ConfigError, match=r"attention_type must be 'space_only', got 'divided_space_time'"):
        build_st_adapter(BackboneConfig(name="vit_micro_patch8"), AdapterConfig())


# ------------------------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize(("layout", "adapters"), [("12x384", 12), ("24x384", 24)])
def test_vitb16_trainable_parameters_match_the_formula(layout: str, adapters: int) -> None:
    assert PER_ADAPTER_B == 592_512 == adapter_parameter_count(768, 384, 3)
    with torch.device("meta"):
        model = build_st_adapter(BackboneConfig(name="vit_base_patch16_clip"), AdapterConfig(layout=layout))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in model.adapter_parameters()) == adapters * PER_ADAPTER_B
    assert trainable == {"12x384": 7_110_144, "24x384": 14_220_288}[layout]
    # CLIP ViT-B/16 image tower without its projection: 85,798,656 - 768 (no patch bias) + 1,536 (norm_pre).
    assert sum(p.numel() for p in model.image_parameters()) == 85_799_424
    assert all(not p.requires_grad for p in model.image_parameters())
    names = [n for n, _ in model.named_parameters() if n.startswith("adapters.")]
    assert len(names) == 6 * adapters  # fc1, conv, fc2: weight and bias each
    assert ("adapters.0.pre_attn.conv.weight" in names) == (layout == "24x384")
    assert "adapters.11.pre_mlp.conv.weight" in names


def test_frozen_mode_has_no_adapters_and_nothing_trainable() -> None:
    model = build_st_adapter(MICRO, None)
    assert model.adapters is None and model.adapter_parameters() == []
    assert not any(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------------------ identity at initialisation


@pytest.mark.parametrize("layout", ["12x384", "24x384"])
def test_at_init_equals_the_frozen_image_backbone_bit_for_bit(layout: str) -> None:
    model = randomise(build_st_adapter(MICRO, AdapterConfig(layout=layout, bottleneck=8)))
    for adapter in model.adapter_parameters():  # the adapters' own init: conv and biases exactly zero
        assert adapter.ndim == 2 or not adapter.any()
    vit, x = image_vit_of(model), clip()
    with torch.no_grad():
        ours, ref = model.forward_features(x, dense=True), vit.forward_features(x, dense=True)
        assert isinstance(ours, DenseFeatures)
        assert torch.equal(ours.cls, ref.cls) and torch.equal(ours.patches, ref.patches)
        assert torch.equal(model.forward_features(x), vit.forward_features(x))
        assert torch.equal(model(x), vit(x))
        # Wired in: a non-zero conv in the last block's pre-MLP adapter changes the patch tokens only (the
        # CLS is untouched and no attention follows); in the first block it reaches the CLS too.
        model.adapters[-1].pre_mlp.conv.weight.fill_(0.5)
        dense = model.forward_features(x, dense=True)
        assert torch.equal(dense.cls, ref.cls) and not torch.allclose(dense.patches, ref.patches)
        model.adapters[0].pre_mlp.conv.weight.fill_(0.5)
        assert not torch.allclose(model(x), vit(x))


def test_no_adapters_is_the_image_backbone() -> None:
    frozen = randomise(build_st_adapter(MICRO, None))
    vit, x = image_vit_of(frozen), clip()
    with torch.no_grad():
        assert torch.equal(frozen.forward_features(x), vit.forward_features(x))


# -------------------------------------------------------------------------------------- frozen backbone


def test_training_steps_change_only_adapters_and_head() -> None:
    model = VideoClassifier(randomise(build_st_adapter(MICRO, SMALL_ADAPTER)), num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {
        id(p) for p in (*model.backbone.adapter_parameters(), *model.head.parameters())
    }
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.05)
    model.train()
    x, y = clip(t=2), torch.tensor([0, 1])
    for _ in range(2):  # step 1 moves the zero conv; only then do fc1 and fc2's weight get gradients
        opt.zero_grad()
        # The last block's pre-MLP adapter acts on patch tokens after the last attention, so only a dense
        # term reaches it (as in the original, where it does not change the classifier's input).
        patches = model.backbone.forward_features(x, dense=True).patches
        (F.cross_entropy(model(x), y) + patches.square().mean()).backward()
        opt.step()
    after = model.state_dict()
    image = [k for k in after if k.startswith("backbone.") and not k.startswith("backbone.adapters.")]
    assert len(image) == len(build_backbone(MICRO).state_dict())
    assert all(torch.equal(after[k], before[k]) for k in image)
    assert all(p.grad is None for p in model.backbone.image_parameters())
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert sorted(changed) == sorted(k for k in after if k not in image)  # every adapter tensor and the head


# --------------------------------------------------------------------------------------- pooling, layout


def test_clip_cls_is_the_norm_of_the_mean_of_per_frame_cls() -> None:
    """The original's head input: per-frame CLS (before the final LayerNorm) averaged over T, then the norm."""
    model = randomise(build_st_adapter(MICRO, None))
    raw = copy.deepcopy(model)
    raw.norm = torch.nn.Identity()
    x = clip(t=3)
    with torch.no_grad():
        per_frame = torch.stack([raw(x[:, :, k : k + 1]) for k in range(3)], dim=1)  # each frame alone
        expected = model.norm(per_frame.mean(dim=1))
        got = model(x)
        assert torch.allclose(got, expected, atol=1e-6)
        assert not torch.allclose(got, model.norm(per_frame).mean(dim=1), atol=1e-3)  # the order matters
        # Without adapters the frames do not see each other: frame k's patches are those of frame k alone.
        patches = model.forward_features(x, dense=True).patches
        assert torch.allclose(patches[:, 1], model.forward_features(x[:, :, 1:2], dense=True).patches[:, 0], atol=1e-6)


def test_dense_layout_matches_the_timesformer() -> None:
    model = randomise(build_st_adapter(MICRO, SMALL_ADAPTER), adapters=True)
    video = build_backbone("vit_micro_patch8").eval()
    x = clip(b=2, t=3, h=16, w=24)
    with torch.no_grad():
        ours, ref = model.forward_features(x, dense=True), video.forward_features(x, dense=True)
        tokens = model.forward_features(x)
    assert ours.patches.shape == ref.patches.shape == (2, 3, 2, 3, 32)
    assert ours.cls.shape == ref.cls.shape == (2, 32)
    assert tokens.shape == video.forward_features(x).shape == (2, 1 + 6 * 3, 32)
    # Tokens in (h, w, t) order, as the TimeSformer's: token 1 + (i·w + j)·T + t is patches[:, t, i, j].
    assert torch.equal(tokens[:, 1 + (1 * 3 + 2) * 3 + 1], ours.patches[:, 1, 1, 2])
    assert torch.equal(tokens[:, 0], ours.cls)
    assert (model.embed_dim, model.patch_size) == (video.embed_dim, video.patch_size)


def test_tasks_build_and_run_on_it() -> None:
    backbone = randomise(build_st_adapter(MICRO, SMALL_ADAPTER))
    x = clip(b=1, t=2, h=32, w=32)
    with torch.no_grad():
        assert VideoClassifier(backbone, 2)(x).shape == (1, 2)
        seg = SegmentationModel(backbone, "light", 2, light_channels=(8, 8, 8))
        assert seg(x).shape == (1, 2, 2, 32, 32)
        assert {id(p) for p in seg.backbone_parameters()} == {id(p) for p in backbone.parameters()}
        det = DetectionModel(backbone, fpn_channels=8, num_convs=1)
        out = det(x, key_index=1)
        assert out.cls_logits[0].shape[0] == 1
    with pytest.raises(ValueError, match=r"TransUNet: .*divided space-time"):
        SegmentationModel(backbone, "transunet", 2)
    randomise(backbone, adapters=True).train()
    grads = []
    for flag in (False, True):
        backbone.zero_grad()
        backbone.set_grad_checkpointing(flag)
        dense = backbone.forward_features(x, dense=True)
        (dense.cls.sum() + dense.patches.square().sum()).backward()
        grads.append([p.grad.clone() for p in backbone.adapter_parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))
    assert all(g.any() for g in grads[0])


# ----------------------------------------------------------------------------------- loading image weights


def test_loads_our_image_backbone_and_refuses_a_video_one(tmp_path) -> None:
    vit = randomise(build_backbone(MICRO))
    export_backbone(MultiViewModel(vit, DINOHead(32, 16, 8, 4)), tmp_path / "backbone.pt")  # pretraining's writer
    model = build_st_adapter(MICRO, SMALL_ADAPTER)
    init = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("adapters.")}
    report = load_image_backbone(model, tmp_path / "backbone.pt")
    assert report.missing == [] and report.unexpected == []
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in vit.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in init.items())  # adapters keep their (zero-residual) init
    assert all(not p.requires_grad for p in model.image_parameters())
    torch.save(build_backbone("vit_micro_patch8").state_dict(), tmp_path / "video.pt")
    with pytest.raises(BackboneLoadError, match=r"unexpected \(\d+\): time_embed, blocks\.0\.temporal_norm1"):
        load_image_backbone(model, tmp_path / "video.pt")


def _timm_clip(act: str, **kw) -> torch.nn.Module:
    name = "vit_base_patch16_clip_quickgelu_224" if act == "quick_gelu" else "vit_base_patch16_clip_224"
    return timm.create_model(name, pretrained=False, **kw)


def test_vitb16_clip_preset_has_timm_names_and_shapes() -> None:
    with torch.device("meta"):
        ref = _timm_clip("quick_gelu", num_classes=512)
        ours = build_st_adapter(BackboneConfig(name="vit_base_patch16_clip"), AdapterConfig())
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.startswith("head.")}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items() if not k.startswith("adapters.")}
    assert got == want and len(got) == 12 * 12 + 7  # 12 tensors per block; cls, pos, patch, norm_pre, norm
    assert ours.config.norm_eps == 1e-5 and ours.config.act_layer == "quick_gelu"


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_timm_clip_state_dict_gives_timm_outputs(tmp_path, act: str) -> None:
    """A timm CLIP image tower (random weights, ViT-B width, 2 blocks, 32² images) saved with torch.save:
    the same features as timm's own forward, to 1e-5, frame by frame."""
    torch.manual_seed(0)
    ref = randomise(_timm_clip(act, img_size=32, depth=2, num_classes=512), seed=3)
    torch.save(ref.state_dict(), tmp_path / "timm_clip.pt")
    cfg = BackboneConfig(name="vit_base_patch16_clip", img_size=32, depth=2, act_layer=act)
    model = build_st_adapter(cfg, AdapterConfig())
    report = load_image_backbone(model, tmp_path / "timm_clip.pt")
    assert sorted(report.head_keys) == ["head.bias", "head.weight"]
    x = clip(b=2, t=2, h=32, w=32, seed=4)
    with torch.no_grad():
        dense = model.eval().forward_features(x, dense=True)
        for t in range(2):
            want = ref.forward_features(x[:, :, t])  # (B, 1 + 4, 768) after the final norm
            assert torch.allclose(dense.patches[:, t].flatten(1, 2), want[:, 1:], atol=1e-5)
        single = model.forward_features(x[:, :, :1])
        assert torch.allclose(single, ref.forward_features(x[:, :, 0]), atol=1e-5)


def _openai_clip_shapes(depth: int, grid: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an OpenAI CLIP ViT-B/16 state dict, written by hand (openai/CLIP ``model.py``):
    the image tower (``visual.*``) and a few text-tower entries, which share block names with it."""
    d = 768
    shapes = {
        "visual.class_embedding": (d,),
        "visual.positional_embedding": (1 + grid * grid, d),
        "visual.conv1.weight": (d, 3, 16, 16),
        "visual.ln_pre.weight": (d,),
        "visual.ln_pre.bias": (d,),
        "visual.ln_post.weight": (d,),
        "visual.ln_post.bias": (d,),
        "visual.proj": (d, 512),
        "transformer.resblocks.0.ln_1.weight": (512,),
        "token_embedding.weight": (10, 512),
        "logit_scale": (),
    }
    for i in range(depth):
        p = f"visual.transformer.resblocks.{i}."
        shapes.update(
            {
                p + "ln_1.weight": (d,),
                p + "ln_1.bias": (d,),
                p + "attn.in_proj_weight": (3 * d, d),
                p + "attn.in_proj_bias": (3 * d,),
                p + "attn.out_proj.weight": (d, d),
                p + "attn.out_proj.bias": (d,),
                p + "ln_2.weight": (d,),
                p + "ln_2.bias": (d,),
                p + "mlp.c_fc.weight": (4 * d, d),
                p + "mlp.c_fc.bias": (4 * d,),
                p + "mlp.c_proj.weight": (d, 4 * d),
                p + "mlp.c_proj.bias": (d,),
            }
        )
    return shapes


def _openai_clip_state(depth: int, grid: int, seed: int) -> dict[str, torch.Tensor]:
    """Random values for :func:`_openai_clip_shapes` (LayerNorm gains near 1, matrices scaled by 1/sqrt(fan-in))."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in _openai_clip_shapes(depth, grid).items():
        v = torch.randn(shape, generator=gen) * 0.2
        if "ln_" in name and name.endswith(".weight"):
            v = v + 1
        elif len(shape) == 2 and "embedding" not in name:
            v = v * (4 / shape[1] ** 0.5)
        state[name] = v
    return state


def test_openai_clip_safetensors_gives_timm_outputs(tmp_path) -> None:
    """The download's layout (OpenAI names, .safetensors): loaded by us and, through timm's own converter,
    by timm's QuickGELU CLIP tower; same features to 1e-5."""
    state = _openai_clip_state(depth=2, grid=2, seed=5)
    save_file(state, tmp_path / "open_clip_model.safetensors")
    ref = _timm_clip("quick_gelu", img_size=32, depth=2, num_classes=512).eval()
    ref.load_state_dict(_convert_openai_clip(state, ref))
    cfg = BackboneConfig(name="vit_base_patch16_clip", img_size=32, depth=2)
    model = build_st_adapter(cfg, AdapterConfig(layout="24x384")).eval()
    report = load_image_backbone(model, tmp_path / "open_clip_model.safetensors")
    assert sorted(report.head_keys) == [
        "logit_scale",
        "token_embedding.weight",
        "transformer.resblocks.0.ln_1.weight",
        "visual.proj",
    ]
    assert torch.equal(model.cls_token, state["visual.class_embedding"].reshape(1, 1, -1))
    x = clip(b=2, t=1, h=32, w=32, seed=6)
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), ref.forward_features(x[:, :, 0]), atol=1e-5)


def test_full_size_openai_names_map_onto_the_preset() -> None:
    """Every image-tower name of a ViT-B/16 OpenAI state dict (12 blocks, 14×14 grid) lands on the preset's
    parameter of the same shape; the projection and the text tower are set aside."""
    shapes = _openai_clip_shapes(depth=12, grid=14)
    with torch.device("meta"):
        model = TimeSformer(BackboneConfig(name="vit_base_patch16_clip"))
        mapped, aside = from_openai_clip({k: torch.empty(s) for k, s in shapes.items()})
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(aside) == [
        "logit_scale",
        "token_embedding.weight",
        "transformer.resblocks.0.ln_1.weight",
        "visual.proj",
    ]
