"""ONNX files from outside: checked (ONNX checker, external data confined to the model's folder,
engine contract) before ONNX Runtime or TensorRT opens them."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_fixtures import contract_model
from test_engine_tensorrt import FakeTensorRT

from sam_mmseg_ros.cli import EXIT_BAD_FILE
from sam_mmseg_ros.cli import main as cli_main
from sam_mmseg_ros.engine import create_backend
from sam_mmseg_ros.engine.onnx_check import MAX_INPUT_SIDE, OnnxFileError, check_onnx_file
from sam_mmseg_ros.engine.onnxruntime_backend import OnnxRuntimeBackend


def _external(model: onnx.ModelProto, location: str, **fields: int) -> onnx.ModelProto:
    """Point the `scale` initializer at `location` (written by hand: onnx.save would refuse)."""
    tensor = next(t for t in model.graph.initializer if t.name == "scale")
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in {"location": location, **{k: str(v) for k, v in fields.items()}}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model


def _write(model: onnx.ModelProto, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def model_dir(tmp_path):
    return tmp_path / "models" / "ours"


def test_contract_model_with_external_data_in_its_folder_runs(model_dir):
    path = model_dir / "model.onnx"
    model_dir.mkdir(parents=True)
    onnx.save(contract_model(), str(path), save_as_external_data=True, location="weights.bin",
              size_threshold=64)  # only `scale` (256 bytes): ORT needs `axes` inline
    assert (model_dir / "weights.bin").is_file()
    assert check_onnx_file(path) == (4, 8, 8)
    backend = OnnxRuntimeBackend(path, "cpu")
    out = backend.infer(np.ones((1, 4, 3, 8, 8), np.float32), np.ones((1, 4), np.float32))
    assert out["labels"].shape == (1, 8, 8)


@pytest.mark.parametrize(("location", "message"), [
    ("../../etc/passwd", "outside the model's folder"),
    ("/etc/passwd", "absolute path"),
    ("sub/../../../../../../etc/passwd", "outside the model's folder"),
    ("missing.bin", "not a regular file"),
    ("", "names no file"),
])
def test_external_data_must_stay_in_the_models_folder(model_dir, location, message):
    path = _write(_external(contract_model(), location), model_dir / "model.onnx")
    with pytest.raises(OnnxFileError, match="refused") as error:
        check_onnx_file(path)
    assert str(path) in str(error.value) and message in str(error.value) and "'scale'" in str(error.value)


def test_a_symlink_out_of_the_folder_is_refused(model_dir, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(256))
    model_dir.mkdir(parents=True)
    (model_dir / "weights.bin").symlink_to(secret)
    path = _write(_external(contract_model(), "weights.bin"), model_dir / "model.onnx")
    with pytest.raises(OnnxFileError, match="outside the model's folder"):
        check_onnx_file(path)


@pytest.mark.parametrize(("fields", "message"), [
    ({"offset": 200, "length": 256}, "which has 256 bytes"),
    ({"length": 128}, "needs 256 bytes for shape [8, 8]"),
    ({"offset": -5}, "declares bytes"),
])
def test_external_bytes_must_fit_the_file_and_the_shape(model_dir, fields, message):
    model_dir.mkdir(parents=True)
    (model_dir / "weights.bin").write_bytes(bytes(256))
    path = _write(_external(contract_model(), "weights.bin", **fields), model_dir / "model.onnx")
    with pytest.raises(OnnxFileError, match="refused") as error:
        check_onnx_file(path)
    assert message in str(error.value)


def test_traversal_is_refused_on_every_route(model_dir, tmp_path, monkeypatch, caplog):
    path = _write(_external(contract_model(), "../../etc/passwd"), model_dir / "model.onnx")
    with pytest.raises(OnnxFileError, match="outside the model's folder"):
        OnnxRuntimeBackend(path, "cpu")
    for kind in ("onnxruntime-cpu", "auto"):
        with pytest.raises(OnnxFileError, match="outside the model's folder"):
            create_backend(kind, onnx_path=path, device="cpu", cache_dir=tmp_path / "cache")
    fake = FakeTensorRT()
    fake.install(monkeypatch)
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["build-engine", "--onnx", str(path), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert rc == EXIT_BAD_FILE and "outside the model's folder" in caplog.text
    assert fake.builds == []  # TensorRT's parser never saw it


def _retyped(name: str, elem_type: int, shape: list) -> onnx.ModelProto:
    model = contract_model()
    for value_info in [*model.graph.input, *model.graph.output]:
        if value_info.name == name:
            value_info.CopyFrom(helper.make_tensor_value_info(name, elem_type, shape))
    return model


@pytest.mark.parametrize(("model", "message"), [
    (_retyped("labels", TensorProto.FLOAT, [1, 8, 8]), "'labels' is float32 [1, 8, 8], expected int32 [1, 8, 8]"),
    (_retyped("images", TensorProto.FLOAT, ["N", 4, 3, 8, 8]), "expected static [1, M, 3, H, W]"),
    (_retyped("router_weights", TensorProto.FLOAT, [1, 3]), "'router_weights' is float32 [1, 3]"),
])
def test_contract_is_checked_before_a_session(tmp_path, model, message):
    path = _write(model, tmp_path / "model.onnx")
    with pytest.raises(OnnxFileError, match="engine contract") as error:
        OnnxRuntimeBackend(path, "cpu")
    assert message in str(error.value)


def test_absurd_sizes_are_refused(tmp_path):
    path = _write(contract_model(m=9), tmp_path / "m9.onnx")
    with pytest.raises(OnnxFileError, match="9 modality slots"):
        check_onnx_file(path)
    path = _write(contract_model(h=MAX_INPUT_SIDE + 1), tmp_path / "tall.onnx")
    with pytest.raises(OnnxFileError, match=f"larger than {MAX_INPUT_SIDE} on a side"):
        check_onnx_file(path)


def test_extra_outputs_must_be_the_contracts_optional_ones(tmp_path):
    model = contract_model()
    model.graph.node.append(helper.make_node("Identity", ["confidence"], ["depth"]))
    model.graph.output.append(helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, 8, 8]))
    assert check_onnx_file(_write(model, tmp_path / "depth.onnx")) == (4, 8, 8)
    model.graph.node.append(helper.make_node("Identity", ["confidence"], ["leak"]))
    model.graph.output.append(helper.make_tensor_value_info("leak", TensorProto.FLOAT, [1, 8, 8]))
    with pytest.raises(OnnxFileError, match="output 'leak' is not part of the contract"):
        check_onnx_file(_write(model, tmp_path / "leak.onnx"))


def test_checker_failures_are_refused(tmp_path):
    model = contract_model()
    model.graph.node.append(helper.make_node("Relu", ["nowhere"], ["dangling"]))
    path = _write(model, tmp_path / "broken.onnx")
    with pytest.raises(OnnxFileError, match="fails the ONNX checker") as error:
        check_onnx_file(path)
    assert str(path) in str(error.value)
