"""MoE-LoRA SAM in torch: frozen SAM image encoder, one LoRA expert per modality, a router,
fusion, a SAM-decoder semantic head and an auxiliary multi-scale head (DESIGN.md §4).

`build_model("tiny")`, `build_model("vit_b", img_size=512)` or `build_model(config)`;
`load_checkpoint(path)` for ours, `load_sam_weights(model, path)` for official SAM `.pth` files.
"""

from __future__ import annotations

from sam_mmseg_ros.model.checkpoint import (
    CheckpointError,
    default_checkpoint_path,
    load_checkpoint,
    load_sam_weights,
    save_checkpoint,
)
from sam_mmseg_ros.model.config import MODEL_CONFIGS, ModelConfig
from sam_mmseg_ros.model.sam_moe import MoELoRASAM


def resolve_config(name_or_config: str | ModelConfig | dict, **overrides) -> ModelConfig:
    """A registry name, a ModelConfig or its dict form, with field overrides applied."""
    if isinstance(name_or_config, ModelConfig):
        config = name_or_config
    elif isinstance(name_or_config, dict):
        config = ModelConfig.from_dict(name_or_config)
    elif name_or_config in MODEL_CONFIGS:
        config = MODEL_CONFIGS[name_or_config]
    else:
        raise ValueError(f"unknown model {name_or_config!r}; known: {sorted(MODEL_CONFIGS)}")
    return config.with_overrides(**overrides) if overrides else config


def build_model(name_or_config: str | ModelConfig | dict = "tiny", **overrides) -> MoELoRASAM:
    """Build a randomly initialised model (SAM parts frozen, experts/router/heads trainable)."""
    return MoELoRASAM(resolve_config(name_or_config, **overrides))


__all__ = [
    "MODEL_CONFIGS",
    "CheckpointError",
    "ModelConfig",
    "MoELoRASAM",
    "build_model",
    "default_checkpoint_path",
    "load_checkpoint",
    "load_sam_weights",
    "resolve_config",
    "save_checkpoint",
]
