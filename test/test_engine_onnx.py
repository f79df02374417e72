"""ONNX export (fp32 and fp16), its metadata, the ONNX Runtime backend's parity with torch, and
how `create_backend` chooses and falls back. One small model is exported once per module."""

from __future__ import annotations

import logging
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx_fixtures import contract_inputs

from sam_mmseg_ros.contracts import ENGINE_INPUTS, ENGINE_OUTPUTS, InputError
from sam_mmseg_ros.engine import BackendUnavailable, create_backend
from sam_mmseg_ros.engine import export as export_module
from sam_mmseg_ros.engine.engine_cache import file_sha256
from sam_mmseg_ros.engine.export import FP32_OPS, cached_export, convert_to_fp16, read_metadata
from sam_mmseg_ros.engine.onnx_check import OnnxFileError
from sam_mmseg_ros.engine.onnxruntime_backend import (
    OnnxRuntimeBackend,
    ProviderUnavailable,
    available_devices,
)
from sam_mmseg_ros.engine.torch_backend import TorchBackend
from sam_mmseg_ros.model import build_model

SIZE = 64
GLOBAL_TOKENS = (SIZE // 16) ** 2
CHUNK_BYTES = 4096
"""Attention score budget for the export here: the global block's [4 modalities, 4 heads, 16, 16]
fp32 scores (16 KiB) run as 4 query chunks of 4 rows, as vit_b's do at 1024x1024."""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model saved as a checkpoint, exported through `sam-mmseg export` (fp32 and fp16)."""
    from sam_mmseg_ros import cli
    from sam_mmseg_ros.model import image_encoder
    from sam_mmseg_ros.model.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("export")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # `tiny`, shortened to keep the export fast: windowed and global attention, decoder; the
        # shipped model's joint per-token router (its joint gate drawn, not at its zero init) and
        # fusion without the mean term.
        model = build_model("tiny", img_size=SIZE, depth=2, global_attn_indexes=(1,), aux_block_indexes=(0, 1),
                            window_size=2, decoder_depth=1, router="spatial_joint", fusion_mean="none")
        torch.nn.init.normal_(model.router.joint_gate.weight, std=0.05)
    checkpoint = folder / "tiny.pt"
    save_checkpoint(checkpoint, model, trained=False)
    fp32 = folder / "tiny_fp32.onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(image_encoder, "ATTENTION_CHUNK_BYTES", CHUNK_BYTES)
        assert cli.main(["export", "--checkpoint", str(checkpoint), "-o", str(fp32)]) == 0
    fp16 = export_module.convert_file_to_fp16(fp32, folder / "tiny_fp16.onnx")
    return SimpleNamespace(checkpoint=checkpoint, fp32=fp32, fp16=fp16,
                           torch=TorchBackend.from_checkpoint(checkpoint, "cpu"))


def _inputs(seed: int, mask: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return contract_inputs(seed, mask, SIZE)


CASES = [(0, [1, 1, 1, 1]), (1, [1, 0, 1, 0]), (2, [0, 1, 0, 0])]


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


# --------------------------------------------------------------------------- export


def test_export_is_a_static_contract_graph(exported):
    model = onnx.load(str(exported.fp32))
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    io = {v.name: (v.type.tensor_type.elem_type, [d.dim_value for d in v.type.tensor_type.shape.dim])
          for v in list(model.graph.input) + list(model.graph.output)}
    assert [i.name for i in model.graph.input] == list(ENGINE_INPUTS)
    assert [o.name for o in model.graph.output] == list(ENGINE_OUTPUTS)
    assert io == {
        "images": (TensorProto.FLOAT, [1, 4, 3, SIZE, SIZE]),
        "modality_mask": (TensorProto.FLOAT, [1, 4]),
        "labels": (TensorProto.INT32, [1, SIZE, SIZE]),
        "confidence": (TensorProto.FLOAT, [1, SIZE, SIZE]),
        "router_weights": (TensorProto.FLOAT, [1, 4]),
    }
    ops = {n.op_type for n in model.graph.node}
    assert "LayerNormalization" in ops  # native, not decomposed
    assert not ops & {"Shape", "If", "Loop"}  # nothing left to compute at run time about shapes


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}


def test_exported_attention_is_plain_attention_in_query_chunks(exported):
    """Every attention is MatMul(Q, K^T) -> Softmax -> MatMul(., V) with one head size for Q, K and
    V (what fused GPU kernels take), and global attention runs in query chunks whose scores stay
    within the budget: no [tokens x tokens] tensor of the whole attention exists."""
    model = onnx.load(str(exported.fp32))
    shapes = _shapes(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    attentions = global_chunks = 0
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        scores, mixes = producer[softmax.input[0]], consumers[softmax.output[0]]
        if scores.op_type != "MatMul":  # the router's and the class softmax
            continue
        assert [m.op_type for m in mixes] == ["MatMul"], softmax.name
        attentions += 1
        q, k_t, v = shapes[scores.input[0]], shapes[scores.input[1]], shapes[mixes[0].input[1]]
        assert q[-1] == k_t[-2] == v[-1], f"{softmax.name}: head sizes Q {q[-1]}, K {k_t[-2]}, V {v[-1]}"
        score_shape = shapes[softmax.output[0]]
        if score_shape[0] > 1:  # the encoder's (decoder attention between 25 class tokens and the grid is small)
            assert 4 * int(np.prod(score_shape)) <= CHUNK_BYTES, (softmax.name, score_shape)
        if score_shape[-1] == GLOBAL_TOKENS and score_shape[0] == 4:  # encoder global block
            assert score_shape[-2] == 4
            global_chunks += 1
    assert global_chunks == GLOBAL_TOKENS // 4
    assert attentions == 1 + global_chunks + 4  # windowed block, global chunks, decoder (depth 1)
    largest = export_module.largest_intermediates(model, count=1)[0]
    assert largest[2] == 4 * 25 * SIZE * SIZE and largest[1] == "Resize"  # the upsampled class logits


def test_metadata_lets_a_node_configure_itself(exported):
    meta = read_metadata(exported.fp32)
    reference = exported.torch.metadata
    for key in ("classes", "modalities", "trained", "model_hash"):
        assert meta[key] == reference[key], key
    assert meta["model_hash"] == file_sha256(exported.checkpoint)
    assert len(meta["classes"]) == 25 and meta["modalities"] == ["rgb", "depth", "event", "lidar"]
    assert meta["input_size"] == [SIZE, SIZE] and meta["precision"] == "fp32"
    assert meta["normalization"]["rgb"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert read_metadata(exported.fp16)["precision"] == "fp16"


def test_fp16_graph_carries_its_precision(exported):
    model = onnx.load(str(exported.fp16))
    onnx.checker.check_model(model, full_check=True)
    types = _elem_types(model)
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    kept, halved = set(), set()
    for node in model.graph.node:
        float_inputs = [types[i] for i in node.input if i and types.get(i) in floats]
        if node.op_type in FP32_OPS:
            assert float_inputs and set(float_inputs) == {TensorProto.FLOAT}, node.name
            kept.add(node.op_type)
        elif node.op_type in ("MatMul", "Conv", "Gemm", "Einsum"):
            assert set(float_inputs) == {TensorProto.FLOAT16}, node.name
            halved.add(node.op_type)
    assert {"LayerNormalization", "Softmax", "ReduceMean", "ArgMax"} <= kept
    assert {"MatMul", "Conv"} <= halved
    assert all(v.type.tensor_type.elem_type != TensorProto.FLOAT16 for v in list(model.graph.input) + list(model.graph.output))
    assert exported.fp16.stat().st_size < 0.6 * exported.fp32.stat().st_size


def test_fp16_graph_computes_nothing_fragile_in_fp16(exported):
    """LayerNorm2d is one LayerNormalization (kept fp32 whole), the decoder's sin/cos positional
    encoding is a constant, and an all-absent input gives zero router weights, not 0/0 = NaN
    (the graph cannot raise; the backends refuse such input before it gets there)."""
    import onnxruntime as ort

    model = onnx.load(str(exported.fp16))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Sin", "Cos", "Sqrt", "Pow"}, ops
    session = ort.InferenceSession(str(exported.fp16), providers=["CPUExecutionProvider"])
    images, _ = _inputs(0, [0, 0, 0, 0])
    labels, confidence, weights = session.run(list(ENGINE_OUTPUTS), {"images": images,
                                                                      "modality_mask": np.zeros((1, 4), np.float32)})
    assert np.array_equal(weights, np.zeros((1, 4), np.float32)) and np.isfinite(confidence).all()


def test_fp16_conversion_leaves_fixed_float_inputs_alone():
    """Resize's `scales` is always float32 whatever the data type; LayerNorm stays fp32."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.ones(4, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(4, np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("LayerNormalization", ["mm", "gamma", "beta"], ["ln"], axis=-1),
        helper.make_node("Resize", ["ln", "", "scales"], ["y"], mode="linear"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    half = convert_to_fp16(model)
    types = _elem_types(half)
    resize = next(n for n in half.graph.node if n.op_type == "Resize")
    norm = next(n for n in half.graph.node if n.op_type == "LayerNormalization")
    matmul = next(n for n in half.graph.node if n.op_type == "MatMul")
    assert types[resize.input[2]] == TensorProto.FLOAT and types[resize.input[0]] == TensorProto.FLOAT16
    assert [types[i] for i in norm.input] == [TensorProto.FLOAT] * 3
    assert [types[i] for i in matmul.input] == [TensorProto.FLOAT16] * 2
    assert types["y"] == TensorProto.FLOAT
    import onnxruntime as ort

    feed = {"x": rng.normal(size=(1, 2, 4, 4)).astype(np.float32)}
    full = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got, full, atol=2e-2)


# --------------------------------------------------------------------------- ONNX Runtime


def test_onnxruntime_cpu_matches_torch(exported):
    backend = OnnxRuntimeBackend(exported.fp32, "cpu")
    assert backend.name == "onnxruntime-cpu" and backend.providers == ["CPUExecutionProvider"]
    assert backend.precision == "fp32" and backend.input_shape == (1, 4, 3, SIZE, SIZE)
    assert backend.metadata["model_hash"] == exported.torch.metadata["model_hash"]
    backend.warmup(1)
    for seed, mask in CASES:
        images, modality_mask = _inputs(seed, mask)
        got, want = backend.infer(images, modality_mask), exported.torch.infer(images, modality_mask)
        assert (got["labels"] == want["labels"]).mean() >= 0.999
        np.testing.assert_allclose(got["confidence"], want["confidence"], atol=1e-4)
        np.testing.assert_allclose(got["router_weights"], want["router_weights"], atol=1e-5)
        assert np.all(got["router_weights"][modality_mask == 0] == 0)


def test_onnxruntime_runs_the_fp16_graph(exported):
    fp32 = OnnxRuntimeBackend(exported.fp32, "cpu")
    fp16 = OnnxRuntimeBackend(exported.fp16, "cpu")
    assert fp16.precision == "fp16"
    for seed, mask in CASES:
        images, modality_mask = _inputs(seed, mask)
        got, want = fp16.infer(images, modality_mask), fp32.infer(images, modality_mask)
        assert (got["labels"] == want["labels"]).mean() >= 0.99
        np.testing.assert_allclose(got["router_weights"], want["router_weights"], atol=2e-3)


@pytest.mark.parametrize("images, mask, message", [
    (np.zeros((1, 4, 3, SIZE, SIZE + 1), np.float32), np.ones((1, 4), np.float32), "shape"),
    (np.zeros((1, 4, 3, SIZE, SIZE), np.float64), np.ones((1, 4), np.float32), "float32"),
    (np.full((1, 4, 3, SIZE, SIZE), np.nan, np.float32), np.ones((1, 4), np.float32), "NaN"),
    (np.zeros((1, 4, 3, SIZE, SIZE), np.float32), np.zeros((1, 4), np.float32), "no modality"),
])
def test_onnxruntime_rejects_bad_input_clearly(exported, images, mask, message):
    with pytest.raises(InputError, match=message):
        OnnxRuntimeBackend(exported.fp32, "cpu").infer(images, mask)


def test_gpu_provider_request_fails_clearly_without_one(exported):
    if set(available_devices()) & {"cuda", "tensorrt"}:
        pytest.skip("this onnxruntime has a GPU provider")
    with pytest.raises(ProviderUnavailable, match="no GPU execution provider"):
        OnnxRuntimeBackend(exported.fp32, "gpu")


def test_broken_onnx_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07 this is not a protobuf")
    with pytest.raises(OnnxFileError, match="not a readable ONNX model"):
        OnnxRuntimeBackend(path, "cpu")


def test_onnx_without_the_contract_is_refused(tmp_path):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])
    path = tmp_path / "other.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    with pytest.raises(ValueError, match="engine inputs"):
        OnnxRuntimeBackend(path, "cpu")


