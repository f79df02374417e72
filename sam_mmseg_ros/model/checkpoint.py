"""Checkpoints: ours (config + weights + plain extras) and official SAM `.pth` files.

Everything is read with `torch.load(weights_only=True)`: a checkpoint is data from outside, and
the full unpickler would run whatever code the file names. Our files therefore hold only plain
types (the config as a dict, tensors, numbers, strings). A file that is truncated, foreign or
made for another architecture raises `CheckpointError` naming the keys that are wrong, instead
of a shape error deep inside `load_state_dict` or, worse, a model silently half-loaded.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from sam_mmseg_ros.model.config import ModelConfig
from sam_mmseg_ros.model.image_encoder import adapt_encoder_state_dict
from sam_mmseg_ros.model.sam_moe import MoELoRASAM

LOG = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "synthetic_tiny.pt"
_LISTED = 5  # keys named per category in an error message


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names what is wrong."""


def default_checkpoint_path() -> Path | None:
    """The model shipped inside the package, if this installation has one."""
    return DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.is_file() else None


def save_checkpoint(path: str | os.PathLike, model: MoELoRASAM, **extra) -> Path:
    """Write config, weights and `extra` (plain types: trained, step, metrics, ...) to `path`.
    Training adds `encodings` (modality -> encoding name, sensors/encodings.py): what each input
    slot was trained on, which the node reproduces and checks before running the model."""
    reserved = {"config", "state_dict", "format_version"} & set(extra)
    if reserved:
        raise ValueError(f"extra keys {sorted(reserved)} are reserved")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "config": model.config.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}
    # Write then rename: a crash mid-save never leaves a truncated checkpoint under `path`.
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _read(path_or_state, map_location) -> dict:
    if isinstance(path_or_state, dict):
        return path_or_state
    path = Path(path_or_state)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or not a "
                              f"checkpoint): {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, expected a dict of weights")
    return data


def _describe(what: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED]) + (", ..." if len(keys) > _LISTED else "")
    return f"{len(keys)} {what} ({shown})"


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                 may_be_missing: Callable[[str], bool] = lambda key: False) -> None:
    """Load `state` into `module`: every key of the module (but those `may_be_missing`) must be
    present with the right shape, and no unknown key may appear."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state and not may_be_missing(k))
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                        for k in state if k in own and state[k].shape != own[k].shape)
    problems = [_describe(what, keys) for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("with another shape", mismatched)) if keys]
    if problems:
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=False)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[MoELoRASAM, dict]:
    """Rebuild the model a checkpoint describes and load its weights; returns (model, extras)."""
    data = _read(path, map_location)
    if "config" not in data or "state_dict" not in data:
        raise CheckpointError(f"{path} is not a sam_mmseg_ros checkpoint (keys: {sorted(data)[:8]}); "
                              "official SAM weights are loaded with load_sam_weights()")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version}, this version reads {FORMAT_VERSION}")
    try:
        config = ModelConfig.from_dict(data["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an invalid model config: {exc}") from exc
    model = MoELoRASAM(config)
    _load_strict(model, data["state_dict"], str(path))
    extra = {k: v for k, v in data.items() if k not in ("config", "state_dict", "format_version")}
    return model.eval(), extra


def load_sam_weights(model: MoELoRASAM, path_or_state_dict: str | os.PathLike | dict) -> list[str]:
    """Load an official SAM checkpoint (`image_encoder.*`, optionally `mask_decoder.*` and
    `prompt_encoder.*`) into `model`, resizing position embeddings to the model's input size.

    The encoder must load completely. SAM's decoder parts load when their shapes fit this
    model's decoder (out_chans 256, SAM's decoder dims) and are skipped otherwise. Returns the
    model keys that were loaded. LoRA experts, class tokens, router and aux head keep their init.
    """
    source = "SAM weights" if isinstance(path_or_state_dict, dict) else str(path_or_state_dict)
    state = _read(path_or_state_dict, "cpu")
    state = state.get("model", state)  # some re-distributions wrap the weights
    encoder_state = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
    if not encoder_state:
        raise CheckpointError(f"{source} has no image_encoder.* weights; it is not a SAM checkpoint "
                              f"(first keys: {sorted(state)[:5]})")
    encoder = model.image_encoder
    encoder_state = adapt_encoder_state_dict(encoder_state, encoder)
    _load_strict(encoder, encoder_state, source, may_be_missing=lambda key: ".lora_" in key)
    loaded = [f"image_encoder.{k}" for k in encoder_state]

    own = model.state_dict()
    decoder_state = {}
    for key, value in state.items():
        for prefix, target in MoELoRASAM.SAM_KEY_MAP.items():
            if prefix != "image_encoder." and key.startswith(prefix):
                decoder_state[target + key[len(prefix):]] = value
    if decoder_state and all(k in own and own[k].shape == v.shape for k, v in decoder_state.items()):
        model.load_state_dict(decoder_state, strict=False)
        loaded += sorted(decoder_state)
    elif decoder_state:
        LOG.info("%s: SAM's decoder does not fit this model's decoder (out_chans %d); it keeps its init",
                 source, model.config.out_chans)
    return loaded
