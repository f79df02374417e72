"""TensorRT backend without a GPU: every TensorRT name it uses is checked against the real
TensorRT 10.13 API (tensorrt-stubs), every pycuda / CUDA driver name against their documented
API; the build-and-cache flow and the `build-engine` command run against a fake `tensorrt`
whose members are themselves checked against the stubs. GPU tests (marked) run the real thing."""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import re
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_fixtures import contract_model

import sam_mmseg_ros.engine.tensorrt_backend as trt_backend
from sam_mmseg_ros import cli
from sam_mmseg_ros.engine import engine_cache
from sam_mmseg_ros.engine.build import EXIT_NO_TENSORRT
from sam_mmseg_ros.engine.engine_cache import EngineCacheError, read_record, sidecar_path
from sam_mmseg_ros.engine.export import write_metadata

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
                       "set_timing_cache", "get_timing_cache", "progress_monitor"},
    "MemoryPoolType": {"WORKSPACE"},
    "ITimingCache": {"serialize"},
    "IHostMemory": {"nbytes"},
    "Runtime": {"__init__", "deserialize_cuda_engine"},
    "ICudaEngine": {"create_execution_context", "num_io_tensors", "get_tensor_name", "get_tensor_shape",
                    "get_tensor_dtype", "get_tensor_mode"},
    "TensorIOMode": {"INPUT"},
    "IExecutionContext": {"set_tensor_address", "execute_async_v3"},
}
"""TensorRT classes and members tensorrt_backend.py uses (TensorRT 10 name-based API)."""
TRT_MODULE_USED = {"__version__", "nptype"}