# --------------------------------------------------------------------------- create_backend


def _no_gpu_stack():
    from sam_mmseg_ros.engine.tensorrt_backend import TensorRTUnavailable, probe

    try:
        probe()
    except TensorRTUnavailable:
        return not set(available_devices()) & {"cuda", "tensorrt"}
    return False


def test_auto_falls_back_to_onnxruntime_cpu_and_says_why(exported, tmp_path, caplog):
    if not _no_gpu_stack():
        pytest.skip("TensorRT or an ONNX Runtime GPU provider is present")
    with caplog.at_level(logging.INFO, logger="sam_mmseg_ros.engine"):
        backend = create_backend("auto", onnx_path=exported.fp32, cache_dir=tmp_path)
    assert backend.name == "onnxruntime-cpu"
    skipped = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(skipped) == 2
    assert skipped[0].startswith("backend tensorrt unavailable: ")
    assert skipped[1].startswith("backend onnxruntime-gpu unavailable: ") and "CUDA" in skipped[1]
    assert "inference backend: onnxruntime-cpu" in caplog.text and "better ones skipped" in caplog.text
    images, modality_mask = _inputs(0, [1, 1, 1, 1])
    assert (backend.infer(images, modality_mask)["labels"] == exported.torch.infer(images, modality_mask)["labels"]).mean() >= 0.999


