"""The optional `depth` engine output: a multi-task model exports it (fp32 and fp16, with the
Exp kept in fp32), ONNX Runtime runs it with torch's values, backends name their outputs, and a
single-task model keeps today's contract."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from onnx_fixtures import contract_inputs

from sam_mmseg_ros.contracts import ENGINE_OUTPUTS, OPTIONAL_ENGINE_OUTPUTS
from sam_mmseg_ros.engine.base import check_outputs, contract_outputs
from sam_mmseg_ros.engine.export import convert_file_to_fp16, export_model
from sam_mmseg_ros.engine.onnxruntime_backend import OnnxRuntimeBackend
from sam_mmseg_ros.engine.torch_backend import TorchBackend
from sam_mmseg_ros.model import build_model

SIZE = 64
MICRO = dict(img_size=SIZE, depth=2, global_attn_indexes=(1,), aux_block_indexes=(0, 1), decoder_depth=1)
CASES = [(0, [1, 1, 1, 1]), (1, [1, 0, 1, 1]), (2, [1, 0, 0, 0])]


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Non-zero experts and task cores, so both task paths and the depth head really differ."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_b_" in name or ".lora_core_" in name:
                p.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def multitask(tmp_path_factory):
    folder = tmp_path_factory.mktemp("depth_export")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _trained_looking(build_model("tiny_talora", **MICRO))
    reference = TorchBackend(model, "cpu", "fp32")
    fp32 = export_model(reference.model, folder / "mt_fp32.onnx", input_size=(SIZE, SIZE),
                        metadata=reference.metadata)
    return reference, fp32, convert_file_to_fp16(fp32, folder / "mt_fp16.onnx")


def _inputs(seed: int, mask: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return contract_inputs(seed, mask, SIZE)


def test_depth_output_in_the_exported_graph(multitask):
    reference, fp32, _ = multitask
    assert reference.output_names == (*ENGINE_OUTPUTS, "depth")
    model = onnx.load(str(fp32))
    assert [o.name for o in model.graph.output] == [*ENGINE_OUTPUTS, "depth"]
    depth = next(o for o in model.graph.output if o.name == "depth").type.tensor_type
    assert depth.elem_type == TensorProto.FLOAT and [d.dim_value for d in depth.shape.dim] == [1, SIZE, SIZE]
    assert not {n.op_type for n in model.graph.node} & {"Shape", "If", "Loop"}
    assert onnx.load(str(fp32)).metadata_props  # metadata kept; tasks travel in its model config
    from sam_mmseg_ros.engine.export import read_metadata

    assert read_metadata(fp32)["model"]["tasks"] == ["semantic", "depth"]


def test_onnxruntime_depth_matches_torch(multitask):
    reference, fp32, _ = multitask
    backend = OnnxRuntimeBackend(fp32, "cpu")
    assert backend.output_names == (*ENGINE_OUTPUTS, "depth")
    for seed, mask in CASES:
        images, modality_mask = _inputs(seed, mask)
        got, want = backend.infer(images, modality_mask), reference.infer(images, modality_mask)
        assert set(got) == set(want) == {*ENGINE_OUTPUTS, "depth"}
        assert (got["labels"] == want["labels"]).mean() >= 0.999
        np.testing.assert_allclose(got["router_weights"], want["router_weights"], atol=1e-5)
        np.testing.assert_allclose(got["depth"], want["depth"], rtol=1e-4)
        assert np.all(got["depth"] > 0) and np.isfinite(got["depth"]).all()


def test_fp16_depth_keeps_the_exp_in_fp32_and_stays_close(multitask):
    _, fp32, fp16 = multitask
    model = onnx.load(str(fp16))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    exps = [n for n in model.graph.node if n.op_type == "Exp"]
    assert exps and all(types.get(n.input[0]) == TensorProto.FLOAT for n in exps)
    assert next(o for o in model.graph.output if o.name == "depth").type.tensor_type.elem_type == TensorProto.FLOAT
    half, full = OnnxRuntimeBackend(fp16, "cpu"), OnnxRuntimeBackend(fp32, "cpu")
    for seed, mask in CASES:
        images, modality_mask = _inputs(seed, mask)
        got, want = half.infer(images, modality_mask), full.infer(images, modality_mask)
        # fp16 log depth carries ~1e-3 relative error; a few tenths of a percent in metres.
        np.testing.assert_allclose(got["depth"], want["depth"], rtol=2e-2)
        assert np.median(np.abs(got["depth"] / want["depth"] - 1)) < 5e-3


def test_single_task_models_keep_todays_contract():
    torch.manual_seed(0)
    backend = TorchBackend(build_model("tiny", **MICRO), "cpu", "fp32")
    assert backend.output_names == ENGINE_OUTPUTS
    images, mask = _inputs(0, [1, 1, 1, 1])
    assert tuple(backend.infer(images, mask)) == ENGINE_OUTPUTS


def test_contract_output_names():
    assert OPTIONAL_ENGINE_OUTPUTS[0] == "depth"
    assert contract_outputs(["depth", "router_weights", "labels", "confidence"]) == (*ENGINE_OUTPUTS, "depth")
    assert contract_outputs(ENGINE_OUTPUTS) == ENGINE_OUTPUTS
    with pytest.raises(ValueError, match="engine contract"):
        contract_outputs(["labels", "confidence", "depth"])
    with pytest.raises(ValueError, match="engine contract"):
        contract_outputs([*ENGINE_OUTPUTS, "normals"])


def test_check_outputs_checks_depth():
    shape = (1, 4, 3, 8, 8)
    good = {"labels": np.zeros((1, 8, 8), np.int32), "confidence": np.zeros((1, 8, 8), np.float32),
            "router_weights": np.zeros((1, 4), np.float32)}
    assert check_outputs({**good, "depth": np.ones((1, 8, 8), np.float32)}, shape)
    with pytest.raises(RuntimeError, match="'depth' is float64"):
        check_outputs({**good, "depth": np.ones((1, 8, 8))}, shape)
    with pytest.raises(RuntimeError, match="not in the engine contract"):
        check_outputs({**good, "normals": np.ones((1, 8, 8), np.float32)}, shape)


@pytest.mark.gpu
def test_tensorrt_engine_depth_matches_torch(multitask, tmp_path):
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda.driver")
    from sam_mmseg_ros.engine.tensorrt_backend import TensorRTBackend

    reference, _, fp16 = multitask
    backend = TensorRTBackend.from_onnx(fp16, cache_dir=tmp_path, show_progress=False)
    assert backend.output_names == (*ENGINE_OUTPUTS, "depth")
    for seed, mask in CASES:
        images, modality_mask = _inputs(seed, mask)
        got, want = backend.infer(images, modality_mask), reference.infer(images, modality_mask)
        assert (got["labels"] == want["labels"]).mean() >= 0.99
        np.testing.assert_allclose(got["depth"], want["depth"], rtol=2e-2)
    backend.close()


def test_the_depth_task_can_be_left_out_of_the_model_and_its_export(multitask, tmp_path):
    from sam_mmseg_ros.engine import create_backend
    from sam_mmseg_ros.model.checkpoint import save_checkpoint

    reference, _, _ = multitask
    checkpoint = save_checkpoint(tmp_path / "mt.pt", reference.model, trained=True)
    semantic = reference.model.with_tasks(("semantic",))
    assert semantic.config.tasks == ("semantic",) and semantic.depth_decoder is None
    assert semantic.image_encoder.blocks[0].attn.qkv.lora_core_q.shape[0] == 1  # one task path left
    assert reference.model.with_tasks(("semantic", "depth")) is reference.model
    with pytest.raises(ValueError, match="not"):
        semantic.with_tasks(("semantic", "depth"))

    only = create_backend("onnxruntime-cpu", checkpoint=checkpoint, cache_dir=tmp_path, tasks=("semantic",))
    both = create_backend("onnxruntime-cpu", checkpoint=checkpoint, cache_dir=tmp_path)
    assert only.output_names == ENGINE_OUTPUTS and both.output_names == (*ENGINE_OUTPUTS, "depth")
    assert only.onnx_path != both.onnx_path and only.onnx_path.stat().st_size < both.onnx_path.stat().st_size
    assert create_backend("torch", checkpoint=checkpoint, tasks=("semantic",)).output_names == ENGINE_OUTPUTS
    for seed, mask in CASES:
        images, modality_mask = _inputs(seed, mask)
        got, want = only.infer(images, modality_mask), reference.infer(images, modality_mask)
        assert (got["labels"] == want["labels"]).mean() >= 0.999  # the semantic path is unchanged
        np.testing.assert_allclose(got["router_weights"], want["router_weights"], atol=1e-5)
