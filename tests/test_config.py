import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import jsonschema
import pytest
import yaml

from endofm.config import ConfigError, from_dict, to_dict

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Inner:
    size: int = 3


@dataclass
class Outer:
    name: str
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"
    span: tuple[int, int] = (1, 2)
    counts: dict[str, int] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    maybe: str | None = None


def test_from_dict_fills_defaults_and_converts():
    obj = from_dict(Outer, {"name": "x", "rate": 1, "span": [4, 5], "inner": {"size": 7}})
    assert obj == Outer(name="x", rate=1.0, span=(4, 5), inner=Inner(7))
    assert isinstance(obj.rate, float) and isinstance(obj.span, tuple)
    assert from_dict(Outer, to_dict(obj)) == obj


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "rtae": 1.0}, r"cfg: unknown key 'rtae' \(did you mean 'rate'\?\)$"),
        ({}, r"cfg: missing required key 'name'"),
        ({"name": "x", "rate": "fast"}, r"cfg\.rate: expected a number"),
        ({"name": "x", "mode": "c"}, r"cfg\.mode: expected one of \['a', 'b'\]"),
        ({"name": "x", "span": [1]}, r"cfg\.span: expected 2 items"),
        ({"name": "x", "counts": {"a": "1"}}, r"cfg\.counts\.a: expected an integer"),
        ({"name": "x", "inner": {"sise": 1}}, r"cfg\.inner: unknown key 'sise' \(did you mean 'size'\?\)$"),
        ({"name": "x", "rate": True}, r"cfg\.rate: expected a number"),
    ],
)
def test_from_dict_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data, "cfg")


def _schema():
    return yaml.safe_load((ROOT / "config/schema.yaml").read_text())


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_validate(name):
    from endofm.settings import load_workflow_config

    data = yaml.safe_load((ROOT / "config" / name).read_text())
    jsonschema.validate(data, _schema())
    load_workflow_config(data)


def test_schema_rejects_misspelt_key():
    data = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    data["clips"]["clip_lenght"] = 3
    with pytest.raises(jsonschema.ValidationError, match="clip_lenght"):
        jsonschema.validate(data, _schema())


def _assert_agree(cls, props: dict, where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    assert set(props["properties"]) == set(fields), where
    assert props["additionalProperties"] is False, where
    for name in fields:
        if dataclasses.is_dataclass(hints[name]):
            _assert_agree(hints[name], props["properties"][name], f"{where}.{name}")


def test_schema_and_dataclasses_agree():
    """Every schema section lists exactly the fields of its dataclass (recursively), so neither can drift."""
    from endofm.settings import WorkflowConfig

    _assert_agree(WorkflowConfig, _schema(), "config")


def test_pretrain_variants_are_overlays():
    from endofm.settings import load_workflow_config

    data = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    data["pretrain"]["variants"] = {"default": {}, "no_dm": {"dm_weight": 0.0, "views": {"local_size": 16}}}
    stage = load_workflow_config(data).pretrain
    base, ablation = stage.variant("default"), stage.variant("no_dm")
    assert ablation.dm_weight == 0.0 and ablation.views.local_size == 16
    assert ablation.views.global_size == base.views.global_size and ablation.epochs == base.epochs
    data["pretrain"]["variants"]["typo"] = {"dm_wieght": 0.0}
    with pytest.raises(
        ConfigError, match=r"pretrain\.variants\.typo: unknown key 'dm_wieght' \(did you mean 'dm_weight'\?\)"
    ):
        load_workflow_config(data)


def test_typed_checks_beyond_the_schema():
    from endofm.settings import load_workflow_config

    data = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    data["data"]["pretrain_sources"] = ["hyper_kvasir"]
    with pytest.raises(ConfigError, match="'hyper_kvasir' is a real source but data.origin is 'synthetic'"):
        load_workflow_config(data)
    data["data"]["pretrain_sources"] = ["no_such_source"]
    with pytest.raises(ConfigError, match="unknown source 'no_such_source'"):
        load_workflow_config(data)


def _tiny():
    return yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())


