import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
import yaml

from endofm.config import ConfigError, check_fields, config_fields, from_dict, json_schema, setting, to_dict

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


@dataclass
class Bounded:
    """A config class with declared bounds."""

    count: int = setting(2, "a count", minimum=1)
    share: float = setting(0.5, "a share", exclusive_minimum=0, maximum=1)
    side: int = setting(16, "an even side", minimum=8, multiple_of=2)
    crf: int = setting(18, "a quality", minimum=0, maximum=51)
    sizes: tuple[int, ...] = setting((1, 2), "two sizes", min_items=2, max_items=2, each=dict(minimum=1))
    mode: str = setting("a", "a registry name", choices=("a", "b"))
    splits: dict[str, int] = setting(
        description="counts per split", factory=lambda: {"train": 2}, keys={"train": "training"}, each=dict(minimum=2)
    )
    limit: int | None = setting(None, "an optional cap", minimum=1)
    kind: Literal["x", "y"] = setting("x", "a kind")

    def __post_init__(self) -> None:
        check_fields(self)


@pytest.mark.parametrize(
    "data, key, message",
    [
        ({"count": 0}, "cfg.count", "cfg.count must be >= 1, got 0"),
        ({"share": 0}, "cfg.share", "cfg.share must be in (0, 1], got 0.0"),
        ({"side": 9}, "cfg.side", "cfg.side must be an even number >= 8, got 9"),
        ({"crf": 52}, "cfg.crf", "cfg.crf must be in 0..51, got 52"),
        ({"sizes": [1, 2, 3]}, "cfg.sizes", "cfg.sizes must have exactly 2 items, got (1, 2, 3)"),
        ({"sizes": [1, 0]}, "cfg.sizes[1]", "cfg.sizes[1] must be >= 1, got 0"),
        ({"mode": "c"}, "cfg.mode", "cfg.mode must be one of ['a', 'b'], got 'c'"),
        ({"splits": {"val": 2}}, "cfg.splits", "cfg.splits must have exactly the keys ['train'], got ['val']"),
        ({"splits": {"train": 1}}, "cfg.splits.train", "cfg.splits.train must be >= 2, got 1"),
        ({"limit": 0}, "cfg.limit", "cfg.limit must be >= 1, got 0"),
    ],
)
def test_from_dict_checks_declared_bounds_naming_the_key(data, key, message):
    """One line: the dotted key (its ``key`` for file:line, list items as [i]), the rule and the value."""
    with pytest.raises(ConfigError) as err:
        from_dict(Bounded, data, "cfg")
    assert (str(err.value), err.value.key) == (message, key)
    assert from_dict(Bounded, {"limit": None, "sizes": [3, 4]}).sizes == (3, 4)


def test_settings_built_in_code_are_held_to_the_same_bounds():
    with pytest.raises(ConfigError, match=r"^count must be >= 1, got 0$"):
        Bounded(count=0)
    with pytest.raises(ConfigError, match=r"^kind must be one of \['x', 'y'\], got 'z'$"):
        Bounded(kind="z")
    with pytest.raises(ConfigError, match=r"^sizes\[0\] must be >= 1, got 0$"):
        Bounded(sizes=(0, 1))


@dataclass
class Base:
    """Shared fields."""

    shared_a: int = setting(1, "first shared")
    shared_b: int = setting(2, "second shared")


@dataclass
class Derived(Base):
    """Its own fields placed among the shared ones, and a shared default changed."""

    own_first: int = setting(0, "goes first", before="shared_a")
    own_middle: int = setting(0, "after shared_a", after="shared_a")
    own_next: int = setting(0, "follows own_middle")
    shared_b: int = 5


