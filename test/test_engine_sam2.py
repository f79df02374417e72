"""The SAM2 models downstream: checkpoint -> static ONNX (contract names, fp16 rules) -> ONNX
Runtime, equal to torch, with absent modalities masked in the graph; `create_backend` (what the
node and `sam-mmseg eval` call) builds them from their checkpoint."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from onnx_fixtures import contract_inputs

from sam_mmseg_ros.contracts import ENGINE_INPUTS, ENGINE_OUTPUTS
from sam_mmseg_ros.engine import create_backend
from sam_mmseg_ros.engine.export import FP32_OPS, cached_export, read_metadata
from sam_mmseg_ros.engine.onnxruntime_backend import OnnxRuntimeBackend
from sam_mmseg_ros.engine.torch_backend import TorchBackend
from sam_mmseg_ros.model import build_model
from sam_mmseg_ros.model.checkpoint import save_checkpoint

SIZE = 64
SMALL = dict(img_size=SIZE, depth=4, stages=(1, 1, 1, 1), global_attn_indexes=(0,), decoder_depth=1, memory_layers=1)
"""The CPU configs, shortened to keep the export fast: global and windowed (query-pooling)
attention, all four stages, the high-resolution decoder, and for MemorySAM one memory-attention
layer (the four frames are still four decoder passes)."""
MASKS = [[1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1]]
"""All present; some absent; one alone; the first frames absent (MemorySAM's no-memory path)."""


@pytest.fixture(scope="module", params=["tiny_hiera", pytest.param("tiny_memorysam", marks=pytest.mark.slow)])
def exported(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(request.param, **SMALL)
        with torch.no_grad():
            for p in model.image_encoder.lora_parameters():
                p.normal_(0.0, 0.1)  # experts that act, so the batched expert path is exported too
    checkpoint = save_checkpoint(folder / "model.pt", model, trained=False)
    # Exported into the cache the node's create_backend uses, so that test finds it there.
    fp32 = cached_export(checkpoint, folder, precision="fp32")
    fp16 = cached_export(checkpoint, folder, precision="fp16")
    return SimpleNamespace(name=request.param, checkpoint=checkpoint, fp32=fp32, fp16=fp16, cache=folder,
                           torch=TorchBackend.from_checkpoint(checkpoint, "cpu"))


def _inputs(seed: int, mask: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return contract_inputs(seed, mask, SIZE)


def test_export_is_a_static_contract_graph_with_fp32_islands(exported):
    model = onnx.load(str(exported.fp32))
    assert [i.name for i in model.graph.input] == list(ENGINE_INPUTS)
    assert [o.name for o in model.graph.output] == list(ENGINE_OUTPUTS)
    assert not {n.op_type for n in model.graph.node} & {"Shape", "If", "Loop", "Scan"}
    assert read_metadata(exported.fp32)["model"]["name"] == exported.name
    half = onnx.load(str(exported.fp16))
    types = {v.name: v.type.tensor_type.elem_type for v in list(half.graph.value_info) + list(half.graph.input)}
    types.update({i.name: i.data_type for i in half.graph.initializer})
    for node in half.graph.node:
        float_inputs = {types[i] for i in node.input if types.get(i) in (TensorProto.FLOAT, TensorProto.FLOAT16)}
        if node.op_type in FP32_OPS:
            assert float_inputs == {TensorProto.FLOAT}, node.name
        elif node.op_type in ("MatMul", "Conv"):
            assert float_inputs == {TensorProto.FLOAT16}, node.name


def test_onnxruntime_matches_torch_fp32_and_fp16(exported):
    fp32, fp16 = OnnxRuntimeBackend(exported.fp32, "cpu"), OnnxRuntimeBackend(exported.fp16, "cpu")
    for seed, mask in enumerate(MASKS):
        images, modality_mask = _inputs(seed, mask)
        want, got, half = (b.infer(images, modality_mask) for b in (exported.torch, fp32, fp16))
        assert (got["labels"] == want["labels"]).mean() >= 0.999
        np.testing.assert_allclose(got["confidence"], want["confidence"], atol=1e-4)
        np.testing.assert_allclose(got["router_weights"], want["router_weights"], atol=1e-5)
        assert np.all(got["router_weights"][modality_mask == 0] == 0)
        assert np.isclose(got["router_weights"].sum(), 1.0, atol=1e-5)
        assert (half["labels"] == got["labels"]).mean() >= 0.98


def test_absent_slots_do_not_change_the_exported_output(exported):
    backend = OnnxRuntimeBackend(exported.fp32, "cpu")
    images, modality_mask = _inputs(7, [1, 0, 1, 0])
    noisy, absent = images.copy(), modality_mask[0] == 0
    noisy[:, absent] = np.random.default_rng(8).normal(0.0, 50.0, noisy[:, absent].shape)
    a, b = backend.infer(images, modality_mask), backend.infer(noisy, modality_mask)
    assert np.array_equal(a["labels"], b["labels"]) and np.allclose(a["confidence"], b["confidence"], atol=1e-6)


def test_create_backend_builds_it_from_the_checkpoint_as_the_node_does(exported):
    backend = create_backend("auto", checkpoint=exported.checkpoint, device="cpu", cache_dir=exported.cache)
    assert backend.name == "onnxruntime-cpu" and backend.input_shape == (1, 4, 3, SIZE, SIZE)
    images, modality_mask = _inputs(3, [1, 1, 0, 1])
    got, want = backend.infer(images, modality_mask), exported.torch.infer(images, modality_mask)
    assert (got["labels"] == want["labels"]).mean() >= 0.999
