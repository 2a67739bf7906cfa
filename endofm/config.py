"""Typed configuration: each module owns a dataclass of its settings; this module builds them.

Each setting is declared once, as a dataclass field made with :func:`setting`: its default, its
one-line description and its bounds. The workflow's YAML and the command line both go through
:func:`from_dict`, which checks types and those bounds, so a misspelt, mistyped or out-of-range key
fails with its dotted name whichever way the settings arrive; :func:`json_schema` writes the same
declarations as ``config/schema.yaml`` (``endofm config schema --write``), which Snakemake checks at
start. :func:`merge` applies an overlay of settings, :func:`config_hash` names a set of settings by a
short stable hash.

Layer: foundation (docs/architecture.md). May import: :mod:`endofm.errors` only.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from endofm.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A configuration value is unknown, missing or of the wrong type; the message names the key
    (``key``: its dotted path, where known)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` applied recursively (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config_hash(settings: Any, digits: int = 12) -> str:
    """The first ``digits`` hex digits of the sha256 of ``settings`` as sorted JSON: stable, and key order
    does not matter. Fine-tuning runs record 12 (``run.json``, metrics files, checkpoints, compared on
    resumption); the report's provenance line shows the workflow config's with 16."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:digits]


def unknown_key_message(where: str, unknown: list[str], valid: list[str]) -> str:
    """``where: unknown key 'k' (did you mean 'key'?)``, the nearest valid key found by :mod:`difflib`;
    all valid keys listed when none is near."""
    parts = []
    for key in unknown:
        near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}?" if near else f"expected one of {', '.join(valid)}"
        parts.append(f"{key!r} ({hint})")
    return f"{where}: unknown key{'s' if len(parts) > 1 else ''} {', '.join(parts)}"


# ----------------------------------------------------------------------------------------------------
# Declaring a setting: default, description and bounds in one place

#: The bounds :func:`setting` takes (snake case) by their JSON-schema names.
_BOUND_NAMES = {
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusive_minimum": "exclusiveMinimum",
    "exclusive_maximum": "exclusiveMaximum",
    "multiple_of": "multipleOf",
    "min_items": "minItems",
    "max_items": "maxItems",
    "min_length": "minLength",
    "choices": "enum",
}


def _bound_names(given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(_BOUND_NAMES))
    if unknown:
        raise TypeError(f"setting(): unknown bounds {unknown}; known: {', '.join(_BOUND_NAMES)}")
    return {_BOUND_NAMES[k]: v for k, v in given.items()}


def setting(
    default: Any = dataclasses.MISSING,
    description: str = "",
    *,
    factory: Callable[[], Any] | Any = dataclasses.MISSING,
    each: dict[str, Any] | None = None,
    keys: dict[str, str] | None = None,
    overlay: type | None = None,
    before: str | None = None,
    after: str | None = None,
    **bounds: Any,
) -> Any:
    """A field of a config dataclass: its ``default`` (or ``factory``), its one-line ``description`` and its
    bounds, the one declaration :func:`from_dict`, :func:`check_fields` and :func:`json_schema` read.

    Bounds: ``minimum``, ``maximum``, ``exclusive_minimum``, ``exclusive_maximum``, ``multiple_of`` (numbers);
    ``min_items``, ``max_items`` (lists and mappings); ``min_length`` (strings); ``choices``, the allowed
    values (a registry's mapping is read when checking, so it stays current). ``each``: the bounds of every
    item of a list or value of a mapping; ``keys``: the fixed keys of a mapping, all required, with their
    descriptions; ``overlay``: each ``dict[str, Any]`` of the field's type holds keys of that config class
    (nested, all optional); ``before``/``after``: the field's place in the key order (:func:`config_fields`).
    A field redeclared with a plain default (a subclass changing it) keeps its base's declaration.
    """
    metadata = {"description": description, "bounds": _bound_names(bounds), "each": _bound_names(each or {})}
    extra = {"keys": keys, "overlay": overlay, "before": before, "after": after}
    metadata |= {k: v for k, v in extra.items() if v is not None}
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def _placed(f: dataclasses.Field) -> str | None:
    return f.metadata.get("before") or f.metadata.get("after")


