"""TensorRT backend without a GPU: every TensorRT name it uses is checked against the real
TensorRT 10.13 API (tensorrt-stubs), every pycuda / CUDA driver name against their documented
API; the build-and-cache flow and the `build-engine` command run against a fake `tensorrt`
whose members are themselves checked against the stubs. GPU tests (marked) run the real thing."""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import json
import logging
import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx_fixtures import contract_model

import sam_mmseg_ros.engine.tensorrt_backend as trt_backend
from sam_mmseg_ros import cli
from sam_mmseg_ros.contracts import ENGINE_INPUTS, ENGINE_OUTPUTS
from sam_mmseg_ros.engine import BackendUnavailable, create_backend, engine_cache
from sam_mmseg_ros.engine.build import EXIT_BUILD_FAILED, EXIT_NO_TENSORRT
from sam_mmseg_ros.engine.engine_cache import EngineCacheError, read_record, sidecar_path
from sam_mmseg_ros.engine.export import read_metadata, write_metadata
from sam_mmseg_ros.model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

BACKEND_SOURCE = Path(trt_backend.__file__).read_text()

# --------------------------------------------------------------------------- the real APIs

TRT_USED: dict[str, set[str]] = {
    "ILogger": {"__init__", "log", "Severity"},
    "ILogger.Severity": {"INTERNAL_ERROR", "ERROR", "WARNING"},
    "IProgressMonitor": {"__init__", "phase_start", "step_complete", "phase_finish"},
    "Builder": {"__init__", "create_network", "create_builder_config", "build_serialized_network"},
    "NetworkDefinitionCreationFlag": {"STRONGLY_TYPED"},
    "OnnxParser": {"__init__", "parse_from_file", "num_errors", "get_error"},
    "ParserError": {"node", "node_operator", "node_name", "desc", "code"},
    "IBuilderConfig": {"set_memory_pool_limit", "builder_optimization_level", "create_timing_cache",
                       "set_timing_cache", "get_timing_cache", "progress_monitor", "clear_flag"},
    "BuilderFlag": {"TF32"},
    "MemoryPoolType": {"WORKSPACE"},
    "ITimingCache": {"serialize"},
    "IHostMemory": {"nbytes"},
    "Runtime": {"__init__", "deserialize_cuda_engine"},
    "ICudaEngine": {"create_execution_context", "num_io_tensors", "get_tensor_name", "get_tensor_shape",
                    "get_tensor_dtype", "get_tensor_mode", "device_memory_size", "device_memory_size_v2"},
    "TensorIOMode": {"INPUT"},
    "IExecutionContext": {"set_tensor_address", "execute_async_v3"},
}
"""TensorRT classes and members tensorrt_backend.py uses (TensorRT 10 name-based API)."""
TRT_MODULE_USED = {"__version__", "nptype"}

PYCUDA_DOCUMENTED: dict[str, set[str]] = {
    "": {"init", "Device", "Context", "Stream", "Error", "MemoryError", "LogicError", "LaunchError", "mem_alloc",
         "mem_get_info", "pagelocked_empty", "memcpy_htod_async", "memcpy_dtoh_async", "device_attribute",
         "host_alloc_flags", "DeviceAllocation", "HostPointer"},
    "Device": {"count", "name", "compute_capability", "retain_primary_context", "total_memory", "get_attribute"},
    "Context": {"push", "pop", "detach"},
    "Stream": {"synchronize", "handle"},
    "DeviceAllocation": {"free"},
    "HostPointer": {"get_device_pointer"},
    "device_attribute": {"MULTIPROCESSOR_COUNT", "INTEGRATED"},
    "host_alloc_flags": {"DEVICEMAP"},
}
"""pycuda.driver names used, as documented in pycuda's doc/driver.rst (inducer/pycuda 2026.1):
Device(number), Device.count(), name(), compute_capability() -> (major, minor),
total_memory() (bytes), get_attribute(device_attribute.MULTIPROCESSOR_COUNT / INTEGRATED),
retain_primary_context() (2020.1+, not made current), Context.push()/pop()/detach(), Stream(),
Stream.synchronize(), Stream.handle, mem_alloc(bytes) -> DeviceAllocation (int() = device
pointer, free()), mem_get_info() -> (free, total), pagelocked_empty(shape, dtype, order="C",
mem_flags=0) whose array's `base` is a HostPointer with get_device_pointer() (the mapping of a
host_alloc_flags.DEVICEMAP allocation), memcpy_htod_async(dest, src, stream),
memcpy_dtoh_async(dest, src, stream), exception Error (base of MemoryError, LogicError,
LaunchError, RuntimeError)."""

CUDA_DRIVER_DOCUMENTED = {
    "cuStreamBeginCapture_v2", "cuStreamEndCapture", "cuGraphInstantiateWithFlags", "cuGraphLaunch",
    "cuGraphExecDestroy", "cuGraphDestroy", "cuGetErrorString",
}
"""CUDA driver API entry points (libcuda) for graph capture, which pycuda does not wrap."""

PYTHON_NAMES = {
    # numpy, pathlib, ctypes, logging, threading, time, dict/str methods used by the backend
    "dtype", "shape", "nbytes", "copy", "copyto", "ones", "zeros", "float32", "is_file", "read_bytes",
    "write_bytes", "with_name", "name", "parent", "mkdir", "CDLL", "c_void_p", "c_ulonglong", "c_char_p",
    "byref", "value", "decode", "getLogger", "error", "warning", "info", "debug", "Lock", "monotonic",
    "append", "get", "pop", "values", "clear", "join", "replace", "update", "close", "n", "errors",
    "ndarray", "__init__", "PathLike", "Logger", "split", "isdigit", "__name__", "base",
}


