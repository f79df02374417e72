"""TensorRT backend: builds an engine from the exported ONNX file and runs it with pycuda.

The only module that imports tensorrt and pycuda, and only inside functions, so the package
imports on machines without a GPU. Build: TensorRT 10 name-based API, strongly typed network
(the ONNX graph's own fp16/fp32 casts decide precision; TF32 off for fp32 engines), a
workspace limit sized to the device, a timing cache kept between builds, a configurable builder
optimization level. Engines are cached as DESIGN.md §3 says (see engine_cache.py), keyed by the
GPU model down to its SM count and memory (every Jetson Orin reports "Orin", sm 8.7). Runtime:
host buffers the caller can fill in place (`input_buffer`): pinned with one asynchronous copy
each way on a discrete GPU, mapped (no copy at all) on an integrated one such as Jetson, whose
GPU shares the host memory; device buffers, one stream; the CUDA context is pushed and popped
around every call because ROS callbacks arrive on executor threads that do not own it;
optional CUDA-graph replay through the CUDA driver API (pycuda has no graph capture).

Every CUDA failure (pycuda's errors derive from Exception only) and every TensorRT refusal is
raised as a RuntimeError subclass, so `create_backend("auto")` falls back to the next backend.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from dataclasses import dataclass
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

MIN_TENSORRT_MAJOR = 10
"""The name-based tensor API (set_tensor_address, execute_async_v3) and strongly typed networks
this backend uses. JetPack 6.0 ships TensorRT 8.6; JetPack 6.1 and later ship TensorRT 10."""
MAX_DEFAULT_WORKSPACE_MIB = 2048
DEFAULT_OPTIMIZATION_LEVEL = 3


class TensorRTUnavailable(RuntimeError):
    """tensorrt or pycuda is not installed, or there is no CUDA device."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX file or build an engine from it."""


class EngineLoadError(RuntimeError):
    """An engine file could not be deserialized (corrupted, or built by another TensorRT)."""


class GpuResourceError(RuntimeError):
    """The GPU could not provide what a valid engine needs (memory, a context) or failed running
    it; rebuilding the engine would not help."""


def _import():
    """(tensorrt, pycuda.driver) with a clear error when either is missing or TensorRT is older
    than MIN_TENSORRT_MAJOR."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT Python package not importable ({exc})") from exc
    if not hasattr(trt, "Builder"):  # the tensorrt-stubs package alone provides only .pyi files
        raise TensorRTUnavailable("the installed 'tensorrt' has no runtime (only type stubs?)")
    version = str(getattr(trt, "__version__", "unknown"))
    major = version.split(".")[0]
    if not major.isdigit() or int(major) < MIN_TENSORRT_MAJOR:
        raise TensorRTUnavailable(
            f"TensorRT {version} is installed; sam_mmseg_ros needs TensorRT {MIN_TENSORRT_MAJOR} or newer "
            "(name-based tensor API, strongly typed networks; on Jetson: JetPack 6.1 or newer)")
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise TensorRTUnavailable(f"pycuda not importable ({exc})") from exc
    return trt, cuda


@dataclass(frozen=True)
class DeviceInfo:
    """What an engine built here depends on, and how to lay out its buffers."""

    tensorrt_version: str
    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    total_memory: int  # bytes
    integrated: bool  # GPU shares the host memory (Jetson): buffers are mapped, not copied

    def engine_key(self, onnx_sha256: str, precision: str) -> EngineKey:
        return EngineKey(onnx_sha256, self.tensorrt_version, self.name, self.compute_capability, precision,
                         self.sm_count, round(self.total_memory / 2**30))


def probe(device_index: int = 0) -> DeviceInfo:
    """TensorRT version and the GPU's identity on this machine, or TensorRTUnavailable."""
    trt, cuda = _import()
    try:
        cuda.init()
        if cuda.Device.count() <= device_index:
            raise TensorRTUnavailable(f"no CUDA device {device_index} ({cuda.Device.count()} found)")
        device = cuda.Device(device_index)
        return DeviceInfo(trt.__version__, device.name(), tuple(device.compute_capability()),
                          int(device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)),
                          int(device.total_memory()),
                          bool(device.get_attribute(cuda.device_attribute.INTEGRATED)))
    except cuda.Error as exc:
        raise TensorRTUnavailable(f"CUDA driver not usable: {exc}") from exc