def test_auto_with_cpu_device_skips_gpu_backends(exported, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="sam_mmseg_ros.engine"):
        backend = create_backend("auto", onnx_path=exported.fp32, device="cpu", cache_dir=tmp_path)
    assert backend.name == "onnxruntime-cpu"
    assert "device='cpu' was requested" in caplog.text


def test_torch_is_the_last_resort_and_needs_the_checkpoint(exported, tmp_path):
    backend = create_backend("torch", checkpoint=exported.checkpoint, cache_dir=tmp_path)
    assert backend.name == "torch" and backend.precision == "fp32"  # fp16 needs CUDA
    with pytest.raises(RuntimeError, match="torch needs the checkpoint"):
        create_backend("torch", onnx_path=exported.fp32, cache_dir=tmp_path)


def test_explicit_kinds_fail_with_their_own_error(exported, tmp_path):
    from sam_mmseg_ros.engine.tensorrt_backend import TensorRTUnavailable

    with pytest.raises(ValueError, match="backend kind"):
        create_backend("tflite", onnx_path=exported.fp32)
    with pytest.raises(ValueError, match="precision"):
        create_backend("auto", onnx_path=exported.fp32, precision="int8")
    with pytest.raises(ValueError, match=r"\(32, 32\) was requested"):
        create_backend("onnxruntime-cpu", onnx_path=exported.fp32, input_size=(32, 32), cache_dir=tmp_path)
    if _no_gpu_stack():
        with pytest.raises(TensorRTUnavailable):
            create_backend("tensorrt", onnx_path=exported.fp32, cache_dir=tmp_path)


