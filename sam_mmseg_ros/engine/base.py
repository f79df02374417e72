"""The Backend protocol every inference engine implements (DESIGN.md §3), and the input check
all of them share so a bad tensor fails the same clear way on torch, ONNX Runtime and TensorRT."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from sam_mmseg_ros.contracts import ENGINE_OUTPUTS, OPTIONAL_ENGINE_OUTPUTS, InputError


@runtime_checkable
class Backend(Protocol):
    """One loaded model ready to run on one device.

    `input_shape` is (1, M, 3, H, W). `output_names` are the contract outputs `infer` returns
    (ENGINE_OUTPUTS, then the model's optional task outputs). `metadata` holds at least: `classes` (list of names),
    `modalities` (order of the M axis), `input_size` ([H, W]), `trained` (False for a randomly
    initialised model, which the node reports as an error) and `model_hash` (sha256 hex).
    """

    name: str
    precision: str
    input_shape: tuple[int, ...]
    output_names: tuple[str, ...]
    metadata: dict

    def warmup(self, iterations: int = 2) -> None:
        """Run a few dummy frames so the first real frame does not pay for lazy init."""
        ...

    def infer(self, images: np.ndarray, modality_mask: np.ndarray) -> dict[str, np.ndarray]:
        """images float32 [1, M, 3, H, W], modality_mask float32 [1, M] ->
        {labels int32 [1, H, W], confidence float32 [1, H, W], router_weights float32 [1, M]},
        plus depth float32 [1, H, W] (metres) from a model with the depth task."""
        ...



class DummyFrameWarmup:
    """`warmup` for the backends: all-zero frames with every modality present, so lazy
    initialisation (allocations, kernel selection, graph capture) happens before the first camera
    frame rather than on it."""

    def warmup(self, iterations: int = 2) -> None:
        images = np.zeros(self.input_shape, np.float32)
        mask = np.ones(self.input_shape[:2], np.float32)
        for _ in range(iterations):
            self.infer(images, mask)

def validate_inputs(images: np.ndarray, modality_mask: np.ndarray, input_shape: tuple[int, ...]) -> None:
    """Raise InputError unless the arrays match the engine input contract exactly.

    Engines are built for one static shape and dtype; converting silently would hide a
    preprocessing bug, so the caller is told what it sent and what was expected. Costs
    microseconds: the pixels themselves are not scanned here (a NaN/Inf scan of 50 MB took
    4.6 ms at 1024x1024); `check_outputs` finds non-finite input from the outputs it spoils.
    """
    expected_mask = (input_shape[0], input_shape[1])
    for what, array, shape in (("images", images, tuple(input_shape)), ("modality_mask", modality_mask, expected_mask)):
        if not isinstance(array, np.ndarray):
            raise InputError(f"{what} must be a numpy array, got {type(array).__name__}")
        if array.dtype != np.float32:
            raise InputError(f"{what} must be float32, got {array.dtype}")
        if tuple(array.shape) != shape:
            raise InputError(f"{what} has shape {tuple(array.shape)}, the engine expects {shape}")
    if not ((modality_mask == 0.0) | (modality_mask == 1.0)).all():
        raise InputError(f"modality_mask must hold only 0 and 1, got {modality_mask.tolist()}")
    if not modality_mask.any():
        raise InputError("no modality is present (modality_mask is all zero): nothing to segment")


def contract_outputs(names) -> tuple[str, ...]:
    """A model's output names in contract order (ENGINE_OUTPUTS, then its optional task outputs
    in OPTIONAL_ENGINE_OUTPUTS order). Raises ValueError when one of ENGINE_OUTPUTS is missing or
    a name is not in the contract."""
    names = set(names)
    known = (*ENGINE_OUTPUTS, *OPTIONAL_ENGINE_OUTPUTS)
    if not set(ENGINE_OUTPUTS) <= names or not names <= set(known):
        raise ValueError(f"outputs {sorted(names)} do not follow the engine contract: all of "
                         f"{list(ENGINE_OUTPUTS)}, plus any of {list(OPTIONAL_ENGINE_OUTPUTS)}")
    return tuple(n for n in known if n in names)


def check_outputs(outputs: dict[str, np.ndarray], input_shape: tuple[int, ...],
                  images: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Check a backend's outputs against the contract (names, dtypes, shapes, finite values);
    returns them.

    NaN or Inf anywhere in a present modality, or in an absent slot (which should hold zeros),
    reaches the confidence map, as does an fp16 overflow inside the engine; `images` (the input
    that was run) tells the two apart, scanned only then.
    """
    batch, modalities, _, height, width = input_shape
    expected = {
        "labels": (np.int32, (batch, height, width)),
        "confidence": (np.float32, (batch, height, width)),
        "router_weights": (np.float32, (batch, modalities)),
        "depth": (np.float32, (batch, height, width)),
        "domain": (np.int32, (batch,)),
        "domain_confidence": (np.float32, (batch,)),
    }
    unknown = sorted(set(outputs) - set(expected))
    if unknown:
        raise RuntimeError(f"backend outputs {unknown} are not in the engine contract")
    for name in ENGINE_OUTPUTS + tuple(n for n in OPTIONAL_ENGINE_OUTPUTS if n in outputs):
        dtype, shape = expected[name]
        if name not in outputs:
            raise RuntimeError(f"backend output {name!r} is missing (got {sorted(outputs)})")
        out = outputs[name]
        if out.dtype != dtype or tuple(out.shape) != shape:
            raise RuntimeError(f"backend output {name!r} is {out.dtype}{tuple(out.shape)}, "
                               f"expected {np.dtype(dtype)}{shape}")
    if not (np.isfinite(outputs["confidence"].max()) and np.isfinite(outputs["router_weights"]).all()):
        if images is not None and not np.isfinite(images).all():
            raise InputError("images contain NaN or Inf")
        raise RuntimeError("the model produced NaN/Inf from finite input (overflow in an fp16 engine?)")
    return outputs