def test_ablations_are_named_variant_groups():
    from endofm.settings import ablation_runs, load_workflow_config

    cfg = load_workflow_config(_tiny())
    assert cfg.ablation_variants("losses") == {
        "losses-cv_only": "cv_only",
        "losses-dm_only": "dm_only",
        "default": "both",
    }
    assert cfg.pretrain_variant("losses-cv_only").dm_weight == 0.0
    assert cfg.pretrain_variant("losses-cv_only").cv_weight == 1.0
    assert cfg.pretrain_variant("init-continued").init_head is False
    assert cfg.pretrain_variant("losses-dm_only").epochs == cfg.pretrain.variant("default").epochs
    assert set(cfg.pretrain_overlays()) == {"default", "losses-cv_only", "losses-dm_only", "init-continued"}
    runs = ablation_runs(cfg, "losses")
    assert {(r.benchmark, r.method, r.protocol, r.mode, r.seed) for r in runs} == {
        ("polypdiag", "endofm", "clean", "frozen", 0)
    }
    assert [r.variant for r in runs] == ["losses-cv_only", "losses-dm_only", "default"]
    with pytest.raises(ConfigError, match="no ablation 'nope'"):
        cfg.ablation_variants("nope")


@pytest.mark.parametrize(
    "ablation, message",
    [
        ({"variants": {"a": "missing"}}, r"ablations\.x\.variants\.a: 'missing' is not in pretrain\.variants"),
        (
            {"variants": {"a": {"dm_wieght": 0.0}}},
            r"ablations\.x\.variants\.a: unknown key 'dm_wieght' \(did you mean 'dm_weight'\?\)",
        ),
        ({"variants": {"a-b": {}}}, r"ablations\.x\.variants\.a-b: an arm name takes letters"),
        ({"variants": {"a": "default", "b": "default"}}, "two arms reuse the same pretraining variant"),
        ({"variants": {"a": {}}, "benchmarks": ["kumc2"]}, r"ablations\.x\.benchmarks: \['kumc2'\]"),
        ({"variants": {"a": {}}, "modes": []}, r"ablations\.x\.modes: empty"),
    ],
)
def test_bad_ablations_fail_naming_the_key(ablation, message):
    from endofm.settings import load_workflow_config

    data = _tiny()
    data["ablations"] = {"x": ablation}
    with pytest.raises(ConfigError, match=message):
        load_workflow_config(data)


def test_label_fractions_expand_the_matrix_in_their_modes():
    from endofm.settings import finetune_runs, load_workflow_config

    data = _tiny()
    data["finetune"].update(label_fractions=[0.25, 1.0], label_fraction_modes=["frozen"])
    runs = finetune_runs(load_workflow_config(data))
    full = 3 * len(data["finetune"]["methods"]) * 2  # benchmarks x methods x modes, one seed and protocol
    assert len(runs) == full + full // 2  # the frozen runs once more at 25 %
    data["finetune"]["label_fraction_methods"] = ["scratch"]
    runs = finetune_runs(load_workflow_config(data))
    assert {r.method for r in runs if r.label_fraction < 1} == {"scratch"} and len(runs) == full + 3
    data["finetune"]["label_fraction_methods"] = ["vlc"]
    with pytest.raises(ConfigError, match=r"^finetune\.label_fraction_methods: \['vlc'\] are not in finetune\.methods"):
        load_workflow_config(data)
    data["finetune"].update(label_fraction_methods=["scratch"], label_fraction_benchmarks=["polypdiag", "kumc"])
    runs = finetune_runs(load_workflow_config(data))
    assert sorted(r.benchmark for r in runs if r.label_fraction < 1) == ["kumc", "polypdiag"]
    assert len(runs) == full + 2
    data["finetune"]["label_fraction_benchmarks"] = ["cvc"]
    with pytest.raises(ConfigError, match=r"^finetune\.label_fraction_benchmarks: \['cvc'\]; allowed: polypdiag"):
        load_workflow_config(data)
    data["finetune"].update(label_fraction_methods=None, label_fraction_benchmarks=None)
    quarter = [r for r in runs if r.label_fraction == 0.25]
    assert {r.mode for r in quarter} == {"frozen"}
    assert quarter[0].path.endswith("/frozen/seed0-labels25")
    assert all(r.path.endswith("/seed0") for r in runs if r.label_fraction == 1.0)  # today's paths
    data["finetune"]["label_fractions"] = [0.0, 1.0]
    with pytest.raises(ConfigError, match=r"finetune\.label_fractions: expected distinct values in \(0, 1\]"):
        load_workflow_config(data)


def _properties(node: dict, path: str):
    for key, sub in (node.get("properties") or {}).items():
        yield f"{path}.{key}", sub
        yield from _properties(sub, f"{path}.{key}")
        if isinstance(sub.get("additionalProperties"), dict):
            yield from _properties(sub["additionalProperties"], f"{path}.{key}.*")


