"""Checkpoints: load the official Endo-FM/TimeSformer layouts strictly, and save/load our own format.

Official layouts accepted by :func:`load_backbone_state` (docs/original.md §2):

- pretraining checkpoint ``{"teacher": {backbone.*, head.*}, "student": {module.backbone.*, ...}, ...}``;
- TimeSformer ``{"model_state": {model.*}}``;
- PolypDiag fine-tune ``{"backbone_state_dict": {module.*}}``;
- a flat state dict, with or without ``module.``/``backbone.`` prefixes (e.g. the SVT initialisation,
  or timm's ``vit_base_patch16_clip_*`` image tower, whose names are ours);
- OpenAI / OpenCLIP CLIP weights (``visual.conv1.weight``, ``visual.transformer.resblocks.{i}.*``, ...):
  the image tower renamed to ours (:func:`from_openai_clip`), the projection and text tower set aside.

A CLIP image tower in either layout (a ``norm_pre``) selects CLIP's architecture (:func:`file_backbone`,
:func:`clip_backbone`): the sizes from the tensors, pre-norm, QuickGELU, LayerNorm eps 1e-5.

Files are torch pickles or ``.safetensors``.

Our own training checkpoint (:func:`save_checkpoint`) is a dict tagged ``format``/``format_version``
whose ``teacher``/``student`` hold plain ``{backbone.*, head.*}`` state dicts, the DINO head using the
``parametrizations.weight.original0/1`` names of ``torch.nn.utils.parametrizations.weight_norm``.
:func:`to_official`/:func:`from_official` convert between it and the official pretraining layout.
:func:`load_pretrained_backbone` builds a backbone from any of them.

Layer: models (docs/architecture.md). May import: foundation and :mod:`endofm.models.vit`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import math
import os
import pickle
import random
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from endofm.config import from_dict
from endofm.errors import UserError
from endofm.io import atomic_path
from endofm.models.vit import PRESETS, BackboneConfig, TimeSformer, build_backbone, resize_pos_embed, resize_time_embed

log = logging.getLogger(__name__)

FORMAT = "endofm-checkpoint"
FORMAT_VERSION = 1

#: Keys :func:`save_checkpoint` accepts (besides the ``format``/``format_version``/``versions`` it writes).
CHECKPOINT_KEYS = (
    "config",  # plain dict of the run's settings
    "epoch",  # epochs completed
    "step",  # optimiser steps completed
    "teacher",  # {backbone.*, head.*}
    "student",  # {backbone.*, head.*}
    "optimizer",
    "scaler",  # GradScaler state (fp16 only)
    "center",  # DINO loss centre, (1, K)
    "rng",  # capture_rng_state()
    "extra",  # anything else; official top-level keys we do not map travel here
)
_TAG_KEYS = ("format", "format_version", "versions")

# Official top-level key -> ours, for the keys that map one to one.
_OFFICIAL_TO_OURS = {"epoch": "epoch", "optimizer": "optimizer", "fp16_scaler": "scaler"}

_LEGACY_WN = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}
_PREFIXES = ("module.", "backbone.")
_MAX_NAMED = 8


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, unreadable or not in the expected layout; the message names it."""


class BackboneLoadError(CheckpointError):
    """State-dict keys do not match the model; the message lists missing, unexpected and mis-shaped keys."""

    def __init__(
        self, source: str, missing: list[str], unexpected: list[str], mismatched: list[tuple[str, tuple, tuple]]
    ) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = [f"{source}: backbone state does not match the model"]
        if missing:
            parts.append(f"missing ({len(missing)}): {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected ({len(unexpected)}): {_names(unexpected)}")
        if mismatched:
            shown = [f"{k} (file {list(a)} vs model {list(b)})" for k, a, b in mismatched]
            parts.append(f"mis-shaped ({len(mismatched)}): {_names(shown)}")
        parts.append(f"if the file holds another architecture, name its preset with --backbone ({', '.join(PRESETS)})")
        super().__init__("\n  ".join(parts))


