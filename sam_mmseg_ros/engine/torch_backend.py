"""Backend that runs the MoE-LoRA SAM directly in torch: the reference the exported engines are
compared against, and the fallback when neither TensorRT nor ONNX Runtime is usable."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from sam_mmseg_ros.contracts import MODALITIES
from sam_mmseg_ros.engine.base import DummyFrameWarmup, check_outputs, contract_outputs, validate_inputs
from sam_mmseg_ros.engine.engine_cache import file_sha256
from sam_mmseg_ros.model import MoELoRASAM, build_model
from sam_mmseg_ros.sensors.encodings import NATIVE

LOG = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
UNTRAINED_MODEL = "tiny"
"""Model built when no checkpoint exists: lets the pipeline run end to end, flagged untrained."""
UNTRAINED_SEED = 0
"""Fixed so the untrained model (and its hash, used as a cache key) is the same in every process."""


def state_dict_sha256(model: torch.nn.Module) -> str:
    """sha256 over parameter/buffer names and raw bytes, for a model that has no file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _class_names(num_classes: int) -> list[str]:
    from sam_mmseg_ros.labels import CLASSES

    if len(CLASSES) == num_classes:
        return list(CLASSES)
    return [f"class_{i}" for i in range(num_classes)]


class TorchBackend(DummyFrameWarmup):
    """Backend protocol (engine/base.py) on a torch model; fp16 means autocast on CUDA.
    `input_size` (H, W) other than the model's own resamples its position embeddings, as an
    export at that size does."""

    name = "torch"

    def __init__(self, model: MoELoRASAM, device: str = "cpu", precision: str = "fp32",
                 metadata: dict | None = None, input_size: tuple[int, int] | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch sees no CUDA device")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 needs a CUDA device (CPU autocast to fp16 is slower than fp32)")
        self.precision = precision
        if self.device.type == "cuda" and precision == "fp32":
            # The fp32 reference computes in fp32: cuDNN convolutions default to TF32 (10-bit
            # mantissa) on Ampere and newer. Process-wide, as torch offers it.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.model = model.eval().to(self.device)
        config = model.config
        height, width = (int(v) for v in input_size) if input_size else (config.img_size, config.img_size)
        if height % config.patch_size or width % config.patch_size:
            raise ValueError(f"input size {height}x{width} is not a multiple of the patch size {config.patch_size}")
        self.input_shape = (1, config.num_modalities, 3, height, width)
        self.output_names = contract_outputs(model.output_names)
        self.metadata = {
            "classes": _class_names(config.num_classes),
            "modalities": list(MODALITIES[: config.num_modalities]),
            "input_size": [height, width],
            "model": config.to_dict(),
            "trained": True,
            "encodings": dict(NATIVE),  # a model built here is untrained or trained by the caller
            **(metadata or {}),
        }
        if "model_hash" not in self.metadata:
            self.metadata["model_hash"] = state_dict_sha256(model)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, device: str = "cpu", precision: str = "fp32",
                        tasks: tuple[str, ...] | None = None, input_size: tuple[int, int] | None = None
                        ) -> TorchBackend:
        """Load `path`; None means the checkpoint shipped with the package, or, when there is
        none, a randomly initialised `tiny` model with metadata trained=False. `tasks` keeps only
        those of the model's tasks (MoELoRASAM.with_tasks); None keeps all."""
        from sam_mmseg_ros.model.checkpoint import default_checkpoint_path, load_checkpoint

        path = Path(path) if path is not None else default_checkpoint_path()
        if path is None:
            LOG.warning("no model checkpoint given and none shipped with the package: using a randomly "
                        "initialised '%s' model, its output is meaningless (reported as untrained)",
                        UNTRAINED_MODEL)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(UNTRAINED_SEED)
                model = build_model(UNTRAINED_MODEL)
            return cls(model, device, precision, metadata={"trained": False, "checkpoint": None},
                       input_size=input_size)
        model, extra = load_checkpoint(path, map_location="cpu")
        if tasks is not None:
            model = model.with_tasks(tasks)
        # What each slot was trained on (none recorded: the native encoders, the only ones before
        # the record existed); checked, and refused if unknown, where the inputs are made.
        metadata = {"trained": bool(extra.get("trained", True)), "checkpoint": str(path),
                    "model_hash": file_sha256(path), "encodings": extra.get("encodings", NATIVE)}
        return cls(model, device, precision, metadata=metadata, input_size=input_size)

    def infer(self, images: np.ndarray, modality_mask: np.ndarray) -> dict[str, np.ndarray]:
        validate_inputs(images, modality_mask, self.input_shape)
        autocast = (torch.autocast("cuda", torch.float16) if self.precision == "fp16"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            outputs = self.model(torch.from_numpy(images).to(self.device),
                                 torch.from_numpy(modality_mask).to(self.device))
        return check_outputs({k: v.cpu().numpy() for k, v in outputs.items()}, self.input_shape, images)
