"""MoELoRASAM end to end: config registry, forward contract, frozen parts, absent modalities
(every composition), and the decoder's compatibility with SAM's mask decoder."""


import pytest
import torch
from meta_reference import meta_modeling

from sam_mmseg_ros.model import MODEL_CONFIGS, ModelConfig, build_model
from sam_mmseg_ros.model.heads import PositionEmbeddingRandom, SemanticMaskDecoder, TwoWayTransformer
from sam_mmseg_ros.model.sam_moe import MoELoRASAM

torch.set_num_threads(1)

MICRO = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=2,
             aux_block_indexes=(0, 1), out_chans=32, decoder_heads=2, decoder_mlp_dim=64, lora_rank=2,
             num_classes=5)
MASK = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])


SAM2_MICRO = dict(img_size=64, depth=4, stages=(1, 1, 1, 1), global_attn_indexes=(0,), out_chans=32,
                  decoder_heads=2, decoder_mlp_dim=64, lora_rank=2, num_classes=5, memory_layers=1, memory_dim=16,
                  memory_mlp_dim=32)
"""The SAM2 compositions (test_model_memorysam.py) at the same scale, for the tests all configs share."""
ALL_CONFIGS = ["tiny", "tiny_hiera", "tiny_memorysam"]


def _micro(name="tiny", **overrides):
    torch.manual_seed(0)
    model = build_model(name, **{**(MICRO if name == "tiny" else SAM2_MICRO), **overrides}).eval()
    if name != "tiny":
        with torch.no_grad():  # acting experts (the ViT tests exercise them elsewhere)
            for p in model.image_encoder.lora_parameters():
                p.normal_(0.0, 0.1)
    return model


def test_registry_configs_and_overrides():
    assert {"tiny", "vit_b", "vit_l", "vit_h"} <= set(MODEL_CONFIGS)
    vit_b = MODEL_CONFIGS["vit_b"]
    assert (vit_b.embed_dim, vit_b.depth, vit_b.num_heads, vit_b.global_attn_indexes) == (768, 12, 12, (2, 5, 8, 11))
    assert MODEL_CONFIGS["vit_h"].global_attn_indexes == (7, 15, 23, 31)
    config = build_model("tiny", img_size=128).config
    assert config.img_size == 128 and config.name == "tiny"
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        MODEL_CONFIGS["tiny"].with_overrides(img_size=100)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vit_x")
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**config.to_dict(), "colour": 3})


def test_forward_follows_the_engine_contract():
    model = _micro()
    images = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        out = model(images, MASK)
        logits = model.forward_logits(images, MASK)
    assert out["labels"].dtype == torch.int32 and out["labels"].shape == (2, 64, 64)
    assert out["confidence"].dtype == torch.float32 and out["confidence"].shape == (2, 64, 64)
    assert out["router_weights"].dtype == torch.float32 and out["router_weights"].shape == (2, 4)
    assert logits["logits"].shape == logits["aux_logits"].shape == (2, 5, 64, 64)
    assert torch.equal(out["labels"], logits["logits"].argmax(dim=1).int())
    assert torch.allclose(out["confidence"], logits["logits"].softmax(dim=1).amax(dim=1))
    assert torch.all(out["confidence"] >= 1 / 5) and torch.all(out["confidence"] <= 1)
    assert torch.all(out["router_weights"][MASK == 0] == 0)
    assert torch.allclose(out["router_weights"].sum(dim=1), torch.ones(2))


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_absent_slot_content_never_reaches_the_output(name):
    model = _micro(name)
    images = torch.randn(2, 4, 3, 64, 64)
    garbage = images.clone()
    garbage[MASK == 0] = torch.randn_like(garbage[MASK == 0]) * 100
    with torch.no_grad():
        a, b = model.forward_logits(images, MASK), model.forward_logits(garbage, MASK)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_all_modalities_absent_is_a_clear_error(name):
    with pytest.raises(ValueError, match="every modality is absent"):
        _micro(name)(torch.zeros(2, 4, 3, 64, 64), torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))


def test_only_experts_router_and_heads_train_by_default():
    model = _micro()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for name in trainable:
        assert name.startswith(("router.", "decoder.", "aux_head.")) or ".lora_" in name, name
    assert any(".lora_b_v" in n for n in trainable) and "decoder.class_tokens.weight" in trainable
    counts = model.parameter_counts()
    assert counts == (sum(p.numel() for n, p in model.named_parameters() if n in trainable),
                      sum(p.numel() for p in model.parameters()))
    out = model.train().forward_logits(torch.randn(1, 4, 3, 64, 64), MASK[:1])
    (out["logits"].mean() + out["aux_logits"].mean()).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name

    model.set_encoder_trainable(True)
    assert all(p.requires_grad for p in model.image_encoder.parameters())
    model.set_encoder_trainable(False)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