class LoadReport(NamedTuple):
    """What :func:`load_backbone` did. With ``strict=True`` the three mismatch lists are empty."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple, tuple]]
    resized: list[str]  # positional embeddings resized to the model's size
    head_keys: list[str]  # DINO head keys set aside


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED])
    return shown + (f", ... and {len(keys) - _MAX_NAMED} more" if len(keys) > _MAX_NAMED else "")


def read_checkpoint_file(path: str | os.PathLike, trusted: bool = False) -> Any:
    """``torch.load`` on CPU (a ``.safetensors`` file: its tensors). Without ``trusted`` only tensors,
    containers and ``argparse.Namespace`` (the official ``args``) are unpickled."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    try:
        if trusted:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if unsafe:
            raise CheckpointError(
                f"{path}: holds {unsafe.group(1)}, which is not unpickled by default; "
                "pass trusted=True only for a file you trust"
            ) from exc
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (truncated or corrupt?): {detail.group(1) if detail else exc}"
        ) from exc
    except Exception as exc:  # torch reports corrupt files as RuntimeError, KeyError, EOFError, ...
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {exc!r}") from exc


def read_checkpoint_dict(path: str | os.PathLike, trusted: bool = False) -> Mapping[str, Any]:
    """:func:`read_checkpoint_file` for files that must hold a dict (every checkpoint layout does)."""
    ckpt = read_checkpoint_file(path, trusted)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a dict at the top level, got {type(ckpt).__name__}")
    return ckpt


def _open(
    path_or_dict: str | os.PathLike | Mapping[str, Any], trusted: bool, source: str | None = None
) -> tuple[Mapping[str, Any], str]:
    if isinstance(path_or_dict, Mapping):
        return path_or_dict, source or "<dict>"
    return read_checkpoint_dict(path_or_dict, trusted), source or str(path_or_dict)


def saved_backbone(
    path_or_dict: str | os.PathLike | Mapping[str, Any], source: str | None = None
) -> BackboneConfig | None:
    """The backbone settings saved in one of our checkpoints (``config.backbone``), or None (official files)."""
    ckpt, source = _open(path_or_dict, False, source)
    config = ckpt.get("config") if ckpt.get("format") == FORMAT else None
    saved = config.get("backbone") if isinstance(config, Mapping) else None
    return from_dict(BackboneConfig, saved, f"{source}: config.backbone") if saved else None


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


