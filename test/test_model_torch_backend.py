"""TorchBackend against the engine contract (DESIGN.md §3) and the shared input check."""

import logging

import numpy as np
import pytest
import torch

from sam_mmseg_ros.contracts import ENGINE_OUTPUTS, MODALITIES, InputError
from sam_mmseg_ros.engine.base import Backend, validate_inputs
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
        (np.full((1, 4, 3, 64, 64), np.nan, np.float32), np.ones((1, 4), np.float32), "NaN"),
    ],
)
def test_bad_inputs_raise_input_error(backend, images, mask, message):
    with pytest.raises(InputError, match=message):
        backend.infer(images, mask)
    with pytest.raises(InputError, match=message):
        validate_inputs(images, mask, (1, 4, 3, 64, 64))


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
def test_cuda_fp16_autocast_agrees_with_fp32(backend):
    fp16 = TorchBackend(build_model("tiny", **MICRO).cpu(), device="cuda", precision="fp16")
    fp16.model.load_state_dict(backend.model.state_dict())
    images, mask = _inputs()
    reference, half = backend.infer(images, mask), fp16.infer(images, mask)
    assert half["labels"].dtype == np.int32 and half["router_weights"].dtype == np.float32
    assert (half["labels"] == reference["labels"]).mean() > 0.98
    assert np.allclose(half["router_weights"], reference["router_weights"], atol=1e-2)
