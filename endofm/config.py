"""Typed configuration: each module owns a dataclass of its settings; this module builds them.

Defaults live once, in those dataclasses. The workflow's YAML (validated by ``config/schema.yaml``)
and the command line both go through :func:`from_dict`, so a misspelt or mistyped key fails with
its dotted name whichever way the settings arrive. :func:`merge` applies an overlay of settings,
:func:`config_hash` names a set of settings by a short stable hash.

Layer: foundation (docs/architecture.md). May import: :mod:`endofm.errors` only.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
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
    """Build dataclass ``cls`` from ``data``, filling defaults; unknown keys and bad types fail.

    ``where`` is the dotted prefix used in error messages (e.g. ``"synthetic"``).
    """
    where = where or cls.__name__
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(unknown_key_message(where, unknown, sorted(fields)), key=f"{where}.{unknown[0]}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check_type(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {name!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Plain-YAML form of a config dataclass (paths as strings, tuples as lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping top level fails naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with path.open() as fh:
            data = yaml.safe_load(fh) or {}
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
    if error.validator == "type":
        message = f"expected {error.validator_value}, got {error.instance!r:.60}"
    elif error.validator == "enum":
        message = f"expected one of {error.validator_value}, got {error.instance!r:.60}"
    else:
        message = error.message if len(error.message) <= 200 else error.message[:200] + " ..."
    raise ConfigError(f"{where}: {message}", key=where)


def _key_lines(path: Path) -> dict[tuple[str, ...], int]:
    """The line of every mapping key in YAML file ``path``, by its key path; {} for an unreadable file."""
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

    walk(root, ())
    return lines


def config_file_of(key: str | None, files: list[str | Path]) -> str:
    """``file:line`` of dotted ``key`` (its first part, ``config``, is the root) in the last of the merged
    config ``files`` (later ones override) that sets it, else all the files."""
    parts = tuple((key or "").split(".")[1:])
    for path in reversed([Path(f) for f in files]):
        line = _key_lines(path).get(parts) if parts else None
        if line is not None:
            return f"{path}:{line}"
    return ", ".join(map(str, files)) or "config"


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
