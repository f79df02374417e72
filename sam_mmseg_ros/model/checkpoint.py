"""Checkpoints: ours (config + weights + plain extras) and official SAM `.pth` files.

A checkpoint is data from outside, so nothing in it is trusted:
- it is read with `torch.load(weights_only=True)`, since the full unpickler would run whatever
  code the file names; our files therefore hold only plain types (the config as a dict,
  tensors, numbers, strings). A refusal says what the file tried to load and never suggests
  the unsafe way;
- the archive's declared sizes are bounded before torch reads it (safe_load.MAX_CHECKPOINT_BYTES);
- the stored config is checked against the registry's limits before anything is built
  (`config_from_untrusted`), so an absurd config (embed_dim 8192, depth 64: ~200 GB) is refused
  at once instead of swapping the machine to death; the tensors are then checked against the
  shapes of the model built from it;
- every failure is a `CheckpointError` naming the file and the keys or fields that are wrong,
  instead of a shape error deep inside `load_state_dict` or, worse, a model silently
  half-loaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from sam_mmseg_ros.model.config import config_from_untrusted
from sam_mmseg_ros.model.image_encoder import adapt_encoder_state_dict
from sam_mmseg_ros.model.safe_load import CheckpointError, load_strict, read_untrusted, require_tensors
from sam_mmseg_ros.model.sam_moe import MoELoRASAM

LOG = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "synthetic_tiny.pt"
MULTITASK_CHECKPOINT = DEFAULT_CHECKPOINT.with_name("synthetic_tiny_talora.pt")
"""The shipped multi-task model (semantic labels and metric depth, TA-LoRA adapters): run it with
`checkpoint:=<this path>`; docs/RESULTS.md says how it was trained and how it scores."""


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


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[MoELoRASAM, dict]:
    """Rebuild the model a checkpoint describes and load its weights; returns (model, extras).

    The config is checked before the model is built, every tensor before it is loaded."""
    data = read_untrusted(path, map_location)
    if "config" not in data or "state_dict" not in data:
        keys = ", ".join(sorted(map(str, data))[:8])
        raise CheckpointError(f"{path} is not a sam_mmseg_ros checkpoint (keys: {keys}); "
                              "official SAM weights are loaded with load_sam_weights()")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r:.40}, this version reads {FORMAT_VERSION}")
    try:
        config = config_from_untrusted(data["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an invalid model config: {exc}") from None
    state = data["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: state_dict is a {type(state).__name__}, not a dict of tensors")
    require_tensors(state, str(path))  # before building: a model of up to ViT-H size takes a while
    model = MoELoRASAM(config)
    load_strict(model, state, str(path))
    extra = {k: v for k, v in data.items() if k not in ("config", "state_dict", "format_version")}
    return model.eval(), extra


def load_sam_weights(model: MoELoRASAM, path_or_state_dict: str | os.PathLike | dict) -> list[str]:
    """Load an official SAM checkpoint (`image_encoder.*`, optionally `mask_decoder.*` and
    `prompt_encoder.*`) into `model`, resizing position embeddings to the model's input size.
    An official SAM2 checkpoint (Hiera: `image_encoder.trunk.*`) goes to
    `sam2_weights.load_sam2_weights`.

    The encoder must load completely. SAM's decoder parts load when their shapes fit this
    model's decoder (out_chans 256, SAM's decoder dims) and are skipped otherwise. Returns the
    model keys that were loaded. LoRA experts, class tokens, router and aux head keep their init.
    """
    from sam_mmseg_ros.model.sam2_weights import is_sam2_state, load_sam2_weights

    source = "SAM weights" if isinstance(path_or_state_dict, dict) else str(path_or_state_dict)
    state = read_untrusted(path_or_state_dict, "cpu")
    state = state.get("model", state)  # Meta's SAM2 files (and some SAM re-distributions) wrap the weights
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{source} is not a state dict (tensors by name)")
    if is_sam2_state(state) or model.config.backbone == "hiera":
        return load_sam2_weights(model, state, source).loaded
    encoder_state = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
    if not encoder_state:
        raise CheckpointError(f"{source} has no image_encoder.* weights; it is not a SAM checkpoint "
                              f"(first keys: {sorted(state)[:5]})")
    encoder = model.image_encoder
    require_tensors(state, source)
    try:
        encoder_state = adapt_encoder_state_dict(encoder_state, encoder)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{source}: position embeddings cannot be resized to this model: {exc}") from None
    load_strict(encoder, encoder_state, source, may_be_missing=lambda key: ".lora_" in key)
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


def init_from_checkpoint(path: str | os.PathLike, **overrides) -> MoELoRASAM:
    """A model that extends the one a checkpoint holds (its config with `overrides`, e.g.
    task-aware adapters and the depth task), started from the checkpoint's weights.

    Every stored tensor must fit the new model. The parts the stored model does not have keep
    their init (task cores at zero, so every task starts from the stored experts' features), except
    that a new depth decoder starts as a copy of the stored semantic decoder wherever the shapes
    agree (TA-LoRA starts every task's decoder from SAM's); its output token keeps its init. A
    fusion mean the new config drops (`fusion_mean="none"`) is left out: the router alone decides."""
    stored, _ = load_checkpoint(path)
    model = MoELoRASAM(stored.config.with_overrides(**overrides))
    state = stored.state_dict()
    if model.config.fusion_mean != "learned":
        state.pop("fusion.mean_weight", None)
    added = set(model.state_dict()) - set(state)
    if model.depth_decoder is not None and stored.depth_decoder is None:
        own = model.state_dict()
        state.update({f"depth_{key}": value for key, value in stored.state_dict().items()
                      if key.startswith("decoder.") and own.get(f"depth_{key}", value[None]).shape == value.shape})
    load_strict(model, state, str(path), may_be_missing=lambda key: key in added)
    return model