def test_key_order_and_inherited_declarations():
    """``before``/``after`` keep a subclass's key order; a default changed in a subclass keeps its declaration."""
    assert [f.name for f in config_fields(Derived)] == ["own_first", "shared_a", "own_middle", "own_next", "shared_b"]
    assert list(to_dict(Derived())) == ["own_first", "shared_a", "own_middle", "own_next", "shared_b"]
    schema = json_schema(Derived)
    assert list(schema["properties"]) == ["own_first", "shared_a", "own_middle", "own_next", "shared_b"]
    assert schema["properties"]["shared_b"] == {"type": "integer", "default": 5, "description": "second shared"}


def test_json_schema_needs_a_description_for_every_key():
    @dataclass
    class Undocumented:
        """A class with a bare field."""

        size: int = 3

    with pytest.raises(TypeError, match=r"Undocumented\.size: no description"):
        json_schema(Undocumented)


def _schema():
    return yaml.safe_load((ROOT / "config/schema.yaml").read_text())


def test_checked_in_schema_is_generated_from_the_dataclasses():
    """config/schema.yaml is exactly what `endofm config schema` generates (byte for byte)."""
    from endofm.cli import schema_text

    assert (ROOT / "config/schema.yaml").read_text() == schema_text(), (
        "config/schema.yaml is stale: run `endofm config schema --write` in the repository root and commit it"
    )


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_validate(name):
    from endofm.settings import load_workflow_config

    data = yaml.safe_load((ROOT / "config" / name).read_text())
    jsonschema.validate(data, _schema())
    load_workflow_config(data)


