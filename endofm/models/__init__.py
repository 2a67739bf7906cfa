"""Backbone (TimeSformer ViT, divided space-time attention) and checkpoint loading/saving.

Layer: data and models (docs/architecture.md). May import: foundation and the other models modules.
"""

from endofm.models.checkpoint import (
    BackboneLoadError,
    CheckpointError,
    LoadReport,
    capture_rng_state,
    from_official,
    legacy_to_parametrized,
    load_backbone,
    load_backbone_state,
    load_checkpoint,
    parametrized_to_legacy,
    restore_rng_state,
    save_checkpoint,
    to_official,
)
from endofm.models.vit import (
    PRESETS,
    BackboneConfig,
    DenseFeatures,
    TimeSformer,
    build_backbone,
    resize_pos_embed,
    resize_time_embed,
)

__all__ = [
    "PRESETS",
    "BackboneConfig",
    "BackboneLoadError",
    "CheckpointError",
    "DenseFeatures",
    "LoadReport",
    "TimeSformer",
    "build_backbone",
    "capture_rng_state",
    "from_official",
    "legacy_to_parametrized",
    "load_backbone",
    "load_backbone_state",
    "load_checkpoint",
    "parametrized_to_legacy",
    "resize_pos_embed",
    "resize_time_embed",
    "restore_rng_state",
    "save_checkpoint",
    "to_official",
]