#: OpenAI CLIP image-tower names -> ours (= timm's), applied in order to the name after ``visual.``.
_OPENAI_CLIP_RENAMES = (
    ("conv1.", "patch_embed.proj."),
    ("ln_pre.", "norm_pre."),
    ("ln_post.", "norm."),
    ("transformer.resblocks.", "blocks."),
    (".ln_1.", ".norm1."),
    (".ln_2.", ".norm2."),
    (".attn.in_proj_weight", ".attn.qkv.weight"),
    (".attn.in_proj_bias", ".attn.qkv.bias"),
    (".attn.out_proj.", ".attn.proj."),
    (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
)


def from_openai_clip(state: Mapping[str, torch.Tensor], prefix: str = "visual.") -> tuple[dict, list[str]]:
    """CLIP weights in OpenAI's layout (also OpenCLIP's for the ``openai`` tag) -> (image tower with our
    names, keys set aside). ``class_embedding`` (C,) becomes ``cls_token`` (1, 1, C), ``positional_embedding``
    (1 + N, C) ``pos_embed`` (1, 1 + N, C); the projection ``proj`` and the text tower are set aside."""
    out, aside = {}, []
    for key, value in state.items():
        if not key.startswith(prefix) or key == f"{prefix}proj":
            aside.append(key)
            continue
        name = key[len(prefix) :]
        if name == "class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif name == "positional_embedding":
            out["pos_embed"] = value.unsqueeze(0)
        else:
            for old, new in _OPENAI_CLIP_RENAMES:
                name = name.replace(old, new)
            out[name] = value
    return out, aside


def _split(ckpt: Mapping[str, Any], which: str, source: str) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """(backbone state with bare keys, head keys set aside, layout name)."""
    if "visual.class_embedding" in ckpt:
        bad = [str(k) for k, v in ckpt.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{source}: CLIP state dict has non-tensor entries: {_names(bad)}")
        backbone, aside = from_openai_clip(ckpt)
        return backbone, aside, "OpenAI CLIP (visual.*)"
    if "teacher" in ckpt or "student" in ckpt:
        if which not in ("teacher", "student"):
            raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
        if which not in ckpt:
            raise CheckpointError(f"{source}: no {which!r} entry; top-level keys: {', '.join(map(str, ckpt))}")
        state, layout, prefixes = ckpt[which], f"training checkpoint ({which})", _PREFIXES
    elif "model_state" in ckpt:
        state, layout, prefixes = ckpt["model_state"], "TimeSformer model_state", ("module.", "model.")
    elif "backbone_state_dict" in ckpt:
        state, layout, prefixes = ckpt["backbone_state_dict"], "fine-tuned backbone_state_dict", _PREFIXES
    else:
        state, layout, prefixes = ckpt, "flat state dict", _PREFIXES
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: {layout} is a {type(state).__name__}, expected a state dict")
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: {layout} has non-tensor entries: {_names(bad)}")
    backbone, head = {}, []
    for key, value in state.items():
        bare = _strip(key, prefixes)
        if bare.startswith("head."):
            head.append(key)
        elif bare in backbone:
            raise CheckpointError(f"{source}: {layout} has two entries for {bare!r} after removing prefixes")
        else:
            backbone[bare] = value
    return backbone, head, layout


def load_backbone_state(
    path_or_dict: str | os.PathLike | Mapping[str, Any], which: str = "teacher", *, trusted: bool = False
) -> dict[str, torch.Tensor]:
    """Backbone state dict with bare keys (``blocks.0.attn.qkv.weight``) from any supported layout.

    ``which`` picks ``teacher`` or ``student`` in a training checkpoint. DINO head keys (``head.*``)
    are left out. Keys are only renamed; values are not touched.
    """
    ckpt, source = _open(path_or_dict, trusted)
    backbone, head, layout = _split(ckpt, which, source)
    log.debug("%s: %s, %d backbone tensors, %d head tensors set aside", source, layout, len(backbone), len(head))
    return backbone


def load_backbone(
    model: nn.Module,
    path_or_dict: str | os.PathLike | Mapping[str, Any],
    *,
    which: str = "teacher",
    strict: bool = True,
    trusted: bool = False,
    skip_missing: tuple[str, ...] = (),
    source: str | None = None,
) -> LoadReport:
    """Load a backbone checkpoint into ``model`` (a :class:`~endofm.models.vit.TimeSformer`).

    Model keys starting with a prefix in ``skip_missing`` (e.g. ST-Adapter's ``adapters.``) are not
    expected in the file: they keep their values and are not reported missing.

    ``pos_embed``/``time_embed`` of another grid or frame count are resized (nearest) to the
    model's in memory; the file is never changed. With ``strict`` (default) any missing,
    unexpected or mis-shaped key raises :class:`BackboneLoadError` naming them all, and nothing
    is loaded; without it the matching keys are loaded and the rest is logged. ``source`` names an
    already-read dict in messages.
    """
    ckpt, source = _open(path_or_dict, trusted, source)
    state, head, layout = _split(ckpt, which, source)
    target = model.state_dict()

    resized = []
    for key in ("pos_embed", "time_embed"):
        if key not in state or key not in target or state[key].shape == target[key].shape:
            continue
        old, want = state[key], target[key].shape
        if old.ndim != 3 or old.shape[-1] != want[-1]:
            continue  # reported as mis-shaped below
        try:
            if key == "pos_embed":
                grid = math.isqrt(want[1] - 1)
                state[key] = resize_pos_embed(old, (grid, grid), "nearest")
            else:
                state[key] = resize_time_embed(old, want[1], "nearest")
        except ValueError as exc:
            raise CheckpointError(f"{source}: cannot resize {key} {list(old.shape)} to {list(want)}: {exc}") from exc
        log.info("%s: resized %s %s -> %s (nearest)", source, key, list(old.shape), list(want))
        resized.append(key)

    missing = [k for k in target if k not in state and not k.startswith(skip_missing)]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        (k, tuple(v.shape), tuple(target[k].shape))
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    if strict and (missing or unexpected or mismatched):
        raise BackboneLoadError(f"{source} [{layout}]", missing, unexpected, mismatched)
    if missing or unexpected or mismatched:
        log.warning(
            "%s",
            BackboneLoadError(f"{source} [{layout}] (strict=False, loading the rest)", missing, unexpected, mismatched),
        )
    bad = {k for k, *_ in mismatched} | set(unexpected)
    kept = {k: v for k, v in model.state_dict().items() if k.startswith(skip_missing) and k not in state}
    model.load_state_dict({**kept, **{k: v for k, v in state.items() if k not in bad}}, strict=strict)
    log.info(
        "%s: loaded %d backbone tensors from %s; %d head tensors set aside",
        source,
        len(state) - len(bad),
        layout,
        len(head),
    )
    return LoadReport(missing, unexpected, mismatched, resized, head)


#: Architecture fields of CLIP's image tower (timm's ``vit_base_patch16_clip_*``, OpenAI's ``visual.*``).
CLIP_ARCHITECTURE: dict[str, Any] = dict(
    attention_type="space_only", pre_norm=True, act_layer="quick_gelu", norm_eps=1e-5, num_frames=1, drop_path_rate=0.0
)
#: Settings that do not change the weights' shapes or meaning, kept from the configured backbone.
_RUNTIME_FIELDS = ("pos_interp", "time_interp", "attention", "grad_checkpointing")


def is_clip_state(state: Mapping[str, Any]) -> bool:
    """Whether a backbone state dict with bare keys (:func:`load_backbone_state`) is a CLIP image tower: a
    pre-norm ``norm_pre`` after the embeddings (timm's CLIP layout, and OpenAI's ``ln_pre`` renamed)."""
    return "norm_pre.weight" in state


def clip_backbone(state: Mapping[str, torch.Tensor], base: BackboneConfig | None = None) -> BackboneConfig:
    """The :class:`BackboneConfig` of the CLIP image tower in ``state`` (bare keys): preset
    ``vit_base_patch16_clip``'s architecture (pre-norm, QuickGELU, LayerNorm eps 1e-5, per frame) with the
    sizes read from the tensors; ``num_heads`` is CLIP's width / 64 (heads leave no trace in the shapes).
    ``base``'s run-time fields (interpolation, attention kernel, checkpointing) are kept."""
    missing = [k for k in ("pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight") if k not in state]
    if missing:
        raise CheckpointError(f"CLIP state dict lacks {', '.join(missing)}")
    dim, patch = int(state["pos_embed"].shape[-1]), int(state["patch_embed.proj.weight"].shape[-1])
    grid = math.isqrt(int(state["pos_embed"].shape[-2]) - 1)
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    runtime = {f: getattr(base, f) for f in _RUNTIME_FIELDS} if base is not None else {}
    return BackboneConfig(
        name="vit_base_patch16_clip",
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=max(1, dim // 64),
        mlp_ratio=int(state["blocks.0.mlp.fc1.weight"].shape[0]) / dim,
        patch_bias="patch_embed.proj.bias" in state,
        **CLIP_ARCHITECTURE,
        **runtime,
    )


def file_backbone(
    path_or_dict: str | os.PathLike | Mapping[str, Any], base: BackboneConfig, *, trusted: bool = False
) -> BackboneConfig:
    """The architecture a weights file selects: a CLIP image tower (:func:`is_clip_state`) gives
    :func:`clip_backbone`, whatever ``base`` says; one of our checkpoints its saved backbone; any other
    file keeps ``base``."""
    ckpt, source = _open(path_or_dict, trusted)
    state = load_backbone_state(ckpt)
    if is_clip_state(state):
        return clip_backbone(state, base)
    return saved_backbone(ckpt, source) or base


def check_start(init: str, what: str = "init") -> Path | None:
    """The file a start setting names (None for ``random``); a missing file is a one-line
    :class:`CheckpointError` naming ``what`` and the way out."""
    if init == "random":
        return None
    if not Path(init).is_file():
        raise CheckpointError(f"{what}: {init} not found; put the weights file there, or set {what}: random")
    return Path(init)


def load_start(backbone: nn.Module, init: str, what: str = "init") -> bool:
    """Load the start ``init`` into ``backbone`` strictly (any layout :func:`load_backbone` reads; a
    pretraining head in the file is set aside); ``random`` leaves the backbone as drawn. Returns whether
    weights were loaded."""
    path = check_start(init, what)
    if path is None:
        log.info("%s: random weights", what)
        return False
    load_backbone(backbone, path, which="teacher", strict=True)
    log.info("%s: backbone from %s", what, path)
    return True


def load_pretrained_backbone(
    checkpoint: str | Path, backbone: BackboneConfig | str | None = None, which: str = "teacher"
) -> TimeSformer:
    """The backbone of ``checkpoint`` in eval mode, loaded strictly.

    Our checkpoints carry their backbone config; an official file needs ``backbone`` (default:
    ``vit_base_patch16``, the released Endo-FM). A string names a preset.
    """
    ckpt = read_checkpoint_dict(checkpoint)
    if isinstance(backbone, str):
        backbone = BackboneConfig(name=backbone)
    if backbone is None:
        backbone = saved_backbone(ckpt, str(checkpoint)) or BackboneConfig()
    model = build_backbone(backbone)
    load_backbone(model, ckpt, which=which, source=str(checkpoint))
    return model.eval()


def legacy_to_parametrized(state: Mapping[str, Any]) -> dict[str, Any]:
    """Rename ``weight_norm``'s ``*.weight_g``/``*.weight_v`` to ``*.parametrizations.weight.original0/1``."""
    out = {}
    for key, value in state.items():
        for old, new in _LEGACY_WN.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
                break
        out[key] = value
    return out


def parametrized_to_legacy(state: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`legacy_to_parametrized`."""
    out = {}
    for key, value in state.items():
        for old, new in _LEGACY_WN.items():
            if key.endswith(new):
                key = key[: -len(new)] + old
                break
        out[key] = value
    return out


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (if available) CUDA generator states, as tensors and plain values."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators saved by :func:`capture_rng_state` (CUDA only if saved and available)."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def package_versions() -> dict[str, str]:
    """Versions of Python, endofm, torch and NumPy, recorded with every checkpoint and run."""
    try:
        endofm_version = importlib.metadata.version("endofm")
    except importlib.metadata.PackageNotFoundError:
        endofm_version = "unknown"
    return {
        "python": sys.version.split()[0],
        "endofm": endofm_version,
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
    }


def save_checkpoint(path: str | os.PathLike, **state: Any) -> Path:
    """Write a training checkpoint atomically: any subset of :data:`CHECKPOINT_KEYS`, plus the format
    tag and the writing package versions. Returns ``path``."""
    unknown = sorted(set(state) - set(CHECKPOINT_KEYS) - set(_TAG_KEYS))
    if unknown:
        raise ValueError(f"save_checkpoint: unknown key(s) {unknown}; expected some of {list(CHECKPOINT_KEYS)}")
    if state.get("format", FORMAT) != FORMAT or state.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ValueError(f"save_checkpoint: format {state.get('format')!r} v{state.get('format_version')} is not ours")
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": package_versions()}
    payload.update({k: state[k] for k in CHECKPOINT_KEYS if k in state})
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, *, trusted: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU."""
    ckpt = read_checkpoint_file(path, trusted)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an endofm checkpoint (no format tag {FORMAT!r}); "
            "official files go through load_backbone_state/from_official"
        )
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {ckpt['format_version']} is newer than {FORMAT_VERSION}")
    return ckpt


def from_official(official: Mapping[str, Any]) -> dict[str, Any]:
    """Convert an official pretraining checkpoint (docs/original.md §2.1) to our layout (without format tags).

    ``module.`` is removed from the student, weight-norm names become parametrization names,
    ``args`` becomes the ``config`` dict, ``dino_loss.center`` becomes ``center``; other top-level
    keys (``motion_student``, ``motion_teacher``, ...) are kept in ``extra``.
    """
    if official.get("format") == FORMAT:
        raise CheckpointError("already in our format; nothing to convert")
    found = [k for k in ("teacher", "student") if k in official]
    if not found:
        raise CheckpointError(
            "not an official pretraining checkpoint (no 'teacher'/'student' entry); top-level keys: "
            f"{_names([str(k) for k in official])}"
        )
    for key in found:
        bad = not isinstance(official[key], Mapping) or not all(
            isinstance(v, torch.Tensor) for v in official[key].values()
        )
        if bad:
            raise CheckpointError(
                f"official {key!r}: expected a state dict of tensors, got {type(official[key]).__name__}"
            )
    ours: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in official.items():
        if key in ("teacher", "student"):
            prefix = "module." if key == "student" else ""
            if prefix and not all(k.startswith(prefix) for k in value):
                raise CheckpointError(f"official {key!r}: expected every key to start with {prefix!r}")
            ours[key] = legacy_to_parametrized({k[len(prefix) :]: v for k, v in value.items()})
        elif key == "args":
            if not isinstance(value, (argparse.Namespace, Mapping)):
                raise CheckpointError(f"official 'args': expected a Namespace or dict, got {type(value).__name__}")
            ours["config"] = dict(vars(value)) if isinstance(value, argparse.Namespace) else dict(value)
        elif key == "dino_loss":
            if not isinstance(value, Mapping) or set(value) != {"center"}:
                raise CheckpointError(f"official 'dino_loss': expected only 'center', got {sorted(value)}")
            ours["center"] = value["center"]
        elif key in _OFFICIAL_TO_OURS:
            ours[_OFFICIAL_TO_OURS[key]] = value
        else:
            extra[key] = value
    if extra:
        ours["extra"] = extra
    return ours


def to_official(ours: Mapping[str, Any]) -> dict[str, Any]:
    """Convert our checkpoint to the official pretraining layout (``train_ssl.py``'s ``restart_from_checkpoint``).

    ``step``, ``rng`` and the format tags have no official counterpart and are dropped.
    """
    if ours.get("format", FORMAT) != FORMAT:
        raise CheckpointError(f"to_official: format {ours['format']!r} is not {FORMAT!r}")
    official: dict[str, Any] = {}
    if "student" in ours:
        official["student"] = {"module." + k: v for k, v in parametrized_to_legacy(ours["student"]).items()}
    if "teacher" in ours:
        official["teacher"] = parametrized_to_legacy(ours["teacher"])
    ours_to_official = {v: k for k, v in _OFFICIAL_TO_OURS.items()}
    for key in ("optimizer", "epoch"):
        if key in ours:
            official[ours_to_official[key]] = ours[key]
    if "config" in ours:
        official["args"] = argparse.Namespace(**ours["config"])
    if "scaler" in ours:
        official["fp16_scaler"] = ours["scaler"]
    if "center" in ours:
        official["dino_loss"] = {"center": ours["center"]}
    official.update(ours.get("extra", {}))
    return official


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, to: str) -> Path:
    """Convert file ``src`` to layout ``to`` (``official`` or ``ours``) in ``dst``, written atomically.

    A file already in the requested layout, or not a pretraining checkpoint, is an error naming it;
    nothing is written then.
    """
    if to == "official":
        raw = read_checkpoint_dict(src)
        if raw.get("format") != FORMAT:
            what = "already in the official layout" if "teacher" in raw or "student" in raw else "not our checkpoint"
            raise CheckpointError(f"{src}: {what}; --to official converts our checkpoint.pt/backbone.pt")
        official = to_official(load_checkpoint(src))
        with atomic_path(dst) as tmp:
            torch.save(official, tmp)
    elif to == "ours":
        try:
            ours = from_official(read_checkpoint_dict(src))
        except CheckpointError as exc:
            if str(exc).startswith(str(src)):
                raise
            raise CheckpointError(f"{src}: {exc}") from None
        save_checkpoint(dst, **ours)
    else:
        raise ValueError(f"to must be 'official' or 'ours', got {to!r}")
    return Path(dst)