def _parse_stub(text: str) -> ast.Module:
    """Parse a .pyi that has a few invalid lines (generated signatures with a required argument
    after a defaulted one): such a `def` line keeps its name with a catch-all signature."""
    lines = text.splitlines()
    for _ in range(100):
        try:
            return ast.parse("\n".join(lines))
        except SyntaxError as exc:
            bad = lines[exc.lineno - 1]
            match = re.match(r"^(\s*)def (\w+)\(", bad)
            if match is None:
                raise
            body = " ..." if bad.rstrip().endswith("...") else ""
            lines[exc.lineno - 1] = f"{match[1]}def {match[2]}(self, *args, **kwargs):{body}"
    raise AssertionError("too many invalid lines in the TensorRT stubs")


def _stub_index() -> tuple[set[str], dict[str, set[str]], dict[str, ast.FunctionDef]]:
    """(module-level names, class -> member names, 'Class.method' -> def) of the TensorRT stubs."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorrt-stubs not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    module_names: set[str] = set()
    for node in ast.parse((root.parent / "tensorrt" / "__init__.pyi").read_text()).body:
        if isinstance(node, ast.ImportFrom):
            module_names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            module_names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            module_names.add(node.name)
    members: dict[str, set[str]] = {}
    defs: dict[str, ast.FunctionDef] = {}

    def visit(cls: ast.ClassDef, prefix: str) -> None:
        name = prefix + cls.name
        found = members.setdefault(name, set())
        for item in cls.body:
            if isinstance(item, ast.FunctionDef):
                found.add(item.name)
                defs.setdefault(f"{name}.{item.name}", item)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                found.add(item.target.id)
            elif isinstance(item, ast.ClassDef):
                found.add(item.name)
                visit(item, name + ".")

    for node in _parse_stub((root / "tensorrt.pyi").read_text()).body:
        if isinstance(node, ast.ClassDef):
            visit(node, "")
    return module_names, members, defs


def _attribute_chains(source: str, root: str) -> set[str]:
    """Every dotted `root.a.b` chain in `source`, without the root."""
    chains = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            parts, current = [], node
            while isinstance(current, ast.Attribute):
                parts.append(current.attr)
                current = current.value
            if isinstance(current, ast.Name) and current.id == root:
                chains.add(".".join(reversed(parts)))
    return chains


def test_every_tensorrt_member_used_exists_in_tensorrt_10_api():
    module_names, members, _ = _stub_index()
    missing = [f"{cls}.{m}" for cls, used in TRT_USED.items() for m in used if m not in members.get(cls, set())]
    missing += sorted(TRT_MODULE_USED - module_names)
    assert not missing, f"not in the TensorRT 10.13 API: {missing}"
    for chain in _attribute_chains(BACKEND_SOURCE, "trt"):
        head, *rest = chain.split(".")
        assert head in module_names, f"trt.{head} is not in the TensorRT API"
        owner = head
        for part in rest:
            assert part in members.get(owner, set()), f"trt.{chain}: {part} is not a member of {owner}"
            owner = f"{owner}.{part}"


def test_backend_uses_no_unchecked_attribute():
    """Every attribute the backend touches is a checked TensorRT/pycuda/driver name, one of its
    own, or a known Python/numpy one: a new TensorRT call cannot slip in unchecked."""
    tree = ast.parse(BACKEND_SOURCE)
    own = set()
    for module in (tree, ast.parse(Path(engine_cache.__file__).read_text())):  # our own names
        own |= {n.name for n in ast.walk(module) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        own |= {n.attr for n in ast.walk(module) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
        own |= {n.target.id for n in ast.walk(module) if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
        own |= {t.id for n in ast.walk(module) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    checked = set().union(*TRT_USED.values(), *PYCUDA_DOCUMENTED.values(), CUDA_DRIVER_DOCUMENTED, TRT_USED,
                          TRT_MODULE_USED)
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    unchecked = sorted(used - checked - own - PYTHON_NAMES)
    assert not unchecked, f"attributes used by tensorrt_backend.py but not checked against an API: {unchecked}"


def test_overridden_tensorrt_callbacks_match_the_api_signatures():
    _, _, defs = _stub_index()
    tree = ast.parse(BACKEND_SOURCE)
    overrides = {"RecordingLogger": "ILogger", "TqdmProgressMonitor": "IProgressMonitor"}
    seen = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name in overrides):
        for method in (m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name != "__init__"):
            api = defs[f"{overrides[cls.name]}.{method.name}"]
            assert [a.arg for a in method.args.args] == [a.arg for a in api.args.args], method.name
            seen.add(method.name)
    assert seen == {"log", "phase_start", "step_complete", "phase_finish"}


def test_tensorrt_method_calls_fit_the_api_signatures():
    """Positional argument counts and keyword names of calls to TensorRT-only methods."""
    _, _, defs = _stub_index()
    trt_only = set().union(*TRT_USED.values()) - set().union(*PYCUDA_DOCUMENTED.values()) - {"__init__", "log"}
    for call in (n for n in ast.walk(ast.parse(BACKEND_SOURCE)) if isinstance(n, ast.Call)):
        if not isinstance(call.func, ast.Attribute) or call.func.attr not in trt_only:
            continue
        candidates = [d for k, d in defs.items() if k.split(".")[0] in TRT_USED and k.endswith("." + call.func.attr)]
        assert candidates, call.func.attr
        fits = False
        for api in candidates:
            params = [a.arg for a in api.args.args][1:]
            required = len(params) - len(api.args.defaults)
            if required <= len(call.args) <= len(params) and {k.arg for k in call.keywords} <= set(params):
                fits = True
        assert fits, f"line {call.lineno}: {call.func.attr} called with {len(call.args)} args"


def test_pycuda_and_driver_calls_are_documented_names():
    for chain in _attribute_chains(BACKEND_SOURCE, "cuda"):
        head, *rest = chain.split(".")
        assert head in PYCUDA_DOCUMENTED[""], f"cuda.{head} is not documented pycuda.driver API"
        assert not rest or rest[0] in PYCUDA_DOCUMENTED[head], f"cuda.{chain} is not documented"
    driver_calls = {c.split(".")[-1] for c in _attribute_chains(BACKEND_SOURCE, "self") if c.startswith("_lib.")}
    assert driver_calls and driver_calls <= CUDA_DRIVER_DOCUMENTED


# --------------------------------------------------------------------------- a fake TensorRT


class FakeTensorRT:
    """Stands in for `tensorrt` and `pycuda.driver`; its members are checked against the stubs and
    pycuda's documentation (test_fake_matches_the_api), so what the flow tests exercise is the
    real APIs' shape. The fake engine runs: it writes contract outputs (labels 0, confidence 0.9,
    router weights = the mask normalized) at the addresses the backend gave it, through fake
    device memory or, on an integrated GPU, straight into the mapped host buffers.

    Failures to inject: `fail` maps a step ("init", "context", "mem_alloc", "pinned", "execute",
    "synchronize") to the pycuda error class it raises; `context_ok=False` makes
    create_execution_context() return None, `deserialize_ok=False` makes deserialization fail."""

    def __init__(self, gpu_name="NVIDIA Fake GPU", capability=(8, 6), parse_ok=True, build_ok=True,
                 version="10.13.0.35", sm_count=84, total_memory=24 << 30, integrated=False):
        self.gpu_name, self.capability, self.parse_ok, self.build_ok = gpu_name, capability, parse_ok, build_ok
        self.version, self.sm_count, self.total_memory, self.integrated = version, sm_count, total_memory, integrated
        self.deserialize_ok = self.context_ok = True
        self.fail: dict[str, str] = {}
        self.input_shape = (1, 4, 3, 16, 16)
        self.builds: list[dict] = []
        self.memory: dict[int, np.ndarray] = {}  # fake device address -> its bytes
        self.copies = 0  # host <-> device transfers
        self.trt = self._make_trt()
        self.cuda = self._make_cuda()

    def install(self, monkeypatch) -> None:
        monkeypatch.setitem(sys.modules, "tensorrt", self.trt)
        pycuda = types.ModuleType("pycuda")
        pycuda.driver = self.cuda
        for module in (self.trt, pycuda, self.cuda):  # importlib.util.find_spec (torch.export asks) needs one
            module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
        monkeypatch.setitem(sys.modules, "pycuda", pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", self.cuda)

    def _raise_if_failing(self, step: str) -> None:
        if step in self.fail:
            raise getattr(self.cuda, self.fail[step])(f"fake {step} failure")

    def _address(self, data: np.ndarray) -> int:
        address = 0x7F0000000000 + 0x100000 * len(self.memory)
        self.memory[address] = data
        return address

    def _make_trt(self) -> types.ModuleType:
        fake = self
        trt = types.ModuleType("tensorrt")
        trt.__version__ = self.version

        class ILogger:
            class Severity:
                INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

            def __init__(self):
                pass

        class IProgressMonitor:
            def __init__(self):
                pass

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 1

        class MemoryPoolType:
            WORKSPACE = 0

        class BuilderFlag:
            TF32 = 6

        class TensorIOMode:
            INPUT, OUTPUT = 1, 2

        class DataType:
            FLOAT, INT32 = 0, 3

        class ParserError:
            def node(self):
                return 7

            def node_operator(self):
                return "Einsum"

            def node_name(self):
                return "node_Einsum_7"

            def desc(self):
                return "unsupported equation"

            def code(self):
                return "UNSUPPORTED_NODE"

        class OnnxParser:
            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, model):
                self.network["onnx"] = model
                return fake.parse_ok

            @property
            def num_errors(self):
                return 0 if fake.parse_ok else 1

            def get_error(self, index):
                return ParserError()

        class ITimingCache:
            def __init__(self, data):
                self.data = bytes(data)

            def serialize(self):
                return self.data + b"+timing"

        class IHostMemory(bytes):
            @property
            def nbytes(self):
                return len(self)

        class IBuilderConfig:
            def __init__(self):
                self.progress_monitor = None
                self.builder_optimization_level = 3
                self.cleared: set[int] = set()

            def set_memory_pool_limit(self, pool, pool_size):
                self.workspace = (pool, pool_size)

            def clear_flag(self, flag):
                self.cleared.add(flag)

            def create_timing_cache(self, serialized_timing_cache):
                return ITimingCache(serialized_timing_cache)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.timing = cache
                return True

            def get_timing_cache(self):
                return self.timing

        class Builder:
            def __init__(self, logger):
                self.logger = logger

            def create_network(self, flags=0):
                return {"flags": flags}

            def create_builder_config(self):
                return IBuilderConfig()

            def build_serialized_network(self, network, config):
                monitor = config.progress_monitor
                if monitor is not None:
                    monitor.phase_start("Building engine", None, 3)
                    for step in range(3):
                        assert monitor.step_complete("Building engine", step)
                    monitor.phase_finish("Building engine")
                fake.builds.append({"network": network, "workspace": config.workspace, "tf32_cleared":
                                    BuilderFlag.TF32 in config.cleared, "opt_level": config.builder_optimization_level,
                                    "timing_in": config.timing.data})
                if not fake.build_ok:
                    self.logger.log(ILogger.Severity.ERROR, "out of workspace for tactic")
                    return None
                return IHostMemory(b"ENGINE:" + Path(network["onnx"]).read_bytes()[:32])

        tensors = {"images": (TensorIOMode.INPUT, DataType.FLOAT),
                   "modality_mask": (TensorIOMode.INPUT, DataType.FLOAT),
                   "labels": (TensorIOMode.OUTPUT, DataType.INT32),
                   "confidence": (TensorIOMode.OUTPUT, DataType.FLOAT),
                   "router_weights": (TensorIOMode.OUTPUT, DataType.FLOAT)}

        class IExecutionContext:
            def __init__(self):
                self.addresses: dict[str, int] = {}

            def set_tensor_address(self, name, memory):
                self.addresses[name] = memory
                return True

            def execute_async_v3(self, stream_handle):
                fake._raise_if_failing("execute")

                def tensor(name, dtype, shape):
                    return fake.memory[self.addresses[name]][: int(np.prod(shape)) * 4].view(dtype).reshape(shape)

                batch, modalities, _, height, width = fake.input_shape
                mask = tensor("modality_mask", np.float32, (batch, modalities))
                tensor("labels", np.int32, (batch, height, width))[:] = 0
                tensor("confidence", np.float32, (batch, height, width))[:] = 0.9
                tensor("router_weights", np.float32, (batch, modalities))[:] = mask / max(mask.sum(), 1.0)
                return True

        class ICudaEngine:
            @property
            def num_io_tensors(self):
                return len(tensors)

            @property
            def device_memory_size_v2(self):
                return 64 << 20

            def get_tensor_name(self, index):
                return list(tensors)[index]

            def get_tensor_shape(self, name):
                batch, modalities, _, height, width = fake.input_shape
                return {"images": fake.input_shape, "modality_mask": (batch, modalities),
                        "router_weights": (batch, modalities)}.get(name, (batch, height, width))

            def get_tensor_dtype(self, name):
                return tensors[name][1]

            def get_tensor_mode(self, name):
                return tensors[name][0]

            def create_execution_context(self):
                return IExecutionContext() if fake.context_ok else None

        class Runtime:
            def __init__(self, logger):
                self.logger = logger

            def deserialize_cuda_engine(self, serialized_engine):
                if fake.deserialize_ok and bytes(serialized_engine).startswith(b"ENGINE:"):
                    return ICudaEngine()
                self.logger.log(ILogger.Severity.ERROR, "engine plan is corrupted or incompatible")
                return None

        for cls in (ILogger, IProgressMonitor, NetworkDefinitionCreationFlag, MemoryPoolType, BuilderFlag, TensorIOMode,
                    DataType, ParserError, OnnxParser, ITimingCache, IHostMemory, IBuilderConfig, Builder,
                    IExecutionContext, ICudaEngine, Runtime):
            setattr(trt, cls.__name__, cls)
        trt.nptype = lambda trt_type: np.int32 if trt_type == DataType.INT32 else np.float32
        return trt

    def _make_cuda(self) -> types.ModuleType:
        fake = self
        cuda = types.ModuleType("pycuda.driver")

        class Error(Exception):
            pass

        class MemoryError(Error):  # noqa: A001 - pycuda's own name
            pass

        class LogicError(Error):
            pass

        class LaunchError(Error):
            pass

        class device_attribute:  # noqa: N801 - pycuda's spelling
            MULTIPROCESSOR_COUNT, INTEGRATED = 16, 18

        class host_alloc_flags:  # noqa: N801
            DEVICEMAP = 2

        class Context:
            def push(self):
                fake._raise_if_failing("context")

            @staticmethod
            def pop():
                pass

            def detach(self):
                pass

        class Device:
            def __init__(self, number):
                self.number = number

            @staticmethod
            def count():
                return 1

            def name(self):
                return fake.gpu_name

            def compute_capability(self):
                return fake.capability

            def total_memory(self):
                return fake.total_memory

            def get_attribute(self, attr):
                return {device_attribute.MULTIPROCESSOR_COUNT: fake.sm_count,
                        device_attribute.INTEGRATED: int(fake.integrated)}[attr]

            def retain_primary_context(self):
                return Context()

        class DeviceAllocation:
            def __init__(self, size):
                self._address = fake._address(np.zeros(size, np.uint8))

            def __int__(self):
                return self._address

            def free(self):
                fake.memory.pop(self._address, None)

        class HostPointer(bytearray):
            def get_device_pointer(self):
                return fake._address(np.frombuffer(self, np.uint8))

        class Stream:
            handle = 0x5EED

            def synchronize(self):
                fake._raise_if_failing("synchronize")

        def init(flags=0):
            fake._raise_if_failing("init")

        def mem_alloc(size):
            fake._raise_if_failing("mem_alloc")
            return DeviceAllocation(size)

        def pagelocked_empty(shape, dtype, order="C", mem_flags=0):
            fake._raise_if_failing("pinned")
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if mem_flags == host_alloc_flags.DEVICEMAP:
                return np.ndarray(shape, dtype, buffer=HostPointer(size))
            return np.empty(shape, dtype)

        def memcpy_htod_async(dest, src, stream=None):
            fake.copies += 1
            fake.memory[int(dest)][: src.nbytes] = src.reshape(-1).view(np.uint8)

        def memcpy_dtoh_async(dest, src, stream=None):
            fake.copies += 1
            dest.reshape(-1).view(np.uint8)[:] = fake.memory[int(src)][: dest.nbytes]

        for item in (Error, MemoryError, LogicError, LaunchError, device_attribute, host_alloc_flags, Context, Device,
                     DeviceAllocation, HostPointer, Stream, init, mem_alloc, pagelocked_empty, memcpy_htod_async,
                     memcpy_dtoh_async):
            setattr(cuda, item.__name__, item)
        cuda.mem_get_info = lambda: (fake.total_memory // 2, fake.total_memory)
        return cuda


def test_fake_matches_the_api():
    _, members, _ = _stub_index()
    fake = FakeTensorRT()
    instance_attrs = {"IBuilderConfig": {"progress_monitor", "builder_optimization_level"}}
    for name in dir(fake.trt):
        cls = getattr(fake.trt, name)
        if isinstance(cls, type):
            own = {m for m in vars(cls) if not m.startswith("__") or m == "__init__"}
            assert own - {"Severity"} | instance_attrs.get(name, set()) <= members[name] | {"__init__"}, name
    for name in (n for n in dir(fake.cuda) if not n.startswith("__")):
        assert name in PYCUDA_DOCUMENTED[""], name
        item = getattr(fake.cuda, name)
        if isinstance(item, type) and not issubclass(item, Exception):
            assert {m for m in vars(item) if not m.startswith("_")} <= PYCUDA_DOCUMENTED[name], name


@pytest.fixture
def onnx_file(tmp_path):
    """A valid contract ONNX file with our metadata; the fake parser only needs its bytes."""
    model = contract_model()
    write_metadata(model, {"precision": "fp16", "classes": ["road"], "model_hash": "f" * 64})
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def _build(onnx_file, cache_dir, *extra):
    return cli.main(["build-engine", "--onnx", str(onnx_file), "--cache-dir", str(cache_dir), *extra])


def test_build_engine_builds_strongly_typed_once_then_reuses(monkeypatch, onnx_file, tmp_path, capsys):
    fake = FakeTensorRT()
    fake.install(monkeypatch)
    cache = tmp_path / "cache"
    assert _build(onnx_file, cache, "--workspace-mib", "512", "--opt-level", "5") == 0
    assert len(fake.builds) == 1
    build = fake.builds[0]
    assert build["network"]["flags"] == 1 << fake.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert build["workspace"] == (fake.trt.MemoryPoolType.WORKSPACE, 512 << 20) and build["opt_level"] == 5
    assert "Building engine" in capsys.readouterr().err  # tqdm progress from the IProgressMonitor
    engines = list((cache / "engines").glob("*.engine"))
    assert len(engines) == 1 and "fake-gpu-sm86" in engines[0].name
    record = read_record(engines[0])
    assert record["key"]["precision"] == "fp16" and record["metadata"]["classes"] == ["road"]
    timing = list((cache / "timing").glob("*.cache"))
    assert len(timing) == 1 and timing[0].read_bytes() == b"+timing"

    assert _build(onnx_file, cache) == 0  # restart: valid engine, no rebuild
    assert len(fake.builds) == 1
    assert _build(onnx_file, cache, "--force") == 0
    assert len(fake.builds) == 2 and fake.builds[1]["timing_in"] == b"+timing"  # timing cache reused


def test_other_gpu_or_changed_onnx_rebuilds_and_no_build_fails_clearly(monkeypatch, onnx_file, tmp_path):
    fake = FakeTensorRT()
    fake.install(monkeypatch)
    engine = tmp_path / "fixed.engine"
    assert _build(onnx_file, tmp_path, "--engine", str(engine)) == 0
    fake.gpu_name, fake.capability = "NVIDIA Jetson AGX Orin", (8, 7)
    with pytest.raises(EngineCacheError, match="gpu_name.*building is disabled"):
        trt_backend.ensure_engine(onnx_file, engine_path=engine, cache_dir=tmp_path, allow_build=False)
    assert _build(onnx_file, tmp_path, "--engine", str(engine)) == 0
    assert len(fake.builds) == 2 and read_record(engine)["key"]["gpu_name"] == "NVIDIA Jetson AGX Orin"
    assert _build(onnx_file, tmp_path, "--engine", str(engine)) == 0 and len(fake.builds) == 2  # still valid
    model = onnx.load(str(onnx_file))
    write_metadata(model, {"precision": "fp16", "classes": ["road", "car"], "model_hash": "e" * 64})
    onnx.save(model, str(onnx_file))
    assert _build(onnx_file, tmp_path, "--engine", str(engine)) == 0 and len(fake.builds) == 3


def test_corrupted_engine_is_rebuilt(monkeypatch, onnx_file, tmp_path):
    fake = FakeTensorRT()
    fake.install(monkeypatch)
    engine = tmp_path / "e.engine"
    assert _build(onnx_file, tmp_path, "--engine", str(engine)) == 0
    engine.write_bytes(b"garbage")
    assert _build(onnx_file, tmp_path, "--engine", str(engine)) == 0
    assert len(fake.builds) == 2 and engine.read_bytes().startswith(b"ENGINE:")


def test_parser_errors_exit_non_zero_with_the_errors(monkeypatch, onnx_file, tmp_path, caplog):
    FakeTensorRT(parse_ok=False).install(monkeypatch)
    with caplog.at_level(logging.ERROR):
        assert _build(onnx_file, tmp_path) == 1
    assert "node 7 (Einsum 'node_Einsum_7'): unsupported equation" in caplog.text
    assert not list(tmp_path.rglob("*.engine")) and not list(tmp_path.rglob("*.json"))


def test_failed_build_exits_non_zero_with_tensorrt_errors(monkeypatch, onnx_file, tmp_path, caplog):
    FakeTensorRT(build_ok=False).install(monkeypatch)
    with caplog.at_level(logging.ERROR):
        assert _build(onnx_file, tmp_path, "--no-progress") == 1
    assert "out of workspace for tactic" in caplog.text
    assert not list(tmp_path.rglob("*.engine"))


def test_without_tensorrt_build_engine_says_so(onnx_file, tmp_path, caplog):
    try:
        trt_backend.probe()
    except trt_backend.TensorRTUnavailable:
        pass
    else:
        pytest.skip("TensorRT and a GPU are present")
    with caplog.at_level(logging.ERROR):
        assert _build(onnx_file, tmp_path) == EXIT_NO_TENSORRT
    assert "cannot build a TensorRT engine here" in caplog.text


def test_backend_from_engine_without_record_fails_clearly(monkeypatch, tmp_path):
    FakeTensorRT().install(monkeypatch)
    engine = tmp_path / "copied.engine"
    engine.write_bytes(b"engine from somewhere")
    with pytest.raises(EngineCacheError, match="no usable cache record"):
        trt_backend.TensorRTBackend.from_engine(engine)
    assert not sidecar_path(engine).exists()


def test_tensorrt_8_is_refused_naming_the_minimum_version(monkeypatch, onnx_file, tmp_path, caplog):
    """JetPack 6.0 ships TensorRT 8.6: a clear error, not an AttributeError from the API differences."""
    FakeTensorRT(version="8.6.2.3").install(monkeypatch)
    with caplog.at_level(logging.ERROR):
        assert _build(onnx_file, tmp_path) == EXIT_NO_TENSORRT
    assert "TensorRT 8.6.2.3 is installed" in caplog.text and "TensorRT 10 or newer" in caplog.text
    with pytest.raises(trt_backend.TensorRTUnavailable, match="TensorRT 10 or newer"):
        create_backend("tensorrt", onnx_path=onnx_file, cache_dir=tmp_path)


def test_parser_errors_of_tensorrt_8_format_without_raising():
    class ParserError86:  # TensorRT 8.6's ParserError: no node_name(), no node_operator()
        def node(self):
            return 3

        def desc(self):
            return "Assertion failed: axis is out of bounds"

        def code(self):
            return "INVALID_NODE"

    text = trt_backend._parser_error_text(ParserError86())
    assert "node 3 (? '?'): Assertion failed: axis is out of bounds [INVALID_NODE]" in text


def test_jetson_orin_modules_do_not_share_engines(monkeypatch, onnx_file, tmp_path):
    """Every Orin module reports "Orin", sm 8.7: SM count and memory tell an AGX from a Nano."""
    agx = FakeTensorRT(gpu_name="Orin", capability=(8, 7), sm_count=16, total_memory=61 << 30, integrated=True)
    agx.install(monkeypatch)
    engine = tmp_path / "orin.engine"
    assert _build(onnx_file, tmp_path, "--engine", str(engine)) == 0
    assert read_record(engine)["key"]["sm_count"] == 16 and read_record(engine)["key"]["total_memory_gib"] == 61
    nano = FakeTensorRT(gpu_name="Orin", capability=(8, 7), sm_count=8, total_memory=7 << 30, integrated=True)
    nano.install(monkeypatch)
    with pytest.raises(EngineCacheError, match="sm_count: 16 -> 8; total_memory_gib: 61 -> 7"):
        trt_backend.ensure_engine(onnx_file, engine_path=engine, cache_dir=tmp_path, allow_build=False)
    assert _build(onnx_file, tmp_path, "--engine", str(engine)) == 0 and len(nano.builds) == 1
    assert nano.builds[0]["timing_in"] == b""  # the AGX's tactic timings are not reused on the Nano
    assert sorted(p.name for p in (tmp_path / "timing").iterdir()) == ["orin-sm87-16sms-trt10-13-0-35.cache",
                                                                       "orin-sm87-8sms-trt10-13-0-35.cache"]


@pytest.mark.parametrize(("total_memory", "workspace_mib"), [(7 << 30, 896), (8 << 30, 1024), (80 << 30, 2048)])
def test_default_workspace_fits_the_device(monkeypatch, onnx_file, tmp_path, total_memory, workspace_mib):
    fake = FakeTensorRT(total_memory=total_memory)
    fake.install(monkeypatch)
    assert _build(onnx_file, tmp_path) == 0
    assert fake.builds[0]["workspace"][1] == workspace_mib << 20


def test_fp32_engines_are_built_without_tf32(monkeypatch, onnx_file, tmp_path):
    """TensorRT enables TF32 by default, which would make an "fp32" engine compute with 10-bit
    mantissas; fp16 engines are strongly typed, the flag does not matter to them."""
    fake = FakeTensorRT()
    fake.install(monkeypatch)
    model = onnx.load(str(onnx_file))
    write_metadata(model, {"precision": "fp32", "classes": ["road"], "model_hash": "f" * 64})
    fp32_file = tmp_path / "fp32.onnx"
    onnx.save(model, str(fp32_file))
    assert cli.main(["build-engine", "--onnx", str(fp32_file), "--precision", "fp32", "--cache-dir", str(tmp_path)]) == 0
    assert _build(onnx_file, tmp_path) == 0
    # The node's parameters decide what is built when the command line does not.
    params = tmp_path / "vehicle.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    precision: fp32\n    onnx_path: {fp32_file}\n"
                      f"    engine_cache_dir: {tmp_path / 'node_cache'}\n    engine_workspace_mib: 640\n")
    assert cli.main(["build-engine", "--params-file", str(params)]) == 0
    assert fake.builds[-1]["workspace"][1] == 640 << 20 and list((tmp_path / "node_cache" / "engines").glob("*"))
    assert [b["tf32_cleared"] for b in fake.builds] == [True, False, True]
    # An fp16 file cannot make an fp32 engine: said, not ignored.
    assert cli.main(["build-engine", "--onnx", str(onnx_file), "--precision", "fp32", "--cache-dir",
                     str(tmp_path)]) == EXIT_BUILD_FAILED


@pytest.mark.parametrize("integrated", [False, True], ids=["discrete", "jetson"])
def test_backend_runs_frames_written_into_its_own_buffer(monkeypatch, onnx_file, tmp_path, integrated):
    """Preprocessing writes into `input_buffer()`; on a discrete GPU one copy each way per frame,
    on an integrated one (Jetson) the GPU reads and writes the mapped host buffers: no copy."""
    fake = FakeTensorRT(integrated=integrated)
    fake.install(monkeypatch)
    backend = trt_backend.TensorRTBackend.from_onnx(onnx_file, cache_dir=tmp_path, show_progress=False)
    assert backend.mapped is integrated and backend.input_shape == fake.input_shape
    buffer = backend.input_buffer()
    buffer[:] = 0.5
    mask = np.array([[1, 0, 1, 1]], np.float32)
    out = backend.infer(buffer, mask)
    assert np.allclose(out["router_weights"], mask / 3) and (out["confidence"] == np.float32(0.9)).all()
    assert fake.copies == (0 if integrated else len(ENGINE_INPUTS) + len(ENGINE_OUTPUTS))
    assert backend.memory_report()["engine_activation_memory"] == 64
    backend.close()
    assert integrated or not fake.memory  # device buffers freed


FAILURES = {
    "no CUDA driver": ({"fail": {"init": "LogicError"}}, "TensorRTUnavailable: CUDA driver not usable"),
    "TensorRT 8.6": ({"version": "8.6.2.3"}, "TensorRTUnavailable: TensorRT 8.6.2.3 is installed"),
    "build fails": ({"build_ok": False}, "EngineBuildError: TensorRT failed to build"),
    "engine not loadable": ({"deserialize_ok": False}, "EngineLoadError: TensorRT 10.13.0.35 could not load"),
    "context push fails": ({"fail": {"context": "LogicError"}}, "GpuResourceError: CUDA failed while setting up"),
    "no execution context": ({"context_ok": False}, "GpuResourceError: TensorRT could not create an execution context"),
    "cuMemAlloc fails": ({"fail": {"mem_alloc": "MemoryError"}}, "MemoryError: fake mem_alloc failure"),
    "pinned memory fails": ({"fail": {"pinned": "MemoryError"}}, "MemoryError: fake pinned failure"),
    "first frame fails": ({"fail": {"execute": "LaunchError"}}, "GpuResourceError: TensorRT inference failed"),
    "first frame faults": ({"fail": {"synchronize": "LaunchError"}}, "LaunchError: fake synchronize failure"),
}


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A real (micro) model as a checkpoint and exported fp32, so ONNX Runtime on CPU and torch
    can take over."""
    import torch

    from sam_mmseg_ros.engine.export import export_checkpoint
    from sam_mmseg_ros.model import build_model
    from sam_mmseg_ros.model.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("micro")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("tiny", img_size=32, depth=1, global_attn_indexes=(0,), aux_block_indexes=(0,),
                            decoder_depth=1)
    save_checkpoint(folder / "micro.pt", model, trained=False)
    return SimpleNamespace(checkpoint=folder / "micro.pt",
                           onnx=export_checkpoint(folder / "micro.pt", folder / "micro.onnx"))


