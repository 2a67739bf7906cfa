"""Every method's start (issue 19): CLIP files select CLIP's architecture and load strictly into ST-Adapter, CLIP's
normalisation, per-method fine-tuning settings, the `init` ablation over every pretrained method, and paper.yaml's
starts (Endo-FM and VCL from SVT's Kinetics-400 checkpoint, ST-Adapter from CLIP ViT-B/16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from endofm.config import ConfigError
from endofm.methods import ST_ADAPTER
from endofm.models.checkpoint import BackboneLoadError, clip_backbone, file_backbone, is_clip_state, load_backbone_state
from endofm.models.st_adapter import build_st_adapter
from endofm.models.vit import BackboneConfig
from endofm.settings import ablation_runs, load_workflow_config, pretrain_runs, run_backbone, run_backbone_options

ROOT = Path(__file__).resolve().parents[1]
DIM, DEPTH, PATCH, GRID, HIDDEN = 64, 2, 8, 4, 128  # a tiny CLIP: 64 wide (1 head of 64), 2 blocks, 32 px


def paper() -> dict:
    return yaml.safe_load((ROOT / "config/paper.yaml").read_text())


def demo() -> dict:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def timm_clip_state() -> dict[str, torch.Tensor]:
    """A tiny CLIP image tower in timm's vit_base_patch16_clip_* names (pre-norm, no patch bias, a head)."""
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    state = {
        "cls_token": r(1, 1, DIM),
        "pos_embed": r(1, 1 + GRID * GRID, DIM),
        "patch_embed.proj.weight": r(DIM, 3, PATCH, PATCH),
        "norm_pre.weight": r(DIM),
        "norm_pre.bias": r(DIM),
        "norm.weight": r(DIM),
        "norm.bias": r(DIM),
        "head.weight": r(32, DIM),  # CLIP's projection: set aside
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        state |= {
            b + "norm1.weight": r(DIM), b + "norm1.bias": r(DIM),
            b + "attn.qkv.weight": r(3 * DIM, DIM), b + "attn.qkv.bias": r(3 * DIM),
            b + "attn.proj.weight": r(DIM, DIM), b + "attn.proj.bias": r(DIM),
            b + "norm2.weight": r(DIM), b + "norm2.bias": r(DIM),
            b + "mlp.fc1.weight": r(HIDDEN, DIM), b + "mlp.fc1.bias": r(HIDDEN),
            b + "mlp.fc2.weight": r(DIM, HIDDEN), b + "mlp.fc2.bias": r(DIM),
        }  # fmt: skip
    return state


def openai_clip_state(timm: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tower in OpenAI's names (visual.*), written out by hand, plus a text-tower tensor."""
    out = {
        "visual.class_embedding": timm["cls_token"].reshape(DIM),
        "visual.positional_embedding": timm["pos_embed"][0],
        "visual.conv1.weight": timm["patch_embed.proj.weight"],
        "visual.ln_pre.weight": timm["norm_pre.weight"], "visual.ln_pre.bias": timm["norm_pre.bias"],
        "visual.ln_post.weight": timm["norm.weight"], "visual.ln_post.bias": timm["norm.bias"],
        "visual.proj": torch.zeros(DIM, 32),
        "token_embedding.weight": torch.zeros(10, 8),
    }  # fmt: skip
    pairs = {
        "ln_1": "norm1", "ln_2": "norm2", "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    }  # fmt: skip
    for i in range(DEPTH):
        src, dst = f"visual.transformer.resblocks.{i}.", f"blocks.{i}."
        for a, b in pairs.items():
            out[f"{src}{a}.weight"], out[f"{src}{a}.bias"] = timm[f"{dst}{b}.weight"], timm[f"{dst}{b}.bias"]
        out[f"{src}attn.in_proj_weight"] = timm[f"{dst}attn.qkv.weight"]
        out[f"{src}attn.in_proj_bias"] = timm[f"{dst}attn.qkv.bias"]
    return out


@pytest.fixture()
def clip_file(tmp_path) -> Path:
    path = tmp_path / "clip" / "model.safetensors"
    path.parent.mkdir()
    save_file(timm_clip_state(), str(path))
    return path


def test_a_clip_state_is_detected_and_sized_from_its_tensors():
    state = timm_clip_state()
    assert is_clip_state(state) and not is_clip_state({k: v for k, v in state.items() if "norm_pre" not in k})
    base = BackboneConfig(name="vit_base_patch16", pos_interp="bicubic", grad_checkpointing=True)
    cfg = clip_backbone(state, base)
    got = {k: getattr(cfg, k) for k in ("embed_dim", "depth", "patch_size", "img_size", "num_heads", "mlp_ratio")}
    assert got == {"embed_dim": 64, "depth": 2, "patch_size": 8, "img_size": 32, "num_heads": 1, "mlp_ratio": 2.0}
    arch = (cfg.attention_type, cfg.pre_norm, cfg.act_layer, cfg.norm_eps, cfg.patch_bias)
    assert arch == ("space_only", True, "quick_gelu", 1e-5, False)
    assert (cfg.pos_interp, cfg.grad_checkpointing) == ("bicubic", True)  # run-time fields kept from base


def test_the_clip_file_selects_clip_and_loads_strictly_into_st_adapter(clip_file):
    """The configured backbone (the TimeSformer's vit_base_patch16, space_only) is replaced by the file's CLIP
    architecture; every tensor lands, the head is set aside, the adapters keep their zero residuals."""
    configured = BackboneConfig(name="vit_base_patch16", attention_type="space_only")
    model = ST_ADAPTER.build(configured, clip_file, 0, {"adapter": {"bottleneck": 16}}, "full")
    assert (model.config.embed_dim, model.config.pre_norm, model.config.norm_eps) == (64, True, 1e-5)
    assert model.patch_embed.proj.bias is None
    state = timm_clip_state()
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith("head."):
            assert torch.equal(own[key], value), key
    assert all(torch.count_nonzero(own[k]) == 0 for k in own if k.endswith("fc2.bias") and k.startswith("adapters."))
    # the same file without the switch does not fit the TimeSformer's layout: the strict load names the keys
    wrong = build_st_adapter(BackboneConfig(name="vit_micro_patch8", attention_type="space_only", embed_dim=64))
    from endofm.models.st_adapter import load_image_backbone

    with pytest.raises(BackboneLoadError, match="unexpected .*norm_pre"):
        load_image_backbone(wrong, clip_file)


def test_openai_layout_gives_the_same_tower(clip_file, tmp_path):
    timm = timm_clip_state()
    path = tmp_path / "openai.pt"
    torch.save(openai_clip_state(timm), path)
    assert file_backbone(path, BackboneConfig()) == file_backbone(clip_file, BackboneConfig())
    bare = load_backbone_state(path)
    assert set(bare) == {k for k in timm if not k.startswith("head.")}
    assert all(torch.equal(bare[k], timm[k]) for k in bare)


def test_clip_normalisation_turns_imagenet_input_into_clips(clip_file):
    """normalization: clip with a CLIP file: the backbone sees (x·s_in + m_in − m_clip) / s_clip of an
    ImageNet-normalised input; with any other start it takes the input as it is."""
    model = ST_ADAPTER.build(BackboneConfig(), clip_file, 0, {"normalization": "clip"}, "frozen").eval()
    pixels = torch.rand(1, 3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    imagenet = [(0.485, 0.229), (0.456, 0.224), (0.406, 0.225)]
    clip = [(0.48145466, 0.26862954), (0.4578275, 0.26130258), (0.40821073, 0.27577711)]
    fed = torch.stack([(pixels[:, c] - m) / s for c, (m, s) in enumerate(imagenet)], dim=1)
    want = torch.stack([(pixels[:, c] - m) / s for c, (m, s) in enumerate(clip)], dim=1)
    assert torch.allclose(model.renormalize(fed), want, atol=1e-6)
    plain = ST_ADAPTER.build(BackboneConfig(), clip_file, 0, {}, "frozen").eval()
    with torch.no_grad():
        assert torch.allclose(model(fed), plain(want), atol=1e-5)
    random_start = ST_ADAPTER.build(
        BackboneConfig(name="vit_micro_patch8", attention_type="space_only"), None, 0, {"normalization": "clip"}
    )
    assert isinstance(random_start.renormalize, torch.nn.Identity)


def test_paper_starts_endofm_and_vcl_from_svt_and_st_adapter_from_clip():
    cfg = load_workflow_config(paper())
    svt = "resources/raw/svt_k400/kinetics400_vitb_ssl.pth"
    clip = "resources/raw/clip_vitb16/open_clip_model.safetensors"
    assert [cfg.method_start(m) for m in ("endofm", "vcl", "st_adapter", "scratch")] == [svt, svt, clip, "random"]
    assert cfg.method_settings("vcl", "default").init == svt
    assert run_backbone(cfg, "st_adapter", "default") == (BackboneConfig(name="vit_base_patch16_clip"), clip)
    assert ("st_adapter", "default") not in pretrain_runs(cfg)  # CLIP is adapted, not pretrained
    assert cfg.finetune.methods == ["endofm", "scratch", "vcl", "st_adapter"]
    assert run_backbone_options(cfg, "st_adapter")["normalization"] == "clip"


def test_the_demo_keeps_random_starts():
    cfg = load_workflow_config(demo())
    assert {cfg.method_start(m) for m in ("endofm", "vcl", "st_adapter", "scratch")} == {"random"}
    assert ("st_adapter", "default") in pretrain_runs(cfg)


def test_st_adapter_fine_tunes_with_its_own_optimiser_and_decoder_under_paper():
    cfg = load_workflow_config(paper())
    for bench in ("polypdiag", "cvc12k", "kumc"):
        optim = cfg.finetune.task(bench, "st_adapter").train.optim
        got = (optim.name, optim.lr, optim.batch_scaled, optim.weight_decay, optim.bias_weight_decay)
        assert got == ("adamw", 1e-3, True, 0.01, False), bench
        assert (optim.schedule, optim.warmup_epochs) == ("cosine", 2.0), bench
        assert cfg.finetune.task(bench, "endofm").train.optim == cfg.finetune.task(bench).train.optim
    assert cfg.finetune.task("cvc12k", "st_adapter").decoder == "light"
    assert cfg.finetune.task("cvc12k", "endofm").decoder == "transunet"
    assert cfg.finetune.task("polypdiag", "st_adapter").mean == [0.485, 0.456, 0.406]
    assert cfg.finetune.task("kumc", "st_adapter").normalization == "imagenet"
    assert cfg.finetune.task("polypdiag", "st_adapter").train.epochs == cfg.finetune.polypdiag.train.epochs


def test_clip_normalisation_needs_imagenet_input_from_every_benchmark():
    data = paper()
    del data["finetune"]["per_method"]["st_adapter"]["benchmarks"]["kumc"]
    with pytest.raises(ConfigError, match=r"ST-Adapter's kumc runs must feed ImageNet-normalised RGB"):
        load_workflow_config(data)


def test_per_method_overlay_errors_name_the_key():
    data = paper()
    data["finetune"]["per_method"]["st_adapter"]["benchmarks"]["cvc"] = {}
    with pytest.raises(ConfigError, match=r"finetune\.per_method\.st_adapter\.benchmarks: unknown benchmark 'cvc'"):
        load_workflow_config(data)
    data = paper()
    data["finetune"]["per_method"]["st_adapter"]["optim"]["name"] = "lamb"
    with pytest.raises(ConfigError, match="lamb"):
        load_workflow_config(data)


def test_the_init_ablation_runs_every_pretrained_method_from_random_and_its_start():
    cfg = load_workflow_config(paper())
    assert cfg.ablation_variants("init") == {"default": "pretrained", "init-random": "random"}
    runs = ablation_runs(cfg, "init")
    cells = {(r.method, r.variant) for r in runs}
    assert cells == {(m, v) for m in ("endofm", "vcl", "st_adapter") for v in ("default", "init-random")}
    assert len(runs) == 3 * 2 * 3 * 3  # methods x arms x benchmarks x seeds (paper protocol, full mode)
    assert [cfg.method_start(m, "init-random") for m in ("endofm", "vcl", "st_adapter")] == ["random"] * 3
    # the random arm of ST-Adapter pretrains its image ViT (1-frame views) instead of adapting CLIP
    backbone, checkpoint = run_backbone(cfg, "st_adapter", "init-random")
    assert checkpoint == "results/pretrain/st_adapter/init-random/backbone.pt" and backbone.space_only
    settings = cfg.method_settings("st_adapter", "init-random")
    assert settings.init == "random" and set(settings.views.global_frames) == {1}


def test_an_ablation_arm_vcl_cannot_take_names_the_key():
    data = demo()
    data["ablations"]["losses"]["methods"] = ["endofm", "vcl"]
    with pytest.raises(ConfigError, match=r"ablations\.losses\.methods: vcl: .*not dm_weight"):
        load_workflow_config(data)
    data = demo()
    data["ablations"]["init"]["methods"] = ["endofm", "scratch"]
    with pytest.raises(ConfigError, match=r"'scratch' is not a pretrained method"):
        load_workflow_config(data)


def test_a_preset_named_in_an_overlay_replaces_the_resolved_architecture():
    """Naming vit_base_patch16_clip in pretrain.st_adapter.settings gives CLIP's pre-norm, QuickGELU, eps 1e-5
    and no patch bias, not the TimeSformer's resolved fields."""
    data = paper()
    data["pretrain"]["st_adapter"]["init"] = "random"
    data["pretrain"]["st_adapter"]["normalization"] = "task"
    data["pretrain"]["st_adapter"]["settings"] = {"backbone": {"name": "vit_base_patch16_clip"}}
    backbone = load_workflow_config(data).method_settings("st_adapter", "default").backbone
    got = (backbone.pre_norm, backbone.act_layer, backbone.norm_eps, backbone.patch_bias, backbone.drop_path_rate)
    assert got == (True, "quick_gelu", 1e-5, False, 0.0)


def test_vcl_starts_from_its_init_backbone(tmp_path):
    """VCL's init loads strictly into its backbone (the file's head set aside); random keeps the seeded draw."""
    from endofm.engine import DistInfo
    from endofm.models.vit import build_backbone
    from endofm.pretraining.vcl import VCLConfig, VCLObjective

    start = build_backbone("vit_micro_patch8")
    path = tmp_path / "start.pth"
    head = {"head.last_layer.weight": torch.ones(2, 2)}
    torch.save({**{f"backbone.{k}": v for k, v in start.state_dict().items()}, **head}, path)
    settings = dict(backbone=BackboneConfig(name="vit_micro_patch8"), num_concepts=4, local_topk=2, proj_dim=8)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    loaded = VCLObjective(VCLConfig(**settings, init=str(path)), info).build_model().backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in start.state_dict().items())
    drawn = VCLObjective(VCLConfig(**settings), info).build_model().backbone.state_dict()
    assert not torch.equal(drawn["pos_embed"], start.state_dict()["pos_embed"])
    with pytest.raises(Exception, match="not found"):
        VCLObjective(VCLConfig(**settings, init=str(tmp_path / "none.pth")), info).check()
