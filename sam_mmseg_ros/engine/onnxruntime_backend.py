"""ONNX Runtime backend: the exported ONNX file on CPU, or on the GPU through ONNX Runtime's
TensorRT / CUDA execution providers when the installed onnxruntime has them.

ONNX Runtime quietly falls back to CPU when a GPU provider is listed but cannot load (missing
CUDA or cuDNN libraries), so the backend asks the session which providers it really got and
reports that, instead of the ones it asked for.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from sam_mmseg_ros.engine.base import DummyFrameWarmup, check_outputs, contract_outputs, validate_inputs
from sam_mmseg_ros.engine.export import decode_metadata
from sam_mmseg_ros.engine.onnx_check import check_onnx_file

LOG = logging.getLogger(__name__)

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_DEVICES = ("tensorrt", "cuda")


class ProviderUnavailable(RuntimeError):
    """The requested execution provider is not installed or did not load."""


class SessionError(RuntimeError):
    """ONNX Runtime refused the model (invalid graph, unsupported IR or opset, provider failure)."""


def available_devices() -> list[str]:
    """Devices (keys of PROVIDERS) this onnxruntime build offers, best first."""
    import onnxruntime as ort

    offered = set(ort.get_available_providers())
    return [device for device, provider in PROVIDERS.items() if provider in offered]


class OnnxRuntimeBackend(DummyFrameWarmup):
    """Backend protocol (engine/base.py) on an onnxruntime InferenceSession.

    `device`: "cpu", "cuda", "tensorrt", or "gpu" (TensorRT provider, else CUDA). A GPU request
    that ends up on the CPU raises ProviderUnavailable, so `create_backend` can say why.
    """

    def __init__(self, onnx_path: str | os.PathLike, device: str = "cpu", *, cache_dir: str | os.PathLike | None = None,
                 threads: int | None = None, logger: logging.Logger | None = None) -> None:
        import onnxruntime as ort

        self._log = logger or LOG
        self.onnx_path = Path(onnx_path)
        m, h, w = check_onnx_file(self.onnx_path)  # before ONNX Runtime reads a byte of it
        self.input_shape = (1, m, 3, h, w)
        wanted = self._provider_list(device, cache_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # fp16 graphs on CPU log a warning per unfoldable node
        # Idle intra-op threads sleep instead of spinning: the node shares the CPU with its
        # sensor stages, and spinning threads take the cores they (and ONNX Runtime's own
        # workers) need. On the shared 2-core bench machine this made ViT-B ~13% faster.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            # ONNX Runtime's constant folding would store the attention's one-hot key columns,
            # expanded over images and heads, as weights: vit_b at 1024x1024 peaked at 6.0 GiB with
            # it, 5.0 GiB without (measured). The export is already folded otherwise; expanding
            # them per frame costs nothing measurable (shipped model: CPU time within 2 %).
            self.session = ort.InferenceSession(str(self.onnx_path), sess_options=options, providers=wanted,
                                                disabled_optimizers=["ConstantFolding"])
        except Exception as exc:
            # onnxruntime's own errors (Fail, InvalidGraph...) derive from Exception only.
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            raise SessionError(f"ONNX Runtime could not load {self.onnx_path} on {device}: {exc}") from exc
        self.providers = list(self.session.get_providers())
        self.device = next(d for d, p in PROVIDERS.items() if p == self.providers[0])
        if device != "cpu" and self.device == "cpu":
            raise ProviderUnavailable(
                f"ONNX Runtime was asked for {[p for p, _ in wanted if p != PROVIDERS['cpu']]} but the session "
                f"runs on {self.providers} (GPU provider failed to load: CUDA/cuDNN libraries missing?)")
        self.name = f"onnxruntime-{self.device}"

        self.metadata = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.precision = str(self.metadata.get("precision", "fp32"))
        try:
            self.output_names = contract_outputs(o.name for o in self.session.get_outputs())
        except ValueError as exc:
            raise ValueError(f"{self.onnx_path}: {exc}; export it with `sam-mmseg export`") from exc
        self._log.info("ONNX Runtime %s: %s (%s) on providers %s", ort.__version__, self.onnx_path.name,
                       self.precision, self.providers)

    @staticmethod
    def _provider_list(device: str, cache_dir: str | os.PathLike | None) -> list:
        offered = available_devices()
        if device == "gpu":
            chosen = [d for d in GPU_DEVICES if d in offered]
            if not chosen:
                raise ProviderUnavailable("this onnxruntime has no GPU execution provider (install onnxruntime-gpu)")
        elif device in PROVIDERS:
            if device not in offered:
                raise ProviderUnavailable(f"this onnxruntime has no {PROVIDERS[device]} (offers {offered})")
            chosen = [device]
        else:
            raise ValueError(f"device must be one of {[*PROVIDERS, 'gpu']}, got {device!r}")
        providers = []
        for d in [*chosen, "cpu"] if "cpu" not in chosen else chosen:
            options = {}
            if d == "tensorrt" and cache_dir is not None:
                # Strongly typed graphs carry their precision; the provider caches its engines.
                engines = Path(cache_dir) / "ort_tensorrt"
                engines.mkdir(parents=True, exist_ok=True)
                options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(engines),
                           "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(engines)}
            providers.append((PROVIDERS[d], options))
        return providers

    def infer(self, images: np.ndarray, modality_mask: np.ndarray) -> dict[str, np.ndarray]:
        validate_inputs(images, modality_mask, self.input_shape)
        try:
            values = self.session.run(list(self.output_names), {"images": images, "modality_mask": modality_mask})
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):  # e.g. out of GPU memory on a provider
                raise
            raise SessionError(f"ONNX Runtime failed running {self.onnx_path.name} on {self.device}: {exc}") from exc
        return check_outputs(dict(zip(self.output_names, values, strict=True)), self.input_shape, images)