def _resolve(schema: dict, node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _closed_mappings(schema: dict, node: Any, data: Any, path: str):
    """Every mapping of ``data`` whose schema takes a fixed set of keys, with its path."""
    node = _resolve(schema, node)
    if not isinstance(data, dict) or not isinstance(node, dict):
        return
    for branch in node.get("anyOf", []):
        if _resolve(schema, branch).get("type") == "object":
            yield from _closed_mappings(schema, branch, data, path)
    if node.get("additionalProperties") is False:
        yield path, data
    for key, value in data.items():
        sub = node.get("properties", {}).get(key, node.get("additionalProperties"))
        yield from _closed_mappings(schema, sub, value, f"{path}.{key}")


def test_config_schema_command_prints_and_writes_the_schema(tmp_path, monkeypatch, capsys):
    from endofm.cli import main, schema_text

    assert main(["config", "schema"]) == 0
    assert capsys.readouterr().out == schema_text()
    monkeypatch.chdir(tmp_path)
    assert main(["config", "schema", "--write"]) == 1  # no config/ folder here
    assert "config: not found; run `endofm config schema --write` in the repository root" in capsys.readouterr().err
    (tmp_path / "config").mkdir()
    assert main(["config", "schema", "--write"]) == 0
    assert (tmp_path / "config/schema.yaml").read_text() == schema_text()
    assert schema_text().startswith("# Generated by `endofm config schema --write` from the config dataclasses")


@pytest.mark.parametrize("name", ["config/config.yaml", "config/paper.yaml", "tests/configs/tiny.yaml"])
def test_schema_rejects_a_misspelt_key_at_every_level(name):
    """A misspelt key fails the schema in every section, overlay and fixed-key mapping the config holds."""
    data, schema = yaml.safe_load((ROOT / name).read_text()), _schema()
    validator = jsonschema.Draft202012Validator(schema)
    closed = list(_closed_mappings(schema, schema, data, "config"))
    assert len(closed) >= 15, [path for path, _ in closed]
    for path, mapping in closed:
        mapping["zz_misspelt"] = 1
        assert any("zz_misspelt" in e.message for e in validator.iter_errors(data)), path
        del mapping["zz_misspelt"]
    assert not list(validator.iter_errors(data))


def test_every_config_class_is_closed_and_lists_its_fields():
    """Each config class has one $defs entry listing exactly its fields, unknown keys rejected."""
    from endofm.settings import WorkflowConfig

    schema, seen = _schema(), set()

    def visit(cls: type) -> None:
        if cls.__name__ in seen:
            return
        seen.add(cls.__name__)
        entry = schema if cls is WorkflowConfig else schema["$defs"][cls.__name__]
        assert entry["additionalProperties"] is False and entry["type"] == "object", cls
        assert list(entry["properties"]) == [f.name for f in config_fields(cls)], cls
        for f in dataclasses.fields(cls):
            nested = [f.type] if dataclasses.is_dataclass(f.type) else []
            for t in nested + [a for a in getattr(f.type, "__args__", ()) if dataclasses.is_dataclass(a)]:
                visit(t)

    visit(WorkflowConfig)
    assert seen - {"WorkflowConfig"} <= set(schema["$defs"])


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
        (
            {"variants": {"a": {}}, "benchmarks": ["kumc2"]},
            r"ablations\.x\.benchmarks\[0\] must be one of \['polypdiag', 'cvc12k', 'kumc'\], got 'kumc2'",
        ),
        ({"variants": {"a": {}}, "protocols": ["paper"]}, r"^ablations\.x\.protocols: \['paper'\]; allowed: clean$"),
        ({"variants": {"a": {}}, "modes": []}, r"ablations\.x\.modes must have at least 1 item, got \[\]"),
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
    with pytest.raises(
        ConfigError,
        match=r"^config\.finetune\.label_fraction_benchmarks\[0\] must be one of \['polypdiag', .*got 'cvc'",
    ):
        load_workflow_config(data)
    data["finetune"].update(label_fraction_methods=None, label_fraction_benchmarks=None)
    quarter = [r for r in runs if r.label_fraction == 0.25]
    assert {r.mode for r in quarter} == {"frozen"}
    assert quarter[0].path.endswith("/frozen/seed0-labels25")
    assert all(r.path.endswith("/seed0") for r in runs if r.label_fraction == 1.0)  # today's paths
    data["finetune"]["label_fractions"] = [0.0, 1.0]
    with pytest.raises(ConfigError, match=r"^config\.finetune\.label_fractions\[0\] must be in \(0, 1\], got 0\.0$"):
        load_workflow_config(data)
    data["finetune"]["label_fractions"] = [0.5, 0.5]
    with pytest.raises(ConfigError, match=r"^finetune\.label_fractions: expected distinct values, got \[0\.5, 0\.5\]"):
        load_workflow_config(data)


def _properties(node: dict, path: str):
    for key, sub in (node.get("properties") or {}).items():
        yield f"{path}.{key}", sub
        yield from _properties(sub, f"{path}.{key}")
        if isinstance(sub.get("additionalProperties"), dict):
            yield from _properties(sub["additionalProperties"], f"{path}.{key}.*")


def test_every_schema_key_is_documented():
    """Every property of the schema, at every level and in every $defs entry, has a description."""
    schema = _schema()
    nodes = [("config", schema), *((f"$defs.{name}", node) for name, node in schema["$defs"].items())]
    missing = [path for where, node in nodes for path, sub in _properties(node, where) if "description" not in sub]
    assert missing == [] and all(node.get("description") for _, node in nodes)


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
        (
            {"pretrain_fractions": [0.5, 1.5]},
            r"^config\.finetune\.pretrain_fractions\[1\] must be in \[0, 1\], got 1\.5",
        ),
        (
            {"pretrain_fractions": [0.5, 0.5]},
            r"^finetune\.pretrain_fractions: expected distinct values, got \[0\.5, 0\.5\]",
        ),
        (
            {"pretrain_fraction_modes": ["linear"]},
            r"^config\.finetune\.pretrain_fraction_modes\[0\] must be one of \['full', 'frozen'\], got 'linear'",
        ),
        (
            {"pretrain_fraction_benchmarks": ["kvasir"]},
            r"^config\.finetune\.pretrain_fraction_benchmarks\[0\] must be one of \['polypdiag', .*got 'kvasir'",
        ),
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
    data["pretrain"]["st_adapter"]["init"] = "clip.pth"
    with pytest.raises(ConfigError, match=r"^finetune\.pretrain_fraction_methods: 'st_adapter' takes its weights"):
        load_workflow_config(data)