def test_other_input_size_than_built_for_runs():
    model = _micro()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 3, 96, 96), MASK[:1])
    assert out["labels"].shape == (1, 96, 96)


def test_big_configs_build_on_the_meta_device():
    with torch.device("meta"):
        trainable, total = build_model("vit_b", img_size=512).parameter_counts()
    assert 85e6 < total - trainable < 100e6  # SAM ViT-B image encoder is ~89.7 M parameters


def test_decoder_names_and_shapes_match_the_official_sam_layout():
    transformer_module = meta_modeling("transformer")
    decoder_module = meta_modeling("mask_decoder")
    prompt_module = meta_modeling("prompt_encoder")
    torch.manual_seed(0)
    official = {}
    sam_decoder = decoder_module.MaskDecoder(
        transformer_dim=64, transformer=transformer_module.TwoWayTransformer(depth=2, embedding_dim=64, num_heads=8,
                                                                             mlp_dim=128))
    official.update({f"mask_decoder.{k}": v for k, v in sam_decoder.state_dict().items()})
    prompt = prompt_module.PromptEncoder(embed_dim=64, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                         mask_in_chans=16)
    official.update({f"prompt_encoder.{k}": v for k, v in prompt.state_dict().items()})
    model = _micro(out_chans=64, decoder_heads=8, decoder_mlp_dim=128)
    own = model.state_dict()
    mapped = 0
    for key, value in official.items():
        for prefix, target in MoELoRASAM.SAM_KEY_MAP.items():
            if key.startswith(prefix):
                assert own[target + key[len(prefix):]].shape == value.shape, key
                mapped += 1
    assert mapped == len([k for k in own if k.startswith("decoder.")]) - 1  # all but class_tokens


def test_two_way_transformer_and_pe_match_meta():
    reference_module = meta_modeling("transformer")
    torch.manual_seed(0)
    reference = reference_module.TwoWayTransformer(depth=2, embedding_dim=32, num_heads=4, mlp_dim=64).eval()
    ours = TwoWayTransformer(2, 32, 4, 64).eval()
    ours.load_state_dict(reference.state_dict())
    image, pe, tokens = torch.randn(2, 32, 4, 4), torch.randn(2, 32, 4, 4), torch.randn(2, 5, 32)
    with torch.no_grad():
        for a, b in zip(reference(image, pe, tokens), ours(image, pe, tokens), strict=True):
            assert (a - b).abs().max().item() < 1e-5
    reference_pe = meta_modeling("prompt_encoder").PositionEmbeddingRandom(16)
    ours_pe = PositionEmbeddingRandom(16)
    ours_pe.load_state_dict(reference_pe.state_dict())
    assert torch.allclose(ours_pe((4, 6)), reference_pe((4, 6)))
    decoder = SemanticMaskDecoder(32, num_classes=7, num_heads=4, mlp_dim=64)
    assert decoder(torch.randn(2, 32, 4, 4), (64, 64)).shape == (2, 7, 64, 64)


def test_positional_encoding_is_kept_per_grid_and_forgotten_with_new_weights():
    """Computed once per grid in fp32 (an export holds it as a constant), never stale."""
    reference_pe = meta_modeling("prompt_encoder").PositionEmbeddingRandom(16)
    ours = PositionEmbeddingRandom(16)
    first = ours((4, 6))
    assert ours((4, 6)) is first and "dense_pe" not in ours.state_dict()
    ours.load_state_dict(reference_pe.state_dict())
    assert torch.allclose(ours((4, 6)), reference_pe((4, 6))) and not torch.allclose(ours((4, 6)), first)
    assert torch.allclose(ours((3, 3)), reference_pe((3, 3)))
    model = _micro()
    model.prepare_export((128, 128))
    assert model.decoder.pe_layer.dense_pe.shape == (32, 8, 8)  # out_chans 32, 128 px / patch 16
    multi_task = build_model("tiny_talora", img_size=64, depth=2, global_attn_indexes=(1,), aux_block_indexes=(0, 1))
    multi_task.prepare_export((64, 64))
    layers = [m for m in multi_task.modules() if isinstance(m, PositionEmbeddingRandom)]
    assert len(layers) > 1 and all(layer.dense_pe.shape[1:] == (4, 4) for layer in layers)  # depth decoder too
