"""TorchBackend against the engine contract (DESIGN.md §3) and the shared input check."""

import logging

import numpy as np
import pytest
import torch

from sam_mmseg_ros.contracts import ENGINE_OUTPUTS, MODALITIES, InputError
from sam_mmseg_ros.engine.base import Backend, check_outputs, validate_inputs
from sam_mmseg_ros.engine.torch_backend import TorchBackend
from sam_mmseg_ros.model import build_model
from sam_mmseg_ros.model.checkpoint import save_checkpoint

torch.set_num_threads(1)

MICRO = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=2,
             aux_block_indexes=(0, 1), out_chans=32, decoder_heads=2, decoder_mlp_dim=64, lora_rank=2)


@pytest.fixture(scope="module")
def backend():
    torch.manual_seed(0)
    return TorchBackend(build_model("tiny", **MICRO))


def _inputs(mask=(1, 0, 1, 1)):
    images = np.random.default_rng(0).standard_normal((1, 4, 3, 64, 64)).astype(np.float32)
    modality_mask = np.array([mask], np.float32)
    images[modality_mask == 0] = 0
    return images, modality_mask


def test_infer_follows_the_contract(backend):
    assert isinstance(backend, Backend)
    assert backend.name == "torch" and backend.precision == "fp32"
    assert backend.input_shape == (1, 4, 3, 64, 64)
    meta = backend.metadata
    assert meta["modalities"] == list(MODALITIES) and meta["input_size"] == [64, 64]
    assert len(meta["classes"]) == 25 and meta["trained"] is True and len(meta["model_hash"]) == 64
    backend.warmup(1)
    out = backend.infer(*_inputs())
    assert tuple(out) == ENGINE_OUTPUTS
    assert out["labels"].dtype == np.int32 and out["labels"].shape == (1, 64, 64)
    assert out["confidence"].dtype == np.float32 and out["confidence"].shape == (1, 64, 64)
    assert out["router_weights"].dtype == np.float32 and out["router_weights"].shape == (1, 4)
    assert out["router_weights"][0, 1] == 0 and np.isclose(out["router_weights"].sum(), 1.0)
    assert 0 <= out["labels"].min() and out["labels"].max() < 25


@pytest.mark.parametrize(
    ("images", "mask", "message"),
    [
        (np.zeros((1, 4, 3, 32, 32), np.float32), np.ones((1, 4), np.float32), "shape"),
        (np.zeros((1, 4, 3, 64, 64), np.float64), np.ones((1, 4), np.float32), "float32"),
        (np.zeros((1, 4, 3, 64, 64), np.float32), np.ones((1, 3), np.float32), "modality_mask has shape"),
        (np.zeros((1, 4, 3, 64, 64), np.float32), np.full((1, 4), 0.5, np.float32), "only 0 and 1"),
        (np.zeros((1, 4, 3, 64, 64), np.float32), np.zeros((1, 4), np.float32), "no modality is present"),
    ],
)
def test_bad_inputs_raise_input_error(backend, images, mask, message):
    with pytest.raises(InputError, match=message):
        backend.infer(images, mask)
    with pytest.raises(InputError, match=message):
        validate_inputs(images, mask, (1, 4, 3, 64, 64))


@pytest.mark.parametrize("where", ["present", "absent"])
def test_non_finite_pixels_are_found_from_the_outputs(backend, where):
    """Not scanned before inference (50 MB at 1024x1024), but never passed on: NaN in a present
    modality or in an absent slot (which should hold zeros) spoils the outputs and is named."""
    images, mask = _inputs()
    images[0, 1 if where == "absent" else 0, 0, 5, 7] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        backend.infer(images, mask)


def test_non_finite_outputs_from_finite_input_are_an_engine_error():
    outputs = {"labels": np.zeros((1, 8, 8), np.int32), "confidence": np.full((1, 8, 8), np.nan, np.float32),
               "router_weights": np.zeros((1, 4), np.float32)}
    with pytest.raises(RuntimeError, match="NaN/Inf from finite input"):
        check_outputs(outputs, (1, 4, 3, 8, 8), np.zeros((1, 4, 3, 8, 8), np.float32))


def test_fp16_needs_cuda():
    with pytest.raises(ValueError, match="fp16"):
        TorchBackend(build_model("tiny", **MICRO), device="cpu", precision="fp16")


def test_from_checkpoint_loads_and_hashes_the_file(tmp_path, backend):
    path = tmp_path / "model.pt"
    save_checkpoint(path, backend.model, trained=True)
    loaded = TorchBackend.from_checkpoint(path)
    assert loaded.metadata["trained"] is True and loaded.metadata["checkpoint"] == str(path)
    images, mask = _inputs()
    assert np.array_equal(loaded.infer(images, mask)["labels"], backend.infer(images, mask)["labels"])


def test_without_checkpoint_a_deterministic_untrained_tiny_model_is_flagged(monkeypatch, caplog):
    import sam_mmseg_ros.model.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "default_checkpoint_path", lambda: None)
    with caplog.at_level(logging.WARNING):
        first = TorchBackend.from_checkpoint(None)
    assert first.metadata["trained"] is False and "untrained" in caplog.text
    assert first.model.config.name == "tiny" and first.input_shape == (1, 4, 3, 256, 256)
    assert TorchBackend.from_checkpoint(None).metadata["model_hash"] == first.metadata["model_hash"]


@pytest.mark.gpu
def test_cuda_fp16_autocast_agrees_with_fp32():
    """The shipped, trained model (decisive outputs) through the node's pipeline on synthetic frames."""
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA (a TensorRT-only GPU machine)")
    from sam_mmseg_ros.engine.verify import synthetic_frames, verify_backend

    reference = TorchBackend.from_checkpoint(None, "cpu")
    half = TorchBackend.from_checkpoint(None, "cuda", "fp16")
    report = verify_backend(half, reference, synthetic_frames(3, (240, 320)), latency_runs=2)
    assert report.label_agreement >= 0.99 and report.router_weight_abs_diff_max <= 1e-2, report.to_markdown()