def test_every_schema_key_is_documented():
    """Every property of the schema, at every level, has a description."""
    missing = [path for path, node in _properties(_schema(), "config") if "description" not in node]
    assert missing == []


def test_pretrain_fractions_add_snapshot_runs():
    """finetune.pretrain_fractions: frozen runs of Endo-FM from its snapshots on PolypDiag and CVC-12k (the
    fraction-1 runs are the matrix's), the snapshots in its pretraining settings, run folders seed<k>-pt25."""
    from endofm.settings import finetune_runs, load_workflow_config, run_backbone
    from endofm.tasks.finetune import RunSpec

    data = _tiny()
    data["finetune"].update(methods=["endofm", "scratch", "vcl"], seeds=[0, 1])
    before = finetune_runs(load_workflow_config(data))
    data["finetune"]["pretrain_fractions"] = [0.0, 0.25, 0.5, 1.0]
    cfg = load_workflow_config(data)
    runs = finetune_runs(cfg)
    added = [r for r in runs if r not in before]
    assert len(runs) == len(before) + 3 * 2 * 2  # fractions below 1 × benchmarks × seeds
    assert {(r.benchmark, r.method, r.mode, r.pretrain_fraction) for r in added} == {
        (b, "endofm", "frozen", f) for b in ("polypdiag", "cvc12k") for f in (0.0, 0.25, 0.5)
    }
    assert cfg.method_settings("endofm", "default").snapshots == [0.0, 0.25, 0.5]
    assert cfg.method_settings("vcl", "default").snapshots == []
    assert (
        run_backbone(cfg, "endofm", "default", 0.25)[1] == "results/pretrain/endofm/default/snapshots/backbone_pt25.pt"
    )
    assert run_backbone(cfg, "endofm", "default")[1] == "results/pretrain/endofm/default/backbone.pt"
    with pytest.raises(ConfigError, match="vcl/default has no pretraining snapshot at 0.25"):
        run_backbone(cfg, "vcl", "default", 0.25)
    paths = {r.path for r in added}
    assert (
        "cvc12k/endofm/default/clean/frozen/seed1-pt0" in paths
        and "polypdiag/endofm/default/clean/frozen/seed0-pt25" in paths
    )
    assert RunSpec("kumc", "endofm", "default", "clean", "full", 2, 0.25, 0.5).path.endswith("/seed2-pt50-labels25")
    data["finetune"]["pretrain_fraction_methods"] = ["endofm", "vcl"]
    assert load_workflow_config(data).method_settings("vcl", "default").snapshots == [0.0, 0.25, 0.5]


@pytest.mark.parametrize(
    ("update", "message"),
    [
        (
            {"pretrain_fraction_methods": ["scratch"]},
            r"^finetune\.pretrain_fraction_methods: 'scratch' has no pretraining",
        ),
        (
            {"pretrain_fraction_methods": ["vcl"]},
            r"^finetune\.pretrain_fraction_methods: 'vcl' is not in finetune\.methods",
        ),
        ({"pretrain_fractions": [0.5, 1.5]}, r"^finetune\.pretrain_fractions: expected distinct values in \[0, 1\]"),
        ({"pretrain_fraction_modes": ["linear"]}, r"^finetune\.pretrain_fraction_modes: \['linear'\]"),
        ({"pretrain_fraction_benchmarks": ["kvasir"]}, r"^finetune\.pretrain_fraction_benchmarks: \['kvasir'\]"),
    ],
)
def test_bad_pretrain_fractions_fail_naming_the_key(update, message):
    from endofm.settings import load_workflow_config

    data = _tiny()
    data["finetune"].update({"methods": ["endofm", "scratch"], "pretrain_fractions": [0.0, 1.0], **update})
    with pytest.raises(ConfigError, match=message):
        load_workflow_config(data)


def test_pretrain_fraction_methods_with_a_weights_file_fail():
    from endofm.settings import load_workflow_config

    data = _tiny()
    data["finetune"].update(methods=["endofm", "st_adapter"], pretrain_fractions=[0.5, 1.0])
    data["finetune"]["pretrain_fraction_methods"] = ["st_adapter"]
    data["pretrain"]["st_adapter"]["checkpoint"] = "clip.pth"
    with pytest.raises(ConfigError, match=r"^finetune\.pretrain_fraction_methods: 'st_adapter' takes its weights"):
        load_workflow_config(data)