PYCUDA_DOCUMENTED: dict[str, set[str]] = {
    "": {"init", "Device", "Context", "Stream", "Error", "mem_alloc", "pagelocked_empty",
         "memcpy_htod_async", "memcpy_dtoh_async"},
    "Device": {"count", "name", "compute_capability", "retain_primary_context"},
    "Context": {"push", "pop", "detach"},
    "Stream": {"synchronize", "handle"},
    "DeviceAllocation": {"free"},
}
"""pycuda.driver names used, as documented in pycuda's doc/driver.rst (inducer/pycuda 2026.1):
Device(number), Device.count(), name(), compute_capability() -> (major, minor),
retain_primary_context() (2020.1+, not made current), Context.push()/pop()/detach(), Stream(),
Stream.synchronize(), Stream.handle, mem_alloc(bytes) -> DeviceAllocation (int() = device
pointer, free()), pagelocked_empty(shape, dtype), memcpy_htod_async(dest, src, stream),
memcpy_dtoh_async(dest, src, stream), exception Error."""

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
    "ndarray", "__init__", "PathLike", "Logger",
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
    """Stands in for `tensorrt` and `pycuda.driver`; its members are checked against the stubs
    (test_fake_matches_the_api), so what the flow tests exercise is the real API's shape."""

    def __init__(self, gpu_name="NVIDIA Fake GPU", capability=(8, 6), parse_ok=True, build_ok=True,
                 engine_tensors=(), engine_outputs=None):
        self.gpu_name, self.capability, self.parse_ok, self.build_ok = gpu_name, capability, parse_ok, build_ok
        self.builds: list[dict] = []
        # A deserialized engine's I/O: (name, shape, numpy dtype, is_input) in the engine's order, and
        # the arrays its execution writes to the outputs.
        self.engine_tensors = list(engine_tensors)
        self.engine_outputs = engine_outputs or {}
        self.trt = self._make_trt()
        self.cuda = self._make_cuda()

    def install(self, monkeypatch) -> None:
        monkeypatch.setitem(sys.modules, "tensorrt", self.trt)
        pycuda = types.ModuleType("pycuda")
        pycuda.driver = self.cuda
        monkeypatch.setitem(sys.modules, "pycuda", pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", self.cuda)

    def _make_trt(self) -> types.ModuleType:
        fake = self
        trt = types.ModuleType("tensorrt")
        trt.__version__ = "10.13.0.35"

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

            def set_memory_pool_limit(self, pool, pool_size):
                self.workspace = (pool, pool_size)

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
                fake.builds.append({"network": network, "workspace": config.workspace,
                                    "opt_level": config.builder_optimization_level, "timing_in": config.timing.data})
                if not fake.build_ok:
                    self.logger.log(ILogger.Severity.ERROR, "out of workspace for tactic")
                    return None
                return IHostMemory(b"ENGINE:" + Path(network["onnx"]).read_bytes()[:32])

        class TensorIOMode:
            INPUT, OUTPUT = "input", "output"

        class IExecutionContext:
            def __init__(self):
                self.addresses = {}

            def set_tensor_address(self, name, memory):
                self.addresses[name] = memory

            def execute_async_v3(self, stream_handle):
                for name, value in fake.engine_outputs.items():
                    fake.device_memory[self.addresses[name]][:] = np.ascontiguousarray(value).view(np.uint8).ravel()
                return True

        class ICudaEngine:
            @property
            def num_io_tensors(self):
                return len(fake.engine_tensors)

            def get_tensor_name(self, index):
                return fake.engine_tensors[index][0]

            def _tensor(self, name):
                return next(t for t in fake.engine_tensors if t[0] == name)

            def get_tensor_shape(self, name):
                return self._tensor(name)[1]

            def get_tensor_dtype(self, name):
                return self._tensor(name)[2]

            def get_tensor_mode(self, name):
                return TensorIOMode.INPUT if self._tensor(name)[3] else TensorIOMode.OUTPUT

            def create_execution_context(self):
                return IExecutionContext()

        class Runtime:
            def __init__(self, logger):
                self.logger = logger

            def deserialize_cuda_engine(self, serialized_engine):
                return ICudaEngine()

        for cls in (ILogger, IProgressMonitor, NetworkDefinitionCreationFlag, MemoryPoolType, ParserError, OnnxParser,
                    ITimingCache, IHostMemory, IBuilderConfig, Builder, TensorIOMode, IExecutionContext, ICudaEngine,
                    Runtime):
            setattr(trt, cls.__name__, cls)
        trt.nptype = lambda dtype: np.dtype(dtype)  # the fake's engine dtypes are numpy dtypes already
        return trt

    def _make_cuda(self) -> types.ModuleType:
        fake = self
        cuda = types.ModuleType("pycuda.driver")

        class Error(Exception):
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

            def retain_primary_context(self):
                return Context()

        class Context:
            def push(self):
                pass

            def detach(self):
                pass

            @staticmethod
            def pop():
                pass

        class Stream:
            handle = 0

            def synchronize(self):
                pass

        class DeviceAllocation(int):
            def free(self):
                fake.device_memory.pop(int(self), None)

        fake.device_memory = {}

        def mem_alloc(nbytes):
            address = DeviceAllocation(len(fake.device_memory) + 1)
            fake.device_memory[int(address)] = np.zeros(nbytes, np.uint8)
            return address

        def memcpy_htod_async(dest, src, stream=None):
            fake.device_memory[int(dest)][:] = np.ascontiguousarray(src).view(np.uint8).ravel()

        def memcpy_dtoh_async(dest, src, stream=None):
            dest.view(np.uint8).ravel()[:] = fake.device_memory[int(src)]

        cuda.Error, cuda.Device, cuda.Context, cuda.Stream, cuda.init = Error, Device, Context, Stream, lambda flags=0: None
        cuda.mem_alloc, cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = mem_alloc, memcpy_htod_async, memcpy_dtoh_async
        cuda.pagelocked_empty = np.empty
        return cuda


def test_fake_matches_the_api():
    _, members, _ = _stub_index()
    fake = FakeTensorRT()
    for name in dir(fake.trt):
        cls = getattr(fake.trt, name)
        if isinstance(cls, type):
            own = {m for m in vars(cls) if not m.startswith("__") or m == "__init__"}
            instance_attrs = {"progress_monitor", "builder_optimization_level"} if name == "IBuilderConfig" else set()
            helpers = {"_tensor"} if name == "ICudaEngine" else set()  # the fake's own lookup
            assert own - {"Severity"} - helpers | instance_attrs <= members[name] | {"__init__"}, name
    assert {"count", "name", "compute_capability"} <= PYCUDA_DOCUMENTED["Device"]


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


def _engine_with(tmp_path, outputs: dict[str, np.ndarray]) -> tuple[FakeTensorRT, Path]:
    """A fake TensorRT whose engine has the contract inputs and `outputs` (in that order), with
    the cache record a built engine gets."""
    tensors = [("images", (1, 4, 3, 8, 8), np.dtype(np.float32), True),
               ("modality_mask", (1, 4), np.dtype(np.float32), True)]
    tensors += [(name, value.shape, value.dtype, False) for name, value in outputs.items()]
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"ENGINE")
    sidecar_path(engine).write_text(json.dumps({"key": {"precision": "fp16"}, "metadata": {"domains": ["sun", "fog"]}}))
    return FakeTensorRT(engine_tensors=tensors, engine_outputs=outputs), engine


CONTRACT_OUTPUTS = {"labels": np.full((1, 8, 8), 3, np.int32), "confidence": np.full((1, 8, 8), 0.5, np.float32),
                    "router_weights": np.full((1, 4), 0.25, np.float32)}


def test_engine_with_domain_outputs_returns_them_in_contract_order(monkeypatch, tmp_path):
    """An engine may list its outputs in any order; the backend reads every output it has and
    returns the contract's names, the optional ones included."""
    domain = {"domain_confidence": np.array([0.75], np.float32), "domain": np.array([1], np.int32)}
    fake, engine = _engine_with(tmp_path, {**domain, **CONTRACT_OUTPUTS})
    fake.install(monkeypatch)
    backend = trt_backend.TensorRTBackend(engine)
    assert backend.output_names == ("labels", "confidence", "router_weights", "domain", "domain_confidence")
    images, mask = np.zeros((1, 4, 3, 8, 8), np.float32), np.ones((1, 4), np.float32)
    out = backend.infer(images, mask)
    assert out["domain"].tolist() == [1] and out["domain"].dtype == np.int32
    assert out["domain_confidence"].tolist() == [0.75] and (out["labels"] == 3).all()
    backend.close()


