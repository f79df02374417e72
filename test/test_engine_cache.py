"""Engine cache policy (engine_cache.py): keys, validity checks, rebuild decisions. Pure Python,
with the TensorRT version, GPU name and compute capability injected."""

import json
from dataclasses import replace

import pytest

from sam_mmseg_ros.engine.engine_cache import (
    EngineCacheError,
    EngineKey,
    check_engine,
    default_engine_path,
    file_sha256,
    plan_engine,
    read_record,
    sidecar_path,
    store_engine,
    timing_cache_path,
)

KEY = EngineKey("a" * 64, "10.13.0.35", "NVIDIA A100-SXM4-40GB", (8, 0), "fp16", 108, 40)
ENGINE = b"\x00engine bytes\xff" * 100


@pytest.fixture
def stored(tmp_path):
    path = tmp_path / "model.engine"
    store_engine(path, KEY, ENGINE, workspace_mib=1024)
    return path


def test_key_round_trips_and_digest_depends_on_every_field():
    assert EngineKey.from_dict(json.loads(json.dumps(KEY.to_dict()))) == KEY
    variants = [
        EngineKey("b" * 64, *list(KEY.to_dict().values())[1:]),
        EngineKey(KEY.onnx_sha256, "10.14.1", KEY.gpu_name, KEY.compute_capability, KEY.precision),
        EngineKey(KEY.onnx_sha256, KEY.tensorrt_version, "NVIDIA Jetson AGX Orin", KEY.compute_capability, KEY.precision),
        EngineKey(KEY.onnx_sha256, KEY.tensorrt_version, KEY.gpu_name, (8, 7), KEY.precision),
        EngineKey(KEY.onnx_sha256, KEY.tensorrt_version, KEY.gpu_name, KEY.compute_capability, "fp32"),
    ]
    variants = [replace(v, sm_count=KEY.sm_count, total_memory_gib=KEY.total_memory_gib) for v in variants]
    variants += [replace(KEY, sm_count=16), replace(KEY, total_memory_gib=80)]
    digests = {KEY.digest()} | {v.digest() for v in variants}
    assert len(digests) == 8
    assert [len(KEY.differences(v)) for v in variants] == [1] * 7


def test_records_from_before_sm_count_and_memory_were_keyed_are_rebuilt(stored):
    record = json.loads(sidecar_path(stored).read_text())
    for field in ("sm_count", "total_memory_gib"):
        del record["key"][field]
    sidecar_path(stored).write_text(json.dumps(record))
    check = check_engine(stored, KEY)
    assert not check.valid and "sm_count: None -> 108" in check.reason


def test_store_writes_engine_and_record_beside_it(stored):
    assert stored.read_bytes() == ENGINE
    record = read_record(stored)
    assert sidecar_path(stored).name == "model.engine.json"
    assert record["key"] == KEY.to_dict()
    assert record["engine_sha256"] == file_sha256(stored)
    assert record["workspace_mib"] == 1024
    assert not list(stored.parent.glob("*.tmp"))


def test_valid_engine_is_loaded_not_rebuilt(stored):
    assert check_engine(stored, KEY).valid
    plan = plan_engine(stored, KEY, allow_build=True)
    assert plan.action == "load"
    # Still valid for a second process with the same facts (restart).
    assert plan_engine(stored, EngineKey.from_dict(KEY.to_dict()), allow_build=False).action == "load"


@pytest.mark.parametrize("field, value", [
    ("onnx_sha256", "c" * 64), ("tensorrt_version", "11.0.0"), ("gpu_name", "NVIDIA H100"),
    ("compute_capability", (9, 0)), ("precision", "fp32"),
])
def test_any_key_mismatch_rebuilds_or_fails_clearly(stored, field, value):
    wanted = EngineKey.from_dict({**KEY.to_dict(), field: value})
    plan = plan_engine(stored, wanted, allow_build=True)
    assert plan.action == "build" and field in plan.reason
    with pytest.raises(EngineCacheError, match=f"{field}.*building is disabled"):
        plan_engine(stored, wanted, allow_build=False)


def test_corrupted_engine_is_detected_by_its_recorded_hash(stored):
    data = bytearray(stored.read_bytes())
    data[10] ^= 0xFF
    stored.write_bytes(bytes(data))
    check = check_engine(stored, KEY)
    assert not check.valid and "sha256" in check.reason
    assert plan_engine(stored, KEY, allow_build=True).action == "build"


def test_truncated_engine_is_not_trusted(stored):
    stored.write_bytes(ENGINE[:7])
    assert not check_engine(stored, KEY).valid


@pytest.mark.parametrize("record", [None, "{not json", json.dumps({"key": {"onnx_sha256": "x"}})])
def test_foreign_engine_without_a_usable_record_is_rebuilt(tmp_path, record):
    engine = tmp_path / "foreign.engine"
    engine.write_bytes(ENGINE)
    if record is not None:
        sidecar_path(engine).write_text(record)
    check = check_engine(engine, KEY)
    assert not check.valid
    assert plan_engine(engine, KEY, allow_build=True).action == "build"
    with pytest.raises(EngineCacheError, match="sam-mmseg build-engine"):
        plan_engine(engine, KEY, allow_build=False)


def test_missing_engine_builds(tmp_path):
    plan = plan_engine(tmp_path / "none.engine", KEY, allow_build=True)
    assert plan.action == "build" and "no engine" in plan.reason


def test_restoring_an_engine_rewrites_its_record(stored):
    new_key = EngineKey.from_dict({**KEY.to_dict(), "precision": "fp32"})
    store_engine(stored, new_key, b"other engine")
    assert check_engine(stored, new_key).valid
    assert not check_engine(stored, KEY).valid


def test_default_paths_name_the_setup_and_separate_keys(tmp_path):
    path = default_engine_path(tmp_path, "/models/sam_tiny.onnx", KEY)
    assert path.parent == tmp_path / "engines"
    assert path.name.startswith("sam_tiny-fp16-nvidia-a100-sxm4-40gb-sm80-trt10-13-0-35-")
    other = EngineKey.from_dict({**KEY.to_dict(), "gpu_name": "Orin"})
    assert default_engine_path(tmp_path, "/models/sam_tiny.onnx", other) != path
    timing = timing_cache_path(tmp_path, KEY)
    assert timing.parent == tmp_path / "timing" and "sm80-108sms" in timing.name
    assert timing != timing_cache_path(tmp_path, replace(KEY, tensorrt_version="11.0"))
    assert timing != timing_cache_path(tmp_path, replace(KEY, sm_count=54))


def test_file_sha256_matches_hashlib(tmp_path):
    import hashlib

    f = tmp_path / "blob"
    f.write_bytes(bytes(range(256)) * 5000)
    assert file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
