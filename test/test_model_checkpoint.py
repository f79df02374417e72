"""Our checkpoints and official SAM weights: round trip, and clear errors for bad files."""

import pytest
import torch

from sam_mmseg_ros.model import build_model
from sam_mmseg_ros.model.checkpoint import CheckpointError, load_checkpoint, load_sam_weights, save_checkpoint
from sam_mmseg_ros.model.sam_moe import MoELoRASAM

torch.set_num_threads(1)

MICRO = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=2,
             aux_block_indexes=(0, 1), out_chans=32, decoder_heads=2, decoder_mlp_dim=64, lora_rank=2,
             num_classes=5)


def _micro():
    model = build_model("tiny", **MICRO).eval()
    with torch.no_grad():
        for p in model.image_encoder.lora_parameters():
            p.normal_()  # non-zero experts, so the round trip covers them
    return model


def test_round_trip_restores_config_weights_and_extras(tmp_path):
    model = _micro()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, trained=True, step=12, metrics={"miou": 0.5})
    loaded, extra = load_checkpoint(path)
    assert loaded.config == model.config
    assert extra["trained"] is True and extra["step"] == 12 and extra["metrics"] == {"miou": 0.5}
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in loaded.state_dict().items())
    images, mask = torch.randn(1, 4, 3, 64, 64), torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    with torch.no_grad():
        assert torch.equal(model(images, mask)["labels"], loaded(images, mask)["labels"])
    # Only plain types inside: loadable with weights_only, as untrusted files must be.
    assert isinstance(torch.load(path, weights_only=True)["config"], dict)


def test_checkpoint_missing_weights_names_them(tmp_path):
    model = _micro()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model)
    payload = torch.load(path, weights_only=True)
    for key in [k for k in payload["state_dict"] if k.startswith("decoder.transformer.")]:
        del payload["state_dict"][key]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"decoder\.transformer\.") as error:
        load_checkpoint(path)
    assert "missing" in str(error.value)


def test_truncated_checkpoint_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _micro())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="image_encoder"):
        load_sam_weights(_micro(), path)


def test_sam_weights_with_mismatched_shapes_name_the_keys(tmp_path):
    model = _micro()
    state = {f"image_encoder.{k}": v for k, v in model.image_encoder.state_dict().items() if "lora_" not in k}
    state["image_encoder.blocks.0.mlp.lin1.weight"] = torch.zeros(7, 7)
    del state["image_encoder.neck.0.weight"]
    path = tmp_path / "sam.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_sam_weights(model, path)
    assert "blocks.0.mlp.lin1.weight" in str(error.value) and "neck.0.weight" in str(error.value)


def test_sam_decoder_parts_load_when_they_fit_and_are_skipped_otherwise():
    torch.manual_seed(1)
    source = build_model("tiny", **{**MICRO, "out_chans": 64, "decoder_heads": 8, "decoder_mlp_dim": 128})
    official = {}
    for key, value in source.state_dict().items():
        for sam_prefix, prefix in MoELoRASAM.SAM_KEY_MAP.items():
            if key.startswith(prefix) and ".lora_" not in key:
                official[sam_prefix + key[len(prefix):]] = value
    torch.manual_seed(2)
    target = build_model("tiny", **{**MICRO, "out_chans": 64, "decoder_heads": 8, "decoder_mlp_dim": 128})
    loaded = load_sam_weights(target, official)
    assert "decoder.transformer.layers.0.self_attn.q_proj.weight" in loaded
    assert torch.equal(target.decoder.output_hypernetwork.layers[0].weight,
                       source.decoder.output_hypernetwork.layers[0].weight)
    assert not torch.equal(target.decoder.class_tokens.weight, source.decoder.class_tokens.weight)

    other_decoder = build_model("tiny", **{**MICRO, "out_chans": 64, "decoder_heads": 8, "decoder_mlp_dim": 96})
    before = other_decoder.decoder.state_dict()
    loaded = load_sam_weights(other_decoder, official)  # SAM's decoder does not fit: encoder only
    assert loaded and all(k.startswith("image_encoder.") for k in loaded)
    assert torch.equal(other_decoder.image_encoder.neck[0].weight, source.image_encoder.neck[0].weight)
    assert all(torch.equal(v, before[k]) for k, v in other_decoder.decoder.state_dict().items())
