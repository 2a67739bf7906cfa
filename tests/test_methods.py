"""The method registry (endofm/methods.py) and its wiring: settings per method, what trains in each mode,
the pretraining command's dispatch on the method."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml
from test_config import _schema
from test_pretrain import TINY as ENDOFM_TINY
from test_pretrain import make_clips

from endofm.cli import main as cli_main
from endofm.config import ConfigError, config_fields, to_dict
from endofm.methods import METHODS, task_backbone
from endofm.models.heads import VideoClassifier
from endofm.models.vit import BackboneConfig
from endofm.pretraining.endofm import EndoFMObjective
from endofm.pretraining.vcl import SHARED_SETTINGS, VCLConfig
from endofm.settings import load_workflow_config, pretrain_runs, run_backbone, run_backbone_options
from endofm.tasks.finetune import set_trainable, train_mode
from endofm.tasks.runs import build_run_backbone

ROOT = Path(__file__).resolve().parents[1]
MICRO = BackboneConfig(name="vit_micro_patch8")


def demo() -> dict:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def test_st_adapter_with_transunet_fails_at_start_naming_the_key():
    data = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    del data["finetune"]["per_method"]["st_adapter"]["benchmarks"]["cvc12k"]["decoder"]
    with pytest.raises(ConfigError, match=r"^finetune\.cvc12k\.decoder: st_adapter cannot run the transunet decoder"):
        load_workflow_config(data)
    data["finetune"]["per_method"]["st_adapter"]["benchmarks"]["cvc12k"]["decoder"] = "transunet"
    where = r"^finetune\.per_method\.st_adapter\.benchmarks\.cvc12k\.decoder: st_adapter cannot run"
    with pytest.raises(ConfigError, match=where):
        load_workflow_config(data)


def test_every_method_resolves_on_the_shipped_configs():
    for name in ("config.yaml", "paper.yaml"):
        cfg = load_workflow_config(yaml.safe_load((ROOT / "config" / name).read_text()))
        expected = ["endofm", "scratch", "vcl", "st_adapter"]
        assert cfg.finetune.methods == expected
        pretrained = ("endofm", "vcl", "st_adapter") if name == "config.yaml" else ("endofm", "vcl")
        for method in pretrained:  # paper: ST-Adapter adapts CLIP without pretraining (test_start_same.py)
            backbone, checkpoint = run_backbone(cfg, method, "default")
            assert checkpoint == f"results/pretrain/{method}/default/backbone.pt"
            size = ("name", "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
            reference = cfg.pretrain.settings.backbone  # one backbone size for every method
            assert [getattr(backbone, k) for k in size] == [getattr(reference, k) for k in size], method
        assert run_backbone(cfg, "scratch", "none") == (cfg.pretrain.settings.backbone, None)
        # a pretraining job for every pretrained method of the matrix, none for one outside it
        assert ("vcl", "default") in pretrain_runs(cfg)
        assert (("st_adapter", "default") in pretrain_runs(cfg)) == (name == "config.yaml")
        assert run_backbone_options(cfg, "vcl") == {}
        assert run_backbone_options(cfg, "st_adapter")["adapter"]["layout"] == "12x384"


def test_baselines_take_the_endofm_budget():
    """VCL takes the shared settings (backbone, epochs, batch, steps, lr, ...) from pretrain.settings unless
    its section sets them; ST-Adapter's image ViT pretrains with the Endo-FM settings on 1-frame views."""
    data = demo()
    data["pretrain"]["settings"].update(epochs=7, max_steps_per_epoch=3)
    cfg = load_workflow_config(data)
    endofm, vcl = cfg.pretrain.settings, cfg.method_settings("vcl", "default")
    assert isinstance(vcl, VCLConfig)
    for key in SHARED_SETTINGS:
        assert getattr(vcl, key) == getattr(endofm, key), key
    assert (vcl.views.frames, vcl.num_concepts, vcl.local_start_epoch) == (4, 32, 5)  # its own section

    st = cfg.method_settings("st_adapter", "default")
    assert st.views.global_frames == (1, 1) and st.views.local_frames == (1, 1, 1, 1)
    expected = {**to_dict(endofm), "views": {**to_dict(endofm.views), "global_frames": [1, 1], "local_frames": [1] * 4}}
    if "init" in expected:  # an image ViT from random weights (SVT's video ViT does not fit it)
        expected["init"] = "random"
    if "attention_type" in expected["backbone"]:
        expected["backbone"]["attention_type"] = "space_only"
    assert to_dict(st) == expected
    assert st.views.global_size == endofm.views.global_size and st.epochs == 7

    data["pretrain"]["vcl"]["epochs"] = 2
    data["pretrain"]["vcl"]["warmup_epochs"] = 1
    assert load_workflow_config(data).method_settings("vcl", "default").epochs == 2
    data["pretrain"]["vcl"]["num_concept"] = 3
    with pytest.raises(
        ConfigError, match=r"pretrain\.vcl: unknown key 'num_concept' \(did you mean 'num_concepts'\?\)"
    ):
        load_workflow_config(data)


def test_an_image_checkpoint_replaces_the_st_adapter_pretraining():
    data = demo()
    data["pretrain"]["st_adapter"]["init"] = "weights/clip_vitb16.pth"
    cfg = load_workflow_config(data)
    assert run_backbone(cfg, "st_adapter", "default")[1] == "weights/clip_vitb16.pth"
    assert [m for m, _ in pretrain_runs(cfg)] == ["endofm", "vcl"]
    data["finetune"]["methods"] = ["endofm", "scratch"]
    assert pretrain_runs(load_workflow_config(data)) == [("endofm", "default")]


