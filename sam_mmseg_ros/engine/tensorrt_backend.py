"""TensorRT backend: builds an engine from the exported ONNX file and runs it with pycuda.

The only module that imports tensorrt and pycuda, and only inside functions, so the package
imports on machines without a GPU. Build: TensorRT 10 name-based API, strongly typed network
(the ONNX graph's own fp16/fp32 casts decide precision, no builder flags), a workspace limit,
a timing cache kept between builds, a configurable builder optimization level. Engines are
cached as DESIGN.md §3 says (see engine_cache.py). Runtime: pinned host buffers, device
buffers, one stream; the CUDA context is pushed and popped around every call because ROS
callbacks arrive on executor threads that do not own it; optional CUDA-graph replay through
the CUDA driver API (pycuda has no graph capture).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from sam_mmseg_ros.contracts import ENGINE_INPUTS
from sam_mmseg_ros.engine.base import DummyFrameWarmup, check_outputs, contract_outputs, validate_inputs
from sam_mmseg_ros.engine.engine_cache import (
    EngineCacheError,
    EngineKey,
    atomic_write,
    check_user_engine,
    default_cache_dir,
    default_engine_path,
    file_sha256,
    plan_engine,
    read_record,
    sidecar_path,
    store_engine,
    timing_cache_path,
)

LOG = logging.getLogger(__name__)

DEFAULT_WORKSPACE_MIB = 4096
DEFAULT_OPTIMIZATION_LEVEL = 3


class TensorRTUnavailable(RuntimeError):
    """tensorrt or pycuda is not installed, or there is no CUDA device."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX file or build an engine from it."""


class EngineLoadError(RuntimeError):
    """An engine file could not be deserialized (corrupted, or built by another TensorRT)."""


