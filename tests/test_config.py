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