@pytest.mark.parametrize("failure", list(FAILURES))
def test_auto_falls_back_on_every_tensorrt_failure_with_the_reason(monkeypatch, micro, tmp_path, caplog, failure):
    settings, reason = FAILURES[failure]
    fake = FakeTensorRT(**{k: v for k, v in settings.items() if k in ("version", "build_ok")})
    fake.fail = settings.get("fail", {})
    fake.deserialize_ok = settings.get("deserialize_ok", True)
    fake.context_ok = settings.get("context_ok", True)
    fake.input_shape = (1, 4, 3, 32, 32)
    fake.install(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="sam_mmseg_ros.engine"):
        backend = create_backend("auto", onnx_path=micro.onnx, cache_dir=tmp_path)
    assert backend.name == "onnxruntime-cpu"
    assert backend.fallback_reasons[0].startswith("tensorrt: ") and reason in backend.fallback_reasons[0]
    assert "backend tensorrt unavailable" in caplog.text and reason in caplog.text
    assert not fake.memory  # whatever the TensorRT attempt allocated on the GPU was freed


def test_create_backend_reaches_precision_workspace_and_cuda_graph(monkeypatch, micro, tmp_path, caplog):
    """An fp32 ONNX file is converted once for an fp16 engine; an fp16 file asked for fp32 runs
    as it is, said in a warning; workspace and CUDA-graph settings reach TensorRT."""
    from sam_mmseg_ros.engine.export import read_metadata

    fake = FakeTensorRT()
    fake.input_shape = (1, 4, 3, 32, 32)
    fake.install(monkeypatch)
    with caplog.at_level(logging.INFO, logger="sam_mmseg_ros.engine"):
        backend = create_backend("tensorrt", onnx_path=micro.onnx, precision="fp16", cache_dir=tmp_path,
                                 workspace_mib=300, use_cuda_graph=True)
    assert backend.precision == "fp16" and fake.builds[0]["workspace"][1] == 300 << 20
    built_from = Path(fake.builds[0]["network"]["onnx"])
    assert built_from.parent == tmp_path / "onnx" and read_metadata(built_from)["precision"] == "fp16"
    assert "CUDA graph capture not available" in caplog.text or "CUDA graph captured" in caplog.text
    backend.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sam_mmseg_ros.engine"):
        again = create_backend("tensorrt", onnx_path=built_from, precision="fp32", cache_dir=tmp_path)
    assert again.precision == "fp16" and "cannot be run at fp32: running it as it is" in caplog.text
    assert len(fake.builds) == 1  # the same fp16 file: its engine is reused
    again.close()