def _import():
    """(tensorrt, pycuda.driver) with a clear error when either is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT Python package not importable ({exc})") from exc
    if not hasattr(trt, "Builder"):  # the tensorrt-stubs package alone provides only .pyi files
        raise TensorRTUnavailable("the installed 'tensorrt' has no runtime (only type stubs?)")
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise TensorRTUnavailable(f"pycuda not importable ({exc})") from exc
    return trt, cuda


def probe(device_index: int = 0) -> tuple[str, str, tuple[int, int]]:
    """(TensorRT version, GPU name, compute capability) of this machine, or TensorRTUnavailable."""
    trt, cuda = _import()
    try:
        cuda.init()
        if cuda.Device.count() <= device_index:
            raise TensorRTUnavailable(f"no CUDA device {device_index} ({cuda.Device.count()} found)")
        device = cuda.Device(device_index)
        return trt.__version__, device.name(), tuple(device.compute_capability())
    except cuda.Error as exc:
        raise TensorRTUnavailable(f"CUDA driver not usable: {exc}") from exc


def _make_logger(trt, log: logging.Logger):
    """A trt.ILogger that forwards to Python logging and keeps the errors for exceptions."""

    class RecordingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return RecordingLogger()


def _make_progress_monitor(trt):
    """A trt.IProgressMonitor feeding one tqdm bar per build phase (builds take minutes)."""
    from tqdm import tqdm

    class TqdmProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, tqdm] = {}
            self._lock = threading.Lock()  # TensorRT may report from several threads

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                depth = len(self._bars)
                self._bars[phase_name] = tqdm(total=num_steps, desc=("  " * depth) + phase_name,
                                              position=depth, leave=depth == 0, unit="step")

        def step_complete(self, phase_name, step):
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
            return True

        def phase_finish(self, phase_name):
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return TqdmProgressMonitor()


def build_engine_bytes(onnx_path: str | os.PathLike, *, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                       optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL,
                       timing_cache: str | os.PathLike | None = None, show_progress: bool = True,
                       logger: logging.Logger | None = None) -> bytes:
    """Parse `onnx_path` into a strongly typed network and build a serialized engine.

    Raises EngineBuildError with every parser error (node, operator, message) on failure.
    """
    trt, _ = _import()
    log = logger or LOG
    trt_logger = _make_logger(trt, log)
    builder = trt.Builder(trt_logger)
    # Strongly typed: the ONNX graph's own casts fix every tensor's type. TensorRT 11 networks are
    # strongly typed by default and may drop the flag, hence the lookup.
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            error = parser.get_error(i)
            errors.append(f"  node {error.node()} ({error.node_operator()} {error.node_name()!r}): "
                          f"{error.desc()} [{error.code()}]")
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}:\n" + "\n".join(errors or trt_logger.errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    config.builder_optimization_level = int(optimization_level)
    cache_bytes = b""
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, False):
        log.warning("timing cache %s does not fit this TensorRT/GPU; starting a new one", timing_cache)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    if show_progress:
        config.progress_monitor = _make_progress_monitor(trt)

    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path}:\n  "
                               + "\n  ".join(trt_logger.errors or ["(no error message from TensorRT)"]))
    log.info("built TensorRT engine from %s in %.1f s (%.1f MB)", onnx_path, time.monotonic() - started,
             serialized.nbytes / 1e6)
    if timing_cache is not None:
        atomic_write(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def ensure_engine(onnx_path: str | os.PathLike, *, engine_path: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None, allow_build: bool = True, force: bool = False,
                  workspace_mib: int = DEFAULT_WORKSPACE_MIB, optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL,
                  show_progress: bool = True, device_index: int = 0,
                  logger: logging.Logger | None = None) -> Path:
    """Path of a valid engine for `onnx_path` on this GPU, building it when needed (and allowed).

    A valid cached engine is never rebuilt (unless `force`); an engine built for another ONNX,
    TensorRT, GPU or precision is rebuilt, or EngineCacheError when `allow_build` is False.
    """
    from sam_mmseg_ros.engine.export import read_metadata
    from sam_mmseg_ros.engine.onnx_check import check_onnx_file

    log = logger or LOG
    trt_version, gpu_name, capability = probe(device_index)
    metadata = read_metadata(onnx_path)
    key = EngineKey(file_sha256(onnx_path), trt_version, gpu_name, capability, str(metadata.get("precision", "fp32")))
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    engine_path = Path(engine_path) if engine_path is not None else default_engine_path(cache_dir, onnx_path, key)
    plan = plan_engine(engine_path, key, allow_build=allow_build)
    if plan.action == "load" and not force:
        log.info("TensorRT engine cache hit: %s", plan.reason)
        return engine_path
    log.info("building TensorRT engine %s: %s", engine_path, "forced" if force and plan.action == "load" else plan.reason)
    check_onnx_file(onnx_path)  # before TensorRT's parser opens it and its external data
    data = build_engine_bytes(onnx_path, workspace_mib=workspace_mib, optimization_level=optimization_level,
                              timing_cache=timing_cache_path(cache_dir, trt_version, gpu_name, capability),
                              show_progress=show_progress, logger=log)
    return store_engine(engine_path, key, data, onnx_path=str(onnx_path), metadata=metadata,
                        workspace_mib=workspace_mib, optimization_level=optimization_level)


class _CudaGraph:
    """One CUDA graph captured on a stream and replayed, through the driver API (libcuda),
    which shares pycuda's contexts and streams."""

    _CAPTURE_MODE_THREAD_LOCAL = 1  # CU_STREAM_CAPTURE_MODE_THREAD_LOCAL

    def __init__(self, stream_handle: int, enqueue) -> None:
        self._lib = ctypes.CDLL("libcuda.so.1")
        self._graph = ctypes.c_void_p()
        self._exec = ctypes.c_void_p()
        stream = ctypes.c_void_p(stream_handle)
        self._check(self._lib.cuStreamBeginCapture_v2(stream, self._CAPTURE_MODE_THREAD_LOCAL), "begin capture")
        try:
            ok = enqueue()
        finally:
            self._check(self._lib.cuStreamEndCapture(stream, ctypes.byref(self._graph)), "end capture")
        if not ok:
            raise RuntimeError("execute_async_v3 failed during CUDA graph capture")
        self._check(self._lib.cuGraphInstantiateWithFlags(ctypes.byref(self._exec), self._graph,
                                                          ctypes.c_ulonglong(0)), "instantiate")

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            message = ctypes.c_char_p()
            self._lib.cuGetErrorString(result, ctypes.byref(message))
            raise RuntimeError(f"CUDA graph {what} failed: {message.value.decode() if message.value else result}")

    def launch(self, stream_handle: int) -> None:
        self._check(self._lib.cuGraphLaunch(self._exec, ctypes.c_void_p(stream_handle)), "launch")

    def release(self) -> None:
        if self._exec:
            self._lib.cuGraphExecDestroy(self._exec)
        if self._graph:
            self._lib.cuGraphDestroy(self._graph)
        self._exec = self._graph = ctypes.c_void_p()