def test_nothing_usable_lists_every_reason(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(BackendUnavailable) as info:
        create_backend("auto", engine_path=engine, device="cpu", cache_dir=tmp_path)
    text = str(info.value)
    assert all(kind in text for kind in ("tensorrt:", "onnxruntime-gpu:", "onnxruntime-cpu:", "torch:"))


def test_checkpoint_exports_once_into_the_cache(exported, tmp_path, monkeypatch):
    """Export is keyed by the checkpoint's content; fp16 is derived from the cached fp32 file."""
    calls = []

    def fake_export(checkpoint, output, *, precision, input_size=None, opset=None, tasks=None, domain=None):
        calls.append((checkpoint, precision))
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(exported.fp32, output)
        return output

    monkeypatch.setattr(export_module, "export_checkpoint", fake_export)
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(exported.checkpoint.read_bytes())
    first = cached_export(checkpoint, tmp_path / "cache", precision="fp32")
    assert cached_export(checkpoint, tmp_path / "cache", precision="fp32") == first
    half = cached_export(checkpoint, tmp_path / "cache", precision="fp16")
    assert len(calls) == 1 and read_metadata(half)["precision"] == "fp16"
    checkpoint.write_bytes(checkpoint.read_bytes() + b"retrained")
    assert cached_export(checkpoint, tmp_path / "cache", precision="fp32") != first
    assert len(calls) == 2
    backend = create_backend("onnxruntime-cpu", checkpoint=checkpoint, cache_dir=tmp_path / "cache")
    assert len(calls) == 2 and backend.precision == "fp32"


@pytest.mark.gpu
def test_onnxruntime_cuda_fp16_matches_torch(exported):
    if "cuda" not in available_devices():
        pytest.skip("this onnxruntime has no CUDA execution provider")
    backend = OnnxRuntimeBackend(exported.fp16, "cuda")
    assert backend.providers[0] == "CUDAExecutionProvider" and backend.name == "onnxruntime-cuda"
    for seed, mask in CASES:
        images, modality_mask = _inputs(seed, mask)
        got, want = backend.infer(images, modality_mask), exported.torch.infer(images, modality_mask)
        assert (got["labels"] == want["labels"]).mean() >= 0.99