def default_workspace_mib(total_memory: int) -> int:
    """Builder workspace limit: an eighth of the device memory, at most MAX_DEFAULT_WORKSPACE_MIB
    (1 GiB on an 8 GB Jetson Orin Nano, whose memory the whole system shares)."""
    return int(min(MAX_DEFAULT_WORKSPACE_MIB, total_memory // 8 >> 20))


def _parser_error_text(error) -> str:
    """One parser error as text. ParserError gained node_name/node_operator in TensorRT 10, so
    they are read only where they exist: formatting an error must never raise one."""
    def field(name: str) -> str:
        method = getattr(error, name, None)
        return str(method()) if callable(method) else "?"

    return (f"  node {field('node')} ({field('node_operator')} {field('node_name')!r}): "
            f"{field('desc')} [{field('code')}]")


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


def build_engine_bytes(onnx_path: str | os.PathLike, *, workspace_mib: int,
                       optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL, precision: str = "fp16",
                       timing_cache: str | os.PathLike | None = None, show_progress: bool = True,
                       logger: logging.Logger | None = None) -> bytes:
    """Parse `onnx_path` into a strongly typed network and build a serialized engine.

    `precision` is the ONNX file's: for "fp32" TF32 is switched off, so an fp32 engine computes
    what the fp32 reference does (TensorRT enables TF32 by default).
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
        errors = [_parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}:\n" + "\n".join(errors or trt_logger.errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    config.builder_optimization_level = int(optimization_level)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
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
                  workspace_mib: int | None = None, optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL,
                  show_progress: bool = True, device_index: int = 0,
                  logger: logging.Logger | None = None) -> Path:
    """Path of a valid engine for `onnx_path` on this GPU, building it when needed (and allowed).

    A valid cached engine is never rebuilt (unless `force`); an engine built for another ONNX,
    TensorRT, GPU or precision is rebuilt, or EngineCacheError when `allow_build` is False.
    `workspace_mib` None: `default_workspace_mib` of this device.
    """
    from sam_mmseg_ros.engine.export import read_metadata
    from sam_mmseg_ros.engine.onnx_check import check_onnx_file

    log = logger or LOG
    device = probe(device_index)
    metadata = read_metadata(onnx_path)
    key = device.engine_key(file_sha256(onnx_path), str(metadata.get("precision", "fp32")))
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    engine_path = Path(engine_path) if engine_path is not None else default_engine_path(cache_dir, onnx_path, key)
    plan = plan_engine(engine_path, key, allow_build=allow_build)
    if plan.action == "load" and not force:
        log.info("TensorRT engine cache hit: %s", plan.reason)
        return engine_path
    log.info("building TensorRT engine %s: %s", engine_path, "forced" if force and plan.action == "load" else plan.reason)
    check_onnx_file(onnx_path)  # before TensorRT's parser opens it and its external data
    workspace_mib = default_workspace_mib(device.total_memory) if workspace_mib is None else int(workspace_mib)
    data = build_engine_bytes(onnx_path, workspace_mib=workspace_mib, optimization_level=optimization_level,
                              precision=key.precision, timing_cache=timing_cache_path(cache_dir, key),
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

    Use `TensorRTBackend.from_onnx(...)` to build-or-load through the engine cache. Write frames
    into `input_buffer()` to spare the copy into the engine's host buffer.
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
        self._context = None
        try:
            cuda.init()
            device = cuda.Device(device_index)
            self.mapped = bool(device.get_attribute(cuda.device_attribute.INTEGRATED))
            self._context = device.retain_primary_context()
            self._context.push()
            try:
                self._load(trt, cuda)
            finally:
                cuda.Context.pop()
            if use_cuda_graph:
                self._capture_graph()
        except cuda.Error as exc:
            self.close()
            raise GpuResourceError(f"CUDA failed while setting up {self.engine_path.name} on GPU {device_index}: "
                                   f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self._log.info("TensorRT %s engine %s loaded (%s, input %s, %s host buffers%s)", trt.__version__,
                       self.engine_path.name, self.precision, self.input_shape,
                       "mapped" if self.mapped else "pinned", ", CUDA graph" if self._graph else "")

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
        if self._execution is None:  # TensorRT reports a failed activation-memory allocation this way
            free, total = cuda.mem_get_info()
            raise GpuResourceError(
                f"TensorRT could not create an execution context for {self.engine_path.name} (out of GPU memory? "
                f"{free >> 20} of {total >> 20} MiB free): " + "; ".join(self._trt_logger.errors))
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(self._engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            if self.mapped:  # the GPU reads and writes these pages itself: no device copy, no transfer
                self._host[name] = cuda.pagelocked_empty(shape, dtype, mem_flags=cuda.host_alloc_flags.DEVICEMAP)
                address = int(self._host[name].base.get_device_pointer())
            else:
                self._host[name] = cuda.pagelocked_empty(shape, dtype)
                self._device[name] = cuda.mem_alloc(max(self._host[name].nbytes, 1))
                address = int(self._device[name])
            self._execution.set_tensor_address(name, address)
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
        device = probe(device_index)
        check = check_user_engine(
            engine_path, lambda stored: device.engine_key(stored.onnx_sha256, precision or stored.precision),
            trusted=trusted)
        if not check.valid:
            raise EngineCacheError(f"{check.reason}; or pass the ONNX file to rebuild it")
        if not sidecar_path(engine_path).is_file():
            (logger or LOG).warning("TensorRT: %s", check.reason)
            return cls(engine_path, record={}, use_cuda_graph=use_cuda_graph, device_index=device_index, logger=logger)
        return cls(engine_path, use_cuda_graph=use_cuda_graph, device_index=device_index, logger=logger)

    def input_buffer(self) -> np.ndarray:
        """The engine's own host input buffer [1, M, 3, H, W] float32 (pinned, or mapped into the
        GPU on Jetson). Preprocessing that writes the frame here saves `infer` a 50 MB copy at
        1024x1024; the contents belong to the engine again once `infer` is called."""
        return self._host["images"]

    def memory_report(self) -> dict[str, float]:
        """GPU memory in MiB: the engine's activation memory, and what the whole device has in use
        with the engine loaded (weights, activations, buffers, CUDA context, other processes)."""
        self._context.push()
        try:
            free, total = self._cuda.mem_get_info()
        finally:
            self._cuda.Context.pop()
        engine = self._engine
        activations = getattr(engine, "device_memory_size_v2", None)  # TensorRT 10.1+; 10.0 has the v1
        activations = engine.device_memory_size if activations is None else activations
        return {"engine_activation_memory": activations / 2**20, "device_memory_in_use": (total - free) / 2**20,
                "device_memory_total": total / 2**20}

    def _capture_graph(self) -> None:
        """Record the engine's kernels once and replay them, which saves the per-kernel launch
        cost on every frame. The engine runs once first so TensorRT finishes lazy set-up
        outside the capture (a CUDA error there is the engine failing, and raised). Falls back
        to plain execution if capture itself is not supported."""
        self._context.push()
        try:
            if not self._execution.execute_async_v3(self._stream.handle):
                raise GpuResourceError("TensorRT execute_async_v3 failed: " + "; ".join(self._trt_logger.errors[-3:]))
            self._stream.synchronize()
            try:
                self._graph = _CudaGraph(self._stream.handle,
                                         lambda: self._execution.execute_async_v3(self._stream.handle))
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
                if images is not self._host["images"]:
                    np.copyto(self._host["images"], images)
                np.copyto(self._host["modality_mask"], modality_mask)
                if not self.mapped:
                    for name in ENGINE_INPUTS:
                        cuda.memcpy_htod_async(self._device[name], self._host[name], self._stream)
                if self._graph is not None:
                    self._graph.launch(self._stream.handle)
                elif not self._execution.execute_async_v3(self._stream.handle):
                    raise RuntimeError("TensorRT execute_async_v3 failed: " + "; ".join(self._trt_logger.errors[-3:]))
                if not self.mapped:
                    for name in self.output_names:
                        cuda.memcpy_dtoh_async(self._host[name], self._device[name], self._stream)
                self._stream.synchronize()
            except cuda.Error as exc:
                raise GpuResourceError(f"TensorRT inference failed on the GPU: {type(exc).__name__}: {exc}") from exc
            finally:
                cuda.Context.pop()
            outputs = {name: self._host[name].copy() for name in self.output_names}
        return check_outputs(outputs, self.input_shape, images)

    def close(self) -> None:
        """Free the CUDA graph, buffers and engine inside the context that owns them."""
        context, self._context = self._context, None
        if context is None:
            return
        try:
            context.push()
        except self._cuda.Error as exc:  # a context that cannot be made current holds nothing of ours
            self._log.warning("CUDA context of %s unusable while closing: %s", self.engine_path.name, exc)
            self._graph = None
            self._device.clear()
            self._host.clear()
            context.detach()
            return
        try:
            if self._graph is not None:
                self._graph.release()
                self._graph = None
            for allocation in self._device.values():
                allocation.free()
            self._device.clear()
            self._host.clear()
            self._execution = self._engine = self._runtime = None
        finally:
            self._cuda.Context.pop()
            context.detach()