def test_a_backend_that_cannot_run_its_first_frame_falls_back(monkeypatch, micro, tmp_path):
    """ONNX Runtime's own errors (out of GPU memory on a provider...) derive from Exception only:
    they are raised as SessionError, and a candidate is only chosen once it ran a frame."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    def failing_run(self, *args, **kwargs):
        raise Fail("CUDA failure 2: out of memory")

    monkeypatch.setattr("onnxruntime.InferenceSession.run", failing_run)
    backend = create_backend("auto", checkpoint=micro.checkpoint, onnx_path=micro.onnx, device="cpu",
                             cache_dir=tmp_path)
    assert backend.name == "torch"
    assert backend.fallback_reasons[-1].startswith("onnxruntime-cpu: SessionError: ONNX Runtime failed running")
    assert "out of memory" in backend.fallback_reasons[-1]
    with pytest.raises(BackendUnavailable, match="onnxruntime-cpu: SessionError"):
        create_backend("auto", onnx_path=micro.onnx, device="cpu", cache_dir=tmp_path)


@pytest.mark.slow
def test_build_engine_verify_exports_builds_and_reports(monkeypatch, tmp_path, capsys):
    """The one command for a GPU machine, end to end on CPU: the shipped model is exported at its
    size in fp16, "built" by the fake TensorRT, and verified; ONNX Runtime on CPU stands in for
    the engine at run time (it runs the same fp16 graph). The trained model's outputs are
    decisive, so fp16 must agree with fp32 torch on >= 99 % of the pixels."""
    from sam_mmseg_ros.engine.onnxruntime_backend import OnnxRuntimeBackend

    fake = FakeTensorRT()
    fake.install(monkeypatch)
    loaded = []

    def engine_stand_in(engine_path, **kwargs):
        loaded.append(kwargs)
        return OnnxRuntimeBackend(read_record(engine_path)["onnx_path"], "cpu")

    monkeypatch.setattr(trt_backend, "TensorRTBackend", engine_stand_in)
    report = tmp_path / "report.md"
    assert cli.main(["build-engine", "--cache-dir", str(tmp_path), "--no-progress", "--verify", "--frames", "2",
                     "--camera-size", "96", "128", "--latency-runs", "3", "--report", str(report)]) == 0
    onnx_path = Path(fake.builds[0]["network"]["onnx"])
    shipped_size = [load_checkpoint(DEFAULT_CHECKPOINT)[0].config.img_size] * 2
    assert read_metadata(onnx_path)["precision"] == "fp16" and read_metadata(onnx_path)["input_size"] == shipped_size
    assert loaded == [{"use_cuda_graph": False, "device_index": 0}]
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["passed"] and data["label_agreement"] >= 0.99 and data["precision"] == "fp16"
    assert data["frames"] == 2 and data["camera_size"] == [96, 128] and data["trained"]
    assert set(data["latency_ms"]) == {"inference", "pipeline"} and data["latency_ms"]["pipeline"]["samples"] == 3
    text = report.read_text()
    assert text.startswith("# Engine verification: PASSED") and "labels equal to fp32 torch" in text
    assert "Engine verification: PASSED" in capsys.readouterr().out


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
def test_tensorrt_engine_matches_torch(tmp_path):
    """On a GPU with TensorRT and pycuda (torch may be the CPU build): the shipped, trained model
    (decisive outputs, unlike a random one whose near-tied scores flip under any rounding)
    exported fp16, built, and run through the node's pipeline against fp32 torch."""
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda.driver")
    from sam_mmseg_ros.engine.export import cached_export
    from sam_mmseg_ros.engine.torch_backend import TorchBackend
    from sam_mmseg_ros.engine.verify import synthetic_frames, verify_backend

    reference = TorchBackend.from_checkpoint(None, "cpu")
    onnx_path = cached_export(None, tmp_path, precision="fp16")
    frames = synthetic_frames(3, (240, 320))
    backend = trt_backend.TensorRTBackend.from_onnx(onnx_path, cache_dir=tmp_path, show_progress=False)
    engine = backend.engine_path
    stamp = engine.stat().st_mtime_ns
    report = verify_backend(backend, reference, frames, latency_runs=5)
    assert report.passed and report.label_agreement >= 0.99, report.to_markdown()
    assert report.router_weight_abs_diff_max <= 2e-3 and report.gpu_memory["device_memory_in_use"] > 0
    backend.close()

    graph = trt_backend.TensorRTBackend.from_onnx(onnx_path, cache_dir=tmp_path, use_cuda_graph=True)
    assert graph.engine_path == engine and engine.stat().st_mtime_ns == stamp  # restart: not rebuilt
    assert verify_backend(graph, reference, frames[:1], latency_runs=2).label_agreement >= 0.99
    graph.close()

    engine.write_bytes(engine.read_bytes()[:1000])  # corrupted: rebuilt, never a crash
    rebuilt = trt_backend.TensorRTBackend.from_onnx(onnx_path, cache_dir=tmp_path, show_progress=False)
    assert verify_backend(rebuilt, reference, frames[:1], latency_runs=2).label_agreement >= 0.99
    rebuilt.close()