@pytest.mark.parametrize("outputs, message", [
    ({"labels": CONTRACT_OUTPUTS["labels"], "confidence": CONTRACT_OUTPUTS["confidence"]}, "outputs"),
    ({**CONTRACT_OUTPUTS, "logits": np.zeros((1, 2), np.float32)}, "logits"),
])
def test_engine_without_the_contract_outputs_is_refused(monkeypatch, tmp_path, outputs, message):
    fake, engine = _engine_with(tmp_path, outputs)
    fake.install(monkeypatch)
    with pytest.raises(trt_backend.EngineLoadError, match=message):
        trt_backend.TensorRTBackend(engine)


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
def test_tensorrt_engine_matches_torch(tmp_path):
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda.driver")
    import torch

    from sam_mmseg_ros.engine.export import export_model
    from sam_mmseg_ros.engine.torch_backend import TorchBackend
    from sam_mmseg_ros.model import build_model

    torch.manual_seed(0)
    reference = TorchBackend(build_model("tiny", img_size=128), "cpu", "fp32")
    onnx_path = export_model(reference.model, tmp_path / "tiny.onnx", input_size=(128, 128),
                             metadata=reference.metadata, precision="fp16")
    backend = trt_backend.TensorRTBackend.from_onnx(onnx_path, cache_dir=tmp_path, show_progress=False)
    engine = backend.engine_path
    stamp = engine.stat().st_mtime_ns
    rng = np.random.default_rng(0)
    images = rng.random(backend.input_shape, dtype=np.float32)
    mask = np.array([[1, 1, 0, 1]], np.float32)
    images[:, 2] = 0
    backend.warmup()
    got, want = backend.infer(images, mask), reference.infer(images, mask)
    assert (got["labels"] == want["labels"]).mean() >= 0.99
    np.testing.assert_allclose(got["router_weights"], want["router_weights"], atol=2e-3)
    backend.close()

    graph = trt_backend.TensorRTBackend.from_onnx(onnx_path, cache_dir=tmp_path, use_cuda_graph=True)
    assert graph.engine_path == engine and engine.stat().st_mtime_ns == stamp  # restart: not rebuilt
    assert (graph.infer(images, mask)["labels"] == got["labels"]).mean() >= 0.999
    graph.close()

    engine.write_bytes(engine.read_bytes()[:1000])  # corrupted: rebuilt, never a crash
    rebuilt = trt_backend.TensorRTBackend.from_onnx(onnx_path, cache_dir=tmp_path, show_progress=False)
    assert (rebuilt.infer(images, mask)["labels"] == got["labels"]).mean() >= 0.999
    rebuilt.close()


@pytest.mark.gpu
def test_tensorrt_domain_model_selects_in_graph_like_torch(tmp_path):
    """Every domain adapter in the engine, the per-frame choice made inside it (fp32 graph: the
    same choice as torch), the pinned export using its domain on every frame."""
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda.driver")
    import torch

    from sam_mmseg_ros.engine.export import export_model
    from sam_mmseg_ros.engine.torch_backend import TorchBackend
    from sam_mmseg_ros.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny_moda", img_size=128)
    with torch.no_grad():
        for adapter in model.domains.adapters:
            for name, p in adapter.named_parameters():
                if name.startswith(("b_", "decoder_b")):
                    p.normal_(0.0, 0.3)
        model.domains.selector.classifier.weight.normal_(0.0, 3.0)
    for pin in (None, "night"):
        reference = TorchBackend(model, "cpu", "fp32", domain=pin)
        onnx_path = export_model(reference.model, tmp_path / f"moda-{pin}.onnx", input_size=(128, 128),
                                 metadata=reference.metadata, precision="fp32")
        backend = trt_backend.TensorRTBackend.from_onnx(onnx_path, cache_dir=tmp_path, show_progress=False)
        assert backend.output_names[-2:] == ("domain", "domain_confidence")
        rng = np.random.default_rng(0)
        for _ in range(4):
            images = rng.normal(rng.uniform(-1, 1), rng.uniform(0.2, 3.0), backend.input_shape).astype(np.float32)
            mask = np.ones((1, 4), np.float32)
            got, want = backend.infer(images, mask), reference.infer(images, mask)
            assert got["domain"].tolist() == want["domain"].tolist()
            if pin is not None:
                assert got["domain"].tolist() == [model.config.domains.index(pin)]
            np.testing.assert_allclose(got["domain_confidence"], want["domain_confidence"], atol=1e-3)
            assert (got["labels"] == want["labels"]).mean() >= 0.99
        backend.close()
