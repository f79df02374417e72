"""Inference engines behind one Backend protocol (DESIGN.md §3): TensorRT on the vehicle, ONNX
Runtime (GPU, then CPU) where TensorRT is missing, torch as the last resort and the reference.

`create_backend("auto", ...)` is what the node and the evaluation call. Backend modules are
imported inside it, so `import sam_mmseg_ros.engine` loads neither torch nor onnxruntime.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from sam_mmseg_ros.contracts import BadFileError
from sam_mmseg_ros.engine.base import Backend

LOG = logging.getLogger(__name__)

CANDIDATES = ("tensorrt", "onnxruntime-gpu", "onnxruntime-cpu", "torch")
KINDS: dict[str, tuple[str, ...]] = {
    "auto": CANDIDATES,
    "tensorrt": ("tensorrt",),
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime-cpu"),
    "onnxruntime-gpu": ("onnxruntime-gpu",),
    "onnxruntime-cpu": ("onnxruntime-cpu",),
    "torch": ("torch",),
}
"""Backend kinds a caller may ask for, and the candidates each one tries, best first."""

_FALLBACK_ERRORS = (ImportError, OSError, RuntimeError, ValueError, MemoryError)
"""What makes a candidate unavailable: a missing package or GPU, a provider that failed to load,
an engine that must not be built or could not be built or loaded, memory that could not be
allocated, a context that could not be created, a first frame that failed. The backends raise
their libraries' own failures (pycuda's and onnxruntime's errors derive from Exception only)
as RuntimeError subclasses. Anything else is a bug and propagates."""


class BackendUnavailable(RuntimeError):
    """No candidate backend could be created; the message lists every reason."""


@dataclass
class _Request:
    checkpoint: str | os.PathLike | None
    onnx_path: str | os.PathLike | None
    engine_path: str | os.PathLike | None
    engine_trusted: bool
    precision: str
    device: str | None
    input_size: tuple[int, int] | None
    allow_build: bool
    cache_dir: Path
    log: logging.Logger
    tasks: tuple[str, ...] | None = None
    use_cuda_graph: bool = False
    workspace_mib: int | None = None
    _given_precision: str | None = field(default=None, repr=False)

    @property
    def device_index(self) -> int:
        return int(self.device.split(":")[1]) if self.device and ":" in self.device else 0

    def wants_cpu(self) -> bool:
        return self.device == "cpu"

    def onnx(self, precision: str) -> Path:
        """The ONNX file to run at `precision`: this checkpoint's cached export, or the file given,
        converted once to fp16 when it is fp32. A file that cannot be had at `precision` (fp16
        given, fp32 wanted) runs as it is, with a warning: never silently."""
        from sam_mmseg_ros.engine.export import cached_export, cached_fp16

        if self.onnx_path is None:
            return cached_export(self.checkpoint, self.cache_dir, precision=precision, input_size=self.input_size,
                                 tasks=self.tasks)
        given = Path(self.onnx_path)
        have = self.given_precision()
        if have == precision:
            return given
        if have == "fp32":
            return cached_fp16(given, self.cache_dir)
        self.log.warning("%s is an %s export and cannot be run at %s: running it as it is (export the checkpoint "
                         "at %s for that)", given, have, precision, precision)
        return given

    def given_precision(self) -> str:
        """The precision of the ONNX file given, read once (for all candidates) after it passed the
        checks on outside files."""
        if self._given_precision is None:
            from sam_mmseg_ros.engine.export import read_metadata
            from sam_mmseg_ros.engine.onnx_check import check_onnx_file

            check_onnx_file(self.onnx_path)
            self._given_precision = str(read_metadata(self.onnx_path).get("precision", "fp32"))
        return self._given_precision


def _tensorrt(req: _Request) -> Backend:
    if req.wants_cpu():
        raise RuntimeError("device='cpu' was requested")
    from sam_mmseg_ros.engine.tensorrt_backend import TensorRTBackend, probe

    probe(req.device_index)  # before any export: fail fast without TensorRT or a GPU
    if req.engine_path is not None and req.onnx_path is None and req.checkpoint is None:
        return TensorRTBackend.from_engine(req.engine_path, trusted=req.engine_trusted, precision=req.precision,
                                           use_cuda_graph=req.use_cuda_graph, device_index=req.device_index,
                                           logger=req.log)
    return TensorRTBackend.from_onnx(req.onnx(req.precision), engine_path=req.engine_path, cache_dir=req.cache_dir,
                                     allow_build=req.allow_build, use_cuda_graph=req.use_cuda_graph,
                                     device_index=req.device_index, logger=req.log,
                                     workspace_mib=req.workspace_mib)


def _onnxruntime(req: _Request, device: str) -> Backend:
    from sam_mmseg_ros.engine.onnxruntime_backend import (
        OnnxRuntimeBackend,
        ProviderUnavailable,
        available_devices,
    )

    if device == "gpu":
        if req.wants_cpu():
            raise RuntimeError("device='cpu' was requested")
        if not set(available_devices()) & {"tensorrt", "cuda"}:
            raise ProviderUnavailable("the installed onnxruntime has no CUDA or TensorRT execution provider")
        path_precision = req.precision
    else:
        # fp16 buys nothing on CPU: ONNX Runtime wraps most fp16 ops in casts to fp32 there.
        path_precision = "fp32"
        if req.precision != "fp32":
            req.log.info("ONNX Runtime on CPU runs fp32 (%s was requested; fp16 is slower on CPU)", req.precision)
    if req.onnx_path is None and req.engine_path is not None and req.checkpoint is None:
        raise RuntimeError("only a TensorRT engine was given; ONNX Runtime needs the ONNX file or the checkpoint")
    return OnnxRuntimeBackend(req.onnx(path_precision), device, cache_dir=req.cache_dir, logger=req.log)


def _torch(req: _Request) -> Backend:
    if req.checkpoint is None and (req.onnx_path is not None or req.engine_path is not None):
        raise RuntimeError("only an ONNX/engine file was given; torch needs the checkpoint it came from")
    import torch

    from sam_mmseg_ros.engine.torch_backend import TorchBackend

    device = req.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = req.precision if device.startswith("cuda") else "fp32"
    if precision != req.precision:
        req.log.info("torch on %s runs fp32 (%s was requested; fp16 needs CUDA)", device, req.precision)
    return TorchBackend.from_checkpoint(req.checkpoint, device, precision, tasks=req.tasks, input_size=req.input_size)


_CREATORS = {
    "tensorrt": _tensorrt,
    "onnxruntime-gpu": lambda req: _onnxruntime(req, "gpu"),
    "onnxruntime-cpu": lambda req: _onnxruntime(req, "cpu"),
    "torch": _torch,
}


def create_backend(kind: str = "auto", *, checkpoint: str | os.PathLike | None = None,
                   onnx_path: str | os.PathLike | None = None, engine_path: str | os.PathLike | None = None,
                   engine_trusted: bool = False, precision: str = "fp16", device: str | None = None,
                   input_size: tuple[int, int] | None = None, allow_build: bool = True,
                   cache_dir: str | os.PathLike | None = None, use_cuda_graph: bool = False,
                   workspace_mib: int | None = None, warmup_frames: int = 1,
                   logger: logging.Logger | None = None, tasks: tuple[str, ...] | None = None) -> Backend:
    """The best usable backend of `kind` (see KINDS), logging the choice and, for `auto`, why
    each better candidate was unavailable. The returned backend carries those reasons as
    `fallback_reasons` ("candidate: error" strings, empty when the first candidate worked),
    for diagnostics.

    Model source, in order: `engine_path` (TensorRT), `onnx_path`, else `checkpoint` (None: the
    shipped model, or a random untrained one), exported once into `cache_dir/onnx/`. An engine
    given alone loads only when its cache record matches this machine and `precision`; one
    without a record loads only with `engine_trusted=True` (logged as unchecked).
    `precision` applies to GPU backends (an fp32 `onnx_path` is converted once for fp16); CPU
    backends run fp32. `device`: None (best), "cpu", "cuda" or "cuda:N". `allow_build=False`
    makes a missing or stale TensorRT engine an error (a reason to fall back, for `auto`)
    instead of a build of several minutes. `use_cuda_graph` and `workspace_mib` (None: sized to
    the GPU) are TensorRT's. Each candidate runs `warmup_frames` dummy frames before it is
    chosen, so one that loads but cannot run (out of memory on its first frame) falls back too.
    `tasks` keeps only those of a checkpoint's tasks (e.g. ("semantic",): no depth, and none of
    its cost); a given ONNX or engine file is run as it is.
    """
    from sam_mmseg_ros.engine.engine_cache import default_cache_dir

    if kind not in KINDS:
        raise ValueError(f"backend kind must be one of {sorted(KINDS)}, got {kind!r}")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    log = logger or LOG
    req = _Request(checkpoint, onnx_path, engine_path, engine_trusted, precision, device,
                   tuple(int(v) for v in input_size) if input_size else None, allow_build,
                   Path(cache_dir) if cache_dir is not None else default_cache_dir(), log,
                   tuple(tasks) if tasks is not None else None, use_cuda_graph, workspace_mib)
    candidates = KINDS[kind]
    skipped: list[str] = []
    for candidate in candidates:
        backend = None
        try:
            backend = _CREATORS[candidate](req)
            if req.input_size and tuple(backend.input_shape[-2:]) != req.input_size:
                raise ValueError(f"model input is {tuple(backend.input_shape[-2:])}, {req.input_size} was requested")
            if warmup_frames > 0:
                backend.warmup(warmup_frames)
        except BadFileError:
            _release(backend)
            raise  # a damaged or hostile file is bad for every backend: no fallback hides it
        except _FALLBACK_ERRORS as exc:
            _release(backend)
            if len(candidates) == 1:
                raise
            skipped.append(f"{candidate}: {type(exc).__name__}: {exc}")
            log.warning("backend %s unavailable: %s: %s", candidate, type(exc).__name__, exc)
            continue
        backend.fallback_reasons = tuple(skipped)
        log.info("inference backend: %s (%s, input %s)%s", backend.name, backend.precision, backend.input_shape,
                 "; better ones skipped: " + " | ".join(skipped) if skipped else "")
        return backend
    raise BackendUnavailable(f"no {kind} backend could be created:\n  " + "\n  ".join(skipped))


def _release(backend: Backend | None) -> None:
    """Free what a candidate that is given up holds (GPU memory above all) before the next one
    tries to allocate."""
    close = getattr(backend, "close", None)
    if close is not None:
        close()


__all__ = ["KINDS", "Backend", "BackendUnavailable", "create_backend"]