def test_unknown_method_names_the_known_ones():
    data = demo()
    data["finetune"]["methods"] = ["endofm", "vlc"]
    with pytest.raises(ConfigError, match="'vlc' is neither a method \\(endofm, scratch, vcl, st_adapter\\)"):
        load_workflow_config(data)


def test_schema_lists_the_vcl_settings():
    schema = _schema()
    assert schema["$defs"]["PretrainStage"]["properties"]["vcl"]["$ref"] == "#/$defs/VCLConfig"
    vcl = schema["$defs"]["VCLConfig"]
    assert list(vcl["properties"]) == [f.name for f in config_fields(VCLConfig)] and "required" not in vcl
    backbone = vcl["properties"]["backbone"]["$ref"]  # the same backbone keys as pretrain.settings
    assert backbone == schema["$defs"]["PretrainConfig"]["properties"]["backbone"]["$ref"] == "#/$defs/BackboneConfig"
    data = demo()
    data["pretrain"]["vcl"]["backbone"] = {"nme": "vit_tiny_patch8"}
    with pytest.raises(jsonschema.ValidationError, match="'nme' was unexpected"):
        jsonschema.validate(data, _schema())


def test_video_vit_methods_train_everything_or_only_the_head():
    model = VideoClassifier(build_run_backbone(MICRO, None, 0, "vcl"), 2)
    for mode, backbone_trains in (("full", True), ("frozen", False)):
        set_trainable(model, mode, "vcl")
        assert all(p.requires_grad == backbone_trains for p in model.backbone.parameters())
        assert all(p.requires_grad for p in model.head.parameters())
        train_mode(model, mode, "vcl")
        assert model.backbone.training == backbone_trains and model.head.training
    assert task_backbone("my_checkpoint") is task_backbone("endofm")  # a finetune.checkpoints name


def test_st_adapter_trains_only_its_adapters_and_the_head():
    st_adapter = pytest.importorskip("endofm.models.st_adapter")
    image_vit = BackboneConfig(name="vit_micro_patch8", attention_type="space_only")
    backbone = build_run_backbone(image_vit, None, 0, "st_adapter", {"adapter": {"layout": "12x384", "bottleneck": 8}})
    assert isinstance(backbone, st_adapter.STAdapterBackbone)
    model = VideoClassifier(backbone, 2)
    adapters = {id(p) for p in backbone.adapter_parameters()}
    assert adapters
    set_trainable(model, "full", "st_adapter")
    assert all(p.requires_grad == (id(p) in adapters) for p in backbone.parameters())
    train_mode(model, "full", "st_adapter")
    assert not model.backbone.training and model.head.training
    # frozen mode: no adapters, only the head trains
    options = {"adapter": {"layout": "12x384", "bottleneck": 8}}
    model = VideoClassifier(build_run_backbone(image_vit, None, 0, "st_adapter", options, "frozen"), 2)
    assert model.backbone.adapter_parameters() == []
    set_trainable(model, "frozen", "st_adapter")
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())


def test_pretraining_command_dispatches_on_the_method(tmp_path):
    """`method: st_adapter` in the settings file: Endo-FM's objective (1-frame views); the run records the
    method and its parameter counts."""
    clips = make_clips(tmp_path / "clips", 2, frames=8, size=32)
    settings = {**ENDOFM_TINY, "epochs": 1, "warmup_epochs": 0, "checkpoint_every": 0}
    settings["views"] = {**settings["views"], "global_frames": [1, 1], "local_frames": [1, 1]}
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump({"method": "st_adapter", "pretrain": settings}))
    torch.set_num_threads(1)
    assert cli_main(["pretrain", "--config", str(config), "--clips", str(clips), "--out", str(tmp_path / "run")]) == 0
    saved = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    record = json.loads((tmp_path / "run/run.json").read_text())
    assert saved["method"] == record["method"] == "st_adapter" and record["objective"] == "endofm"
    assert saved["run"]["parameters"] == record["parameters"] > record["backbone_parameters"] > 0
    assert METHODS["st_adapter"].objective is EndoFMObjective and METHODS["scratch"].objective is None


def test_the_longest_pretraining_gets_the_highest_priority():
    """Priority 10 + step cost x epochs: on the demo (15 epochs) VCL 10 + 1.9 x 15, Endo-FM 10 + 15, ST-Adapter
    10 + 0.25 x 15, all above the data stage's 10; an arm with fewer epochs ranks below its method's default."""
    data = demo()
    data["ablations"]["short"] = {"variants": {"e4": {"epochs": 4}}, "benchmarks": ["polypdiag"]}
    cfg = load_workflow_config(data)
    epochs = data["pretrain"]["settings"]["epochs"]
    assert cfg.pretrain_priority("vcl", "default") == pytest.approx(10 + 1.9 * epochs)
    assert cfg.pretrain_priority("endofm", "default") == pytest.approx(10 + epochs)
    assert cfg.pretrain_priority("st_adapter", "default") == pytest.approx(10 + 0.25 * epochs)
    assert cfg.pretrain_priority("endofm", "short-e4") == pytest.approx(14)
