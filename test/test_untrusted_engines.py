"""TensorRT engines a user names: loaded only when their cache record matches this machine (hash,
TensorRT version, GPU, precision); one without a record only when marked trusted, and the log
says that nothing was checked. Runs against the fake TensorRT of test_engine_tensorrt."""

from __future__ import annotations

import logging

import pytest
from test_engine_tensorrt import FakeTensorRT

import sam_mmseg_ros.engine.tensorrt_backend as trt_backend
from sam_mmseg_ros.engine import create_backend
from sam_mmseg_ros.engine.engine_cache import EngineCacheError, EngineKey, check_user_engine, store_engine


@pytest.fixture
def fake(monkeypatch):
    """Fake TensorRT whose engine loads are recorded instead of deserialized."""
    fake = FakeTensorRT()
    fake.install(monkeypatch)
    fake.loaded = []

    def load(backend, engine_path, **options):
        fake.loaded.append((engine_path, options))
        backend.precision, backend.input_shape = "unrecorded", (1, 4, 3, 8, 8)

    monkeypatch.setattr(trt_backend.TensorRTBackend, "__init__", load)
    return fake


def _key(fake: FakeTensorRT, precision: str = "fp16", gpu_name: str | None = None) -> EngineKey:
    return EngineKey("a" * 64, fake.trt.__version__, gpu_name or fake.gpu_name, fake.capability, precision,
                     fake.sm_count, round(fake.total_memory / 2**30))


def _load(path, **options):
    return trt_backend.TensorRTBackend.from_engine(path, **options)


def test_engine_without_record_is_refused_unless_trusted(fake, tmp_path, caplog):
    engine = tmp_path / "from_a_colleague.engine"
    engine.write_bytes(b"serialized engine")
    with pytest.raises(EngineCacheError, match="no usable cache record") as error:
        _load(engine)
    assert "engine_trusted" in str(error.value) and fake.loaded == []

    with caplog.at_level(logging.WARNING):
        _load(engine, trusted=True)
    assert fake.loaded == [(engine, {"record": {}, "use_cuda_graph": False, "device_index": 0,
                                     "logger": None})]
    assert str(engine) in caplog.text and "marked trusted" in caplog.text and "NOT checked" in caplog.text


def test_engine_with_a_matching_record_loads(fake, tmp_path):
    engine = store_engine(tmp_path / "ours.engine", _key(fake), b"serialized engine")
    _load(engine, precision="fp16")
    assert [path for path, _ in fake.loaded] == [engine]
    assert "record" not in fake.loaded[0][1]  # the backend reads the record itself


@pytest.mark.parametrize("trusted", [False, True])
def test_a_record_that_does_not_match_is_refused_even_when_trusted(fake, tmp_path, trusted):
    other_gpu = store_engine(tmp_path / "orin.engine", _key(fake, gpu_name="NVIDIA Jetson AGX Orin"), b"e1")
    with pytest.raises(EngineCacheError, match="gpu_name: NVIDIA Jetson AGX Orin -> NVIDIA Fake GPU"):
        _load(other_gpu, trusted=trusted)
    fp32 = store_engine(tmp_path / "fp32.engine", _key(fake, precision="fp32"), b"e2")
    with pytest.raises(EngineCacheError, match="precision: fp32 -> fp16"):
        _load(fp32, trusted=trusted, precision="fp16")
    replaced = store_engine(tmp_path / "replaced.engine", _key(fake), b"e3")
    replaced.write_bytes(b"something else")
    with pytest.raises(EngineCacheError, match="does not match its recorded sha256"):
        _load(replaced, trusted=trusted)
    assert fake.loaded == []


def test_create_backend_passes_the_trust_flag(fake, tmp_path, caplog):
    engine = tmp_path / "handmade.engine"
    engine.write_bytes(b"serialized engine")
    with pytest.raises(EngineCacheError, match="no usable cache record"):
        create_backend("tensorrt", engine_path=engine)
    with caplog.at_level(logging.WARNING):
        backend = create_backend("tensorrt", engine_path=engine, engine_trusted=True, warmup_frames=0)  # a stub
    assert backend.name == "tensorrt" and [path for path, _ in fake.loaded] == [engine]
    assert "marked trusted" in caplog.text


def test_check_user_engine_without_tensorrt(tmp_path):
    key = EngineKey("b" * 64, "10.13.0.35", "GPU", (8, 6), "fp16")
    assert not check_user_engine(tmp_path / "none.engine", lambda stored: stored, trusted=True).valid
    engine = store_engine(tmp_path / "e.engine", key, b"bytes")
    assert check_user_engine(engine, lambda stored: stored, trusted=False).valid
    (tmp_path / "e.engine.json").write_text("{not json")
    check = check_user_engine(engine, lambda stored: stored, trusted=True)
    assert not check.valid and "no usable cache record" in check.reason  # a broken record is not "no record"


def test_the_node_parameter_reaches_create_backend():
    from sam_mmseg_ros.node_settings import NodeSettings

    assert NodeSettings.from_file().model.backend_options()["engine_trusted"] is False
    trusted = NodeSettings.from_file(overrides={"engine_path": "/vehicle/model.engine", "engine_trusted": True})
    assert trusted.model.backend_options()["engine_trusted"] is True