class TensorRTBackend(DummyFrameWarmup):
    """Backend protocol (engine/base.py) on a TensorRT engine file with a cache record.

    Use `TensorRTBackend.from_onnx(...)` to build-or-load through the engine cache.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, *, record: dict | None = None, use_cuda_graph: bool = False,
                 device_index: int = 0, logger: logging.Logger | None = None) -> None:
        trt, cuda = _import()
        self._log = logger or LOG
        self._cuda = cuda
        self.engine_path = Path(engine_path)
        record = read_record(self.engine_path) if record is None else record
        # An empty record: an engine the user marked trusted; what it was built from is unknown.
        self.metadata = dict(record.get("metadata", {})) if record else {"trained": True, "trusted_without_record": True}
        self.precision = str(record["key"]["precision"]) if record else "unrecorded"
        self._lock = threading.Lock()
        self._graph: _CudaGraph | None = None

        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, object] = {}
        cuda.init()
        self._context = cuda.Device(device_index).retain_primary_context()
        self._context.push()
        try:
            self._load(trt, cuda)
        except BaseException:
            self._device.clear()  # free the buffers while their context is current
            cuda.Context.pop()
            self._context.detach()
            raise
        cuda.Context.pop()
        self._log.info("TensorRT %s engine %s loaded (%s, input %s)", trt.__version__, self.engine_path.name,
                       self.precision, self.input_shape)
        if use_cuda_graph:
            self._capture_graph()

    def _load(self, trt, cuda) -> None:
        """Deserialize the engine and allocate its buffers (inside the pushed context)."""
        self._trt_logger = _make_logger(trt, self._log)
        self._runtime = trt.Runtime(self._trt_logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise EngineLoadError(
                f"TensorRT {trt.__version__} could not load {self.engine_path} (corrupted, or built by another "
                f"TensorRT version or for another GPU): " + "; ".join(self._trt_logger.errors))
        self._execution = self._engine.create_execution_context()
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(self._engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            self._host[name] = cuda.pagelocked_empty(shape, dtype)
            self._device[name] = cuda.mem_alloc(max(self._host[name].nbytes, 1))
            self._execution.set_tensor_address(name, int(self._device[name]))
        inputs = [n for n in self._host if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        try:
            if sorted(inputs) != sorted(ENGINE_INPUTS):
                raise ValueError(f"inputs are {sorted(inputs)}, not {list(ENGINE_INPUTS)}")
            self.output_names = contract_outputs(n for n in self._host if n not in inputs)
        except ValueError as exc:
            raise EngineLoadError(f"{self.engine_path} does not follow the engine contract: {exc}") from exc
        self.input_shape = tuple(self._host["images"].shape)
        self._stream = cuda.Stream()

    @classmethod
    def from_onnx(cls, onnx_path: str | os.PathLike, *, engine_path: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None, allow_build: bool = True,
                  use_cuda_graph: bool = False, device_index: int = 0, logger: logging.Logger | None = None,
                  **build_options) -> TensorRTBackend:
        """Load the cached engine for `onnx_path`, building it first when needed. An engine that
        TensorRT refuses to deserialize despite a matching record is rebuilt once."""
        path = ensure_engine(onnx_path, engine_path=engine_path, cache_dir=cache_dir, allow_build=allow_build,
                             device_index=device_index, logger=logger, **build_options)
        try:
            return cls(path, use_cuda_graph=use_cuda_graph, device_index=device_index, logger=logger)
        except EngineLoadError as exc:
            if not allow_build:
                raise EngineCacheError(f"{exc}; building is disabled") from exc
            (logger or LOG).warning("%s; rebuilding", exc)
            path = ensure_engine(onnx_path, engine_path=path, cache_dir=cache_dir, allow_build=True, force=True,
                                 device_index=device_index, logger=logger, **build_options)
            return cls(path, use_cuda_graph=use_cuda_graph, device_index=device_index, logger=logger)

    @classmethod
    def from_engine(cls, engine_path: str | os.PathLike, *, trusted: bool = False, precision: str | None = None,
                    use_cuda_graph: bool = False, device_index: int = 0,
                    logger: logging.Logger | None = None) -> TensorRTBackend:
        """Load an engine file without its ONNX: its record must match this TensorRT and GPU (and
        `precision` when given), since without the ONNX file it cannot be rebuilt. An engine
        without a record loads only when `trusted`, with a warning that nothing was checked."""
        trt_version, gpu_name, capability = probe(device_index)
        check = check_user_engine(
            engine_path, lambda stored: EngineKey(stored.onnx_sha256, trt_version, gpu_name, capability,
                                                  precision or stored.precision), trusted=trusted)
        if not check.valid:
            raise EngineCacheError(f"{check.reason}; or pass the ONNX file to rebuild it")
        if not sidecar_path(engine_path).is_file():
            (logger or LOG).warning("TensorRT: %s", check.reason)
            return cls(engine_path, record={}, use_cuda_graph=use_cuda_graph, device_index=device_index, logger=logger)
        return cls(engine_path, use_cuda_graph=use_cuda_graph, device_index=device_index, logger=logger)

    def _capture_graph(self) -> None:
        """Record the engine's kernels once and replay them, which saves the per-kernel launch
        cost on every frame. The engine runs once first so TensorRT finishes lazy set-up
        outside the capture. Falls back to plain execution if capture is not supported."""
        self._context.push()
        try:
            self._execution.execute_async_v3(self._stream.handle)
            self._stream.synchronize()
            self._graph = _CudaGraph(self._stream.handle, lambda: self._execution.execute_async_v3(self._stream.handle))
            self._log.info("TensorRT: CUDA graph captured, replaying it per frame")
        except (OSError, RuntimeError, AttributeError) as exc:
            self._graph = None
            self._log.warning("CUDA graph capture not available (%s); running without it", exc)
        finally:
            self._cuda.Context.pop()

    def infer(self, images: np.ndarray, modality_mask: np.ndarray) -> dict[str, np.ndarray]:
        validate_inputs(images, modality_mask, self.input_shape)
        cuda = self._cuda
        with self._lock:
            self._context.push()
            try:
                np.copyto(self._host["images"], images)
                np.copyto(self._host["modality_mask"], modality_mask)
                for name in ENGINE_INPUTS:
                    cuda.memcpy_htod_async(self._device[name], self._host[name], self._stream)
                if self._graph is not None:
                    self._graph.launch(self._stream.handle)
                elif not self._execution.execute_async_v3(self._stream.handle):
                    raise RuntimeError("TensorRT execute_async_v3 failed: " + "; ".join(self._trt_logger.errors[-3:]))
                for name in self.output_names:
                    cuda.memcpy_dtoh_async(self._host[name], self._device[name], self._stream)
                self._stream.synchronize()
            finally:
                cuda.Context.pop()
            outputs = {name: self._host[name].copy() for name in self.output_names}
        return check_outputs(outputs, self.input_shape)

    def close(self) -> None:
        """Free the CUDA graph, buffers and engine inside the context that owns them."""
        if self._context is None:
            return
        self._context.push()
        try:
            if self._graph is not None:
                self._graph.release()
                self._graph = None
            for allocation in self._device.values():
                allocation.free()
            self._device.clear()
            self._execution = self._engine = self._runtime = None
        finally:
            self._cuda.Context.pop()
            self._context.detach()
            self._context = None