@functools.cache
def config_fields(cls: type) -> tuple[dataclasses.Field, ...]:
    """The fields of config dataclass ``cls`` in key order (:func:`to_dict`, the schema): the dataclass's
    order (inherited fields first), except that a field declared with ``before=``/``after=`` an inherited
    field's name goes there, with the unplaced fields declared after it. A class whose shared fields moved
    into a base so keeps the key order its settings files and Snakemake's params had."""
    fields = list(dataclasses.fields(cls))
    blocks: list[list[dataclasses.Field]] = []
    for f in fields:
        if _placed(f):
            blocks.append([f])
        elif blocks:
            blocks[-1].append(f)
    moved = {f.name for block in blocks for f in block}
    order = [f for f in fields if f.name not in moved]
    for block in blocks:
        names = [f.name for f in order]
        anchor = _placed(block[0])
        if anchor not in names:
            raise TypeError(f"{cls.__qualname__}.{block[0].name}: no field {anchor!r} to place it by")
        at = names.index(anchor) + (1 if block[0].metadata.get("after") else 0)
        order[at:at] = block
    return tuple(order)


@functools.cache
def _declaration(cls: type, name: str) -> dict[str, Any]:
    """The :func:`setting` metadata of field ``name`` of ``cls``: its own, else (a field redeclared to change
    its default) the nearest base class's."""
    for klass in cls.__mro__:
        f = vars(klass).get("__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata.get("description"):
            return dict(f.metadata)
    return {}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_OPERATORS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


def _num(x: float) -> str:
    return f"{x:g}"


def _number_rule(value: float, bounds: dict[str, Any]) -> str | None:
    """What a number breaking ``bounds`` must be (``"be in [0, 1]"``, ``"be an even number >= 16"``), else None."""
    lo = next(((k, bounds[k]) for k in ("minimum", "exclusiveMinimum") if k in bounds), None)
    hi = next(((k, bounds[k]) for k in ("maximum", "exclusiveMaximum") if k in bounds), None)
    step = bounds.get("multipleOf")
    ok = (
        (lo is None or (value >= lo[1] if lo[0] == "minimum" else value > lo[1]))
        and (hi is None or (value <= hi[1] if hi[0] == "maximum" else value < hi[1]))
        and (step is None or value % step == 0)
    )
    if ok:
        return None
    kind = "" if step is None else "an even number" if step == 2 else f"a multiple of {_num(step)}"
    span = ""
    if lo and hi:
        closed = lo[0] == "minimum" and hi[0] == "maximum"
        if closed and all(isinstance(x, int) for x in (value, lo[1], hi[1])):
            span = f"in {lo[1]}..{hi[1]}"
        else:
            left, right = "[" if lo[0] == "minimum" else "(", "]" if hi[0] == "maximum" else ")"
            span = f"in {left}{_num(lo[1])}, {_num(hi[1])}{right}"
    elif lo or hi:
        name, limit = lo or hi
        span = f"{_OPERATORS[name]} {_num(limit)}"
    return "be " + " ".join(part for part in (kind, span) if part)


def _rule(value: Any, bounds: dict[str, Any]) -> str | None:
    """What ``value`` must do to meet ``bounds`` (``"be >= 1"``, ``"have at least 1 item"``), or None if it does."""
    if "enum" in bounds and value not in bounds["enum"]:
        return f"be one of {list(bounds['enum'])}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number_rule(value, bounds)
    if isinstance(value, str) and len(value) < bounds.get("minLength", 0):
        return "not be empty" if bounds["minLength"] == 1 else f"have at least {bounds['minLength']} characters"
    if isinstance(value, (list, tuple, dict)):
        lo, hi, n = bounds.get("minItems"), bounds.get("maxItems"), len(value)
        one, many = ("entry", "entries") if isinstance(value, dict) else ("item", "items")

        def count(k: int) -> str:
            return f"{k} {one if k == 1 else many}"

        if lo is not None and lo == hi and n != lo:
            return f"have exactly {count(lo)}"
        if lo is not None and n < lo:
            return f"have at least {count(lo)}"
        if hi is not None and n > hi:
            return f"have at most {count(hi)}"
    return None


def _check_bounds(value: Any, declaration: dict[str, Any], key: str) -> None:
    """A :class:`ConfigError` naming ``key`` (dotted, ``[i]`` for list items) if ``value`` breaks the bounds of
    its field's ``declaration``; None passes (an optional setting left unset)."""
    if value is None or not declaration:
        return
    rule = _rule(value, declaration.get("bounds", {}))
    if rule:
        raise ConfigError(f"{key} must {rule}, got {value!r}", key=key)
    keys = declaration.get("keys")
    if keys is not None and isinstance(value, dict) and sorted(value) != sorted(keys):
        raise ConfigError(f"{key} must have exactly the keys {list(keys)}, got {sorted(value)}", key=key)
    each = declaration.get("each")
    if each and isinstance(value, (list, tuple, dict)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, item in items:
            _check_bounds(item, {"bounds": each}, f"{key}.{k}" if isinstance(value, dict) else f"{key}[{k}]")


def _literal_values(tp: Any) -> tuple[Any, ...] | None:
    """The values a ``Literal`` type (or an optional one) allows; None for other types."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        parts = [_literal_values(a) if a is not type(None) else (None,) for a in typing.get_args(tp)]
        if all(p is not None for p in parts):
            return tuple(v for p in parts for v in p)
    return None


def check_fields(obj: Any, where: str | None = None) -> None:
    """Hold config dataclass ``obj`` to its fields' ``Literal`` choices, fixed tuple lengths and declared
    bounds, as :func:`from_dict` does when it reads them, so that settings built in code are checked alike:
    call it first in ``__post_init__``. ``where`` prefixes the field names in the errors."""
    cls = type(obj)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        value, tp = getattr(obj, f.name), hints[f.name]
        allowed = _literal_values(tp)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{key} must be one of {[v for v in allowed if v is not None]}, got {value!r}", key=key)
        args = typing.get_args(tp)
        fixed = typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis
        if fixed and isinstance(value, (list, tuple)) and len(value) != len(args):
            raise ConfigError(f"{key} must have exactly {len(args)} items, got {value!r}", key=key)
        _check_bounds(value, _declaration(cls, f.name), key)


def _float_text(text: str) -> str | None:
    """``text`` as YAML 1.1 would read a float (``1e-3`` -> ``1.0e-3``) when it is a number that YAML read as a
    string, else None."""
    match = re.fullmatch(r"\s*([-+]?)(\d+)(?:\.(\d*))?[eE]([-+]?\d+)\s*", text)
    if not match:
        return None
    sign, whole, frac, exponent = match.groups()
    return f"{sign}{whole}.{frac or '0'}e{exponent if exponent[0] in '+-' else '+' + exponent}"


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        out = [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_check_type(k, kt, where): _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and _float_text(value):
            raise ConfigError(
                f"{where}: expected a number, got the string {value!r}: YAML reads a number with an exponent as "
                f"a number only with a dot and a signed exponent; write {_float_text(value)}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``, filling defaults; unknown keys, bad types and values out of
    their declared bounds (:func:`setting`) fail.

    ``where`` is the dotted prefix used in error messages (e.g. ``"synthetic"``).
    """
    where = where or cls.__name__
    data = dict(data or {})
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(unknown_key_message(where, unknown, sorted(fields)), key=f"{where}.{unknown[0]}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check_type(data[name], hints[name], f"{where}.{name}")
            _check_bounds(kwargs[name], _declaration(cls, name), f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {name!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Plain-YAML form of a config dataclass (paths as strings, tuples as lists), keys in :func:`config_fields` order."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in config_fields(type(obj))}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ----------------------------------------------------------------------------------------------------
# The JSON schema, generated from the declarations

JSON_SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "string"}
_NULL = {"type": "null"}


def _summary(cls: type) -> str:
    """The first paragraph of ``cls``'s docstring on one line, and where the class is."""
    doc = cls.__doc__ or ""
    if not doc.strip() or doc.startswith(f"{cls.__name__}("):  # a dataclass's generated docstring
        raise TypeError(f"{cls.__qualname__}: a config class needs a docstring (the schema's description)")
    first = " ".join(doc.strip().split("\n\n")[0].split())
    return f"{first} ({cls.__module__}.{cls.__qualname__})"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return to_dict(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return to_dict(f.default_factory())
    return dataclasses.MISSING


def _with_bounds(schema: dict[str, Any], declaration: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a declaration's bounds, ``each`` and ``keys`` (on every non-null branch of an ``anyOf``)."""
    bounds, each, keys = declaration.get("bounds", {}), declaration.get("each", {}), declaration.get("keys")
    if not (bounds or each or keys):
        return schema
    if "anyOf" in schema:
        return {"anyOf": [s if s == _NULL else _with_bounds(s, declaration) for s in schema["anyOf"]]}
    out = dict(schema)
    for name, value in bounds.items():
        if name in ("minItems", "maxItems") and out.get("type") == "object":
            name = name.replace("Items", "Properties")
        out[name] = list(value) if name == "enum" else value
    item = {"bounds": each}
    if keys is not None:
        value = _with_bounds(out.pop("additionalProperties", {}), item)
        properties = {k: {**value, "description": text} for k, text in keys.items()}
        out |= {"additionalProperties": False, "required": list(keys), "properties": properties}
    elif each and "prefixItems" in out:
        out["prefixItems"] = [_with_bounds(s, item) for s in out["prefixItems"]]
    elif each:
        slot = "items" if out.get("type") == "array" else "additionalProperties"
        out[slot] = _with_bounds(out[slot], item)
    return out


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of config dataclass ``cls``, from its fields' declarations
    (:func:`setting`): types, defaults, bounds and descriptions. Each nested config class is one entry of
    ``$defs``; every level rejects unknown keys; an overlay (``overlay=``) takes its class's keys."""
    defs: dict[str, Any] = {}
    classes: dict[str, type] = {}

    def ref(klass: type, overlay: bool = False) -> dict[str, Any]:
        name = klass.__name__
        if classes.setdefault(name, klass) is not klass:
            raise TypeError(f"two config classes named {name}: {classes[name]} and {klass}")
        if name not in defs:
            defs[name] = {}  # taken before its fields are visited
            defs[name] = class_schema(klass)
        if overlay and _required(klass):
            raise TypeError(f"{name}: an overlay of it cannot leave out its required keys {_required(klass)}")
        return {"$ref": f"#/$defs/{name}"}

    def type_schema(tp: Any, overlay: type | None) -> dict[str, Any]:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any:
            return {}
        if tp is type(None):
            return dict(_NULL)
        if origin in (typing.Union, types.UnionType):
            return {"anyOf": [type_schema(a, overlay) for a in args]}
        if origin is typing.Literal:
            return {"enum": list(args)}
        if dataclasses.is_dataclass(tp):
            return ref(tp)
        if origin in (list, tuple):
            if origin is tuple and args and args[-1] is not Ellipsis:
                items = [type_schema(a, overlay) for a in args]
                if all(i == items[0] for i in items):
                    return {"type": "array", "items": items[0], "minItems": len(args), "maxItems": len(args)}
                return {"type": "array", "prefixItems": items, "items": False, "minItems": len(args)}
            return {"type": "array", "items": type_schema(args[0], overlay) if args else {}}
        if origin is dict:
            value = args[1] if args else Any
            if value is Any:
                return ref(overlay, overlay=True) if overlay else {"type": "object"}
            return {"type": "object", "additionalProperties": type_schema(value, overlay)}
        if tp in _JSON_TYPES:
            return {"type": _JSON_TYPES[tp]}
        raise TypeError(f"no JSON schema for the type {tp!r}")

    def class_schema(klass: type) -> dict[str, Any]:
        hints, properties = _hints(klass), {}
        for f in config_fields(klass):
            if not f.init:
                continue
            declaration = _declaration(klass, f.name)
            if not declaration.get("description"):
                raise TypeError(f"{klass.__qualname__}.{f.name}: no description; declare it with setting()")
            prop = _with_bounds(type_schema(hints[f.name], declaration.get("overlay")), declaration)
            default = _default(f)
            nested = dataclasses.is_dataclass(hints[f.name])
            if default is not dataclasses.MISSING and not (nested and default == to_dict(hints[f.name]())):
                prop["default"] = default  # a nested class's own defaults are in its $defs entry
            properties[f.name] = {**prop, "description": declaration["description"]}
        out = {"description": _summary(klass), "type": "object", "additionalProperties": False}
        required = _required(klass)
        return out | ({"required": required} if required else {}) | {"properties": properties}

    root = class_schema(cls)
    return {"$schema": JSON_SCHEMA_DRAFT, **root, "$defs": defs}


def _required(cls: type) -> list[str]:
    """The fields of ``cls`` without a default, in key order."""
    missing = dataclasses.MISSING
    return [f.name for f in config_fields(cls) if f.init and f.default is missing and f.default_factory is missing]


class _Flow(dict):
    """A mapping written on one line."""


class _SchemaDumper(yaml.SafeDumper):
    """Writes :class:`_Flow` mappings and every list on one line."""


_SchemaDumper.add_representer(
    _Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", list(data.items()), flow_style=True)
)
_SchemaDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def _has_properties(node: Any) -> bool:
    if isinstance(node, dict):
        return "properties" in node or any(_has_properties(v) for v in node.values())
    return isinstance(node, list) and any(_has_properties(v) for v in node)


def _styled(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with each setting (a schema that holds no ``properties``) marked to be written on one line;
    sections, and their ``properties`` and ``$defs``, one key a line."""
    if not _has_properties(schema):
        return _Flow(schema)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            out[key] = {name: _styled(sub) for name, sub in value.items()}
        else:
            out[key] = _styled(value) if isinstance(value, dict) else value
    return out


def schema_yaml(schema: dict[str, Any]) -> str:
    """JSON ``schema`` as YAML: sections as blocks, each setting on one line, keys in their given order."""
    return yaml.dump(
        _styled(schema),
        Dumper=_SchemaDumper,
        sort_keys=False,
        width=10**6,
        allow_unicode=True,
        default_flow_style=False,
    )


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping top level fails naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a YAML text file (byte {exc.start} is not UTF-8)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def check_schema(data: Any, schema: str | Path, source: str = "config") -> None:
    """Validate ``data`` against the JSON schema in file ``schema``; the first problem is one
    :class:`ConfigError` line with the dotted key (and the nearest valid key for an unknown one)."""
    import jsonschema

    spec = load_yaml(schema)
    validator = jsonschema.validators.validator_for(spec)(spec)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is None:
        return
    where = ".".join([source, *map(str, error.absolute_path)])
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed), key=str)
        raise ConfigError(unknown_key_message(where, unknown, allowed), key=f"{where}.{unknown[0]}")
    if error.validator == "type" and isinstance(error.instance, str) and _float_text(error.instance):
        message = (
            f"expected {error.validator_value}, got the string {error.instance!r}: YAML reads a number with an "
            f"exponent as a number only with a dot and a signed exponent; write {_float_text(error.instance)}"
        )
    elif error.validator == "type":
        message = f"expected {error.validator_value}, got {error.instance!r:.60}"
    elif error.validator == "enum":
        message = f"expected one of {error.validator_value}, got {error.instance!r:.60}"
    else:
        message = error.message if len(error.message) <= 200 else error.message[:200] + " ..."
    raise ConfigError(f"{where}: {message}", key=where)


def _key_lines(path: Path) -> dict[tuple[str, ...], int]:
    """The line of every mapping key and list item (its index as a string) in YAML file ``path``, by its key
    path; {} for an unreadable file."""
    try:
        root: Any = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[(*prefix, str(k.value))] = k.start_mark.line + 1
                walk(v, (*prefix, str(k.value)))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*prefix, str(i))] = item.start_mark.line + 1
                walk(item, (*prefix, str(i)))

    walk(root, ())
    return lines


#: How Snakemake's ``--config`` sets a nested key (its values are YAML).
COMMAND_LINE_FORM = "--config takes top-level keys with YAML values, e.g. --config 'finetune={seeds: [0, 1]}'"


def _sets(data: Any, parts: tuple[str, ...]) -> bool:
    """Whether nested ``data`` holds the key path ``parts`` (list items by index) or a value above it."""
    for i, part in enumerate(parts):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return i > 0 and not isinstance(data, (dict, list))
    return bool(parts)


def command_line_values(overrides: Any) -> Any:
    """Snakemake's ``--config`` values as YAML reads them: it parses a nested value with YAML's base loader,
    which keeps every scalar a string (``seeds=[0, 1]`` gives ``['0', '1']``); top-level scalars it has
    already typed."""

    def typed(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: typed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [typed(v) for v in value]
        if isinstance(value, str):
            try:
                return yaml.safe_load(value) if value.strip() else value
            except yaml.YAMLError:
                return value
        return value

    return {k: typed(v) if isinstance(v, (dict, list)) else v for k, v in dict(overrides or {}).items()}


def config_file_of(key: str | None, files: list[str | Path], command_line: Any = None) -> str:
    """``file:line`` of dotted ``key`` (its first part, ``config``, is the root; ``.<i>`` or ``[i]`` a list item)
    in the last of the merged config ``files`` (later ones override) that sets it, or ``--config`` when the
    command line's ``command_line`` values set it (they override every file), else all the files."""
    parts = tuple(re.sub(r"\[(\d+)\]", r".\1", key or "").split(".")[1:])
    if command_line and _sets(command_line, parts):
        return f"--config {parts[0]}"
    for path in reversed([Path(f) for f in files]):
        line = _key_lines(path).get(parts) if parts else None
        if line is not None:
            return f"{path}:{line}"
    return ", ".join(map(str, files)) or "config"


def config_error_line(exc: ConfigError, files: list[str | Path], command_line: Any = None) -> str:
    """The one line the workflow reports for ``exc``: where the bad value was set (:func:`config_file_of`), the
    error, and for a ``--config`` value the form it takes."""
    where = config_file_of(exc.key, files, command_line)
    return f"{where}: {exc}" + (f"; {COMMAND_LINE_FORM}" if where.startswith("--config") else "")


def _leaves(data: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every non-mapping value (and empty mapping) of nested ``data`` by its key path."""
    if isinstance(data, dict) and data:
        out: dict[tuple[str, ...], Any] = {}
        for k, v in data.items():
            out.update(_leaves(v, (*prefix, str(k))))
        return out
    return {prefix: data}


def annotated_yaml(resolved: dict[str, Any], files: list[str | Path], overrides: dict[str, Any] | None = None) -> str:
    """``resolved`` settings as YAML with, after each value, where it came from: ``file:line`` of the last of
    the merged config ``files`` that sets it, ``command line`` for ``overrides`` (Snakemake's ``--config``),
    else ``default`` (the dataclass default)."""
    set_by: dict[tuple[str, ...], str] = {}
    for path in map(Path, files):
        lines = _key_lines(path)
        for keys in _leaves(load_yaml(path)):
            if keys in lines:
                set_by[keys] = f"{path}:{lines[keys]}"
    set_by.update(dict.fromkeys(_leaves(overrides or {}), "command line"))
    out: list[str] = []

    def write(node: dict[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in node.items():
            keys, indent = (*prefix, str(key)), "  " * len(prefix)
            if isinstance(value, dict) and value:
                out.append(f"{indent}{key}:")
                write(value, keys)
                continue
            # a value set with its parent mapping (e.g. a variant overlay) takes the parent's line
            source = next((set_by[keys[:n]] for n in range(len(keys), 0, -1) if keys[:n] in set_by), "default")
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()
            out.append(f"{indent}{key}: {text}  # {source}")

    write(resolved, ())
    return "\n".join(out) + "\n"
