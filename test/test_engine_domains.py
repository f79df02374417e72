"""A domain-adapter (MoDA) model through the engines: every adapter in one static ONNX graph, the
per-frame choice made inside it (no control flow), ONNX Runtime agreeing with torch on the choice
and on the labels, and a pinned domain exported as part of the graph."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from sam_mmseg_ros.engine import create_backend
from sam_mmseg_ros.engine.export import export_checkpoint, read_metadata
from sam_mmseg_ros.engine.onnxruntime_backend import OnnxRuntimeBackend
from sam_mmseg_ros.engine.torch_backend import TorchBackend
from sam_mmseg_ros.model import build_model
from sam_mmseg_ros.model.checkpoint import save_checkpoint

SIZE = 64
DOMAINS = ("sun", "fog", "night")


pytestmark = pytest.mark.slow  # two exports: ~40 s on the 2-core machine when idle


def _inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.normal(rng.uniform(-1, 1), rng.uniform(0.2, 3.0), (1, 4, 3, SIZE, SIZE)).astype(np.float32)
    return images, np.ones((1, 4), np.float32)


@pytest.fixture(scope="module")
def moda(tmp_path_factory):
    """A small moda model with distinct adapters and a selector whose classes are the queries of
    three different inputs (so inputs 0, 1, 2 choose different adapters), saved and exported."""
    folder = tmp_path_factory.mktemp("moda")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("tiny", img_size=SIZE, depth=2, global_attn_indexes=(1,), aux_block_indexes=(0, 1),
                            decoder_depth=1, adapters="moda", domains=DOMAINS, domain_split=1).eval()
        with torch.no_grad():
            for adapter in model.domains.adapters:
                for name, p in adapter.named_parameters():
                    if name.startswith(("b_", "decoder_b")):  # every update non-zero, the decoder's too
                        p.normal_(0.0, 0.3)
            features = []
            for seed in range(len(DOMAINS)):
                with model.domains.frames(1) as state:
                    model.image_encoder(torch.from_numpy(_inputs(seed)[0]).flatten(0, 1))
                features.append(state.query[0])
            features = torch.stack(features)
            mean = features.mean(dim=0)
            weight = (features - mean) / (features - mean).norm(dim=1, keepdim=True) * 20
            model.domains.selector.classifier.weight.copy_(weight)  # logit i: how far along input i's
            model.domains.selector.classifier.bias.copy_(-weight @ mean)  # direction from the mean
    checkpoint = save_checkpoint(folder / "moda.pt", model, trained=True)
    return SimpleNamespace(checkpoint=checkpoint, folder=folder, onnx=export_checkpoint(checkpoint, folder / "moda.onnx"))


def test_every_adapter_is_in_one_static_graph_that_chooses_inside(moda):
    graph = onnx.load(str(moda.onnx))
    assert [o.name for o in graph.graph.output] == ["labels", "confidence", "router_weights", "domain",
                                                   "domain_confidence"]
    types = {o.name: o.type.tensor_type for o in graph.graph.output}
    assert types["domain"].elem_type == onnx.TensorProto.INT32 and [d.dim_value for d in types["domain"].shape.dim] == [1]
    assert types["domain_confidence"].elem_type == onnx.TensorProto.FLOAT
    ops = {node.op_type for node in graph.graph.node}
    assert not ops & {"If", "Loop", "Scan"} and "ArgMax" in ops  # selection is data flow, not control flow
    metadata = read_metadata(moda.onnx)
    assert metadata["domains"] == list(DOMAINS) and metadata["domain_pin"] is None


def test_onnxruntime_selects_like_torch(moda):
    reference = TorchBackend.from_checkpoint(moda.checkpoint)
    ort = OnnxRuntimeBackend(moda.onnx)
    chosen = set()
    for seed in range(6):
        images, mask = _inputs(seed)
        got, want = ort.infer(images, mask), reference.infer(images, mask)
        assert got["domain"].tolist() == want["domain"].tolist()
        np.testing.assert_allclose(got["domain_confidence"], want["domain_confidence"], atol=1e-4)
        assert (got["labels"] == want["labels"]).mean() >= 0.999
        np.testing.assert_allclose(got["confidence"], want["confidence"], atol=1e-4)
        chosen.add(int(got["domain"][0]))
    assert len(chosen) >= 2, "the inputs should make the selector choose different adapters"


def test_a_pinned_export_uses_its_domain_for_every_frame(moda, tmp_path):
    ort = create_backend("onnxruntime-cpu", checkpoint=moda.checkpoint, precision="fp32", domain="night",
                         cache_dir=tmp_path)
    assert ort.metadata["domain_pin"] == "night" and "domain-night" in ort.onnx_path.name
    assert read_metadata(ort.onnx_path)["domain_pin"] == "night"
    reference = TorchBackend.from_checkpoint(moda.checkpoint, domain="night")
    for seed in range(3):
        images, mask = _inputs(seed)
        got, want = ort.infer(images, mask), reference.infer(images, mask)
        assert got["domain"].tolist() == want["domain"].tolist() == [DOMAINS.index("night")]
        np.testing.assert_allclose(got["domain_confidence"], want["domain_confidence"], atol=1e-4)
        assert (got["labels"] == want["labels"]).mean() >= 0.999


def test_a_backend_refuses_a_pin_its_model_or_file_cannot_give(moda, tmp_path):
    with pytest.raises(ValueError, match="exported with domain None, 'night' was requested"):
        create_backend("onnxruntime-cpu", onnx_path=moda.onnx, precision="fp32", domain="night")
    with pytest.raises(ValueError, match="unknown domain 'snow'"):
        create_backend("torch", checkpoint=moda.checkpoint, domain="snow")
    plain = save_checkpoint(tmp_path / "plain.pt", build_model("tiny", img_size=SIZE))
    with pytest.raises(ValueError, match="has no domain adapters"):
        create_backend("torch", checkpoint=plain, domain="night")
