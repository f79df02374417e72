"""Our SAM image encoder against Meta's reference, and the MoE-LoRA experts inside it."""

import functools

import pytest
import torch
from meta_reference import meta_modeling

from sam_mmseg_ros.model import image_encoder
from sam_mmseg_ros.model.checkpoint import load_sam_weights
from sam_mmseg_ros.model.config import MODEL_CONFIGS
from sam_mmseg_ros.model.image_encoder import (
    ImageEncoderViT,
    get_rel_pos,
    rel_pos_attention,
    resize_pos_embed,
    resize_rel_pos,
)
from sam_mmseg_ros.model.sam_moe import MoELoRASAM

torch.set_num_threads(1)

ENCODER = dict(patch_size=16, embed_dim=64, depth=3, num_heads=4, out_chans=32, window_size=3,
               global_attn_indexes=(1,))
"""Window 3 on a 4x4 / 8x8 token grid: exercises window padding, one global block."""


def _model_config(img_size):
    return MODEL_CONFIGS["tiny"].with_overrides(
        img_size=img_size, aux_block_indexes=(0, 2), lora_rank=4, lora_alpha=4.0, out_chans=32,
        decoder_heads=2, decoder_mlp_dim=64, num_classes=5,
        **{k: v for k, v in ENCODER.items() if k != "out_chans"},
    )


def _random_reference(img_size, seed=0):
    reference = meta_modeling("image_encoder").ImageEncoderViT(
        img_size=img_size, use_rel_pos=True, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), **ENCODER
    ).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in reference.parameters():  # SAM zero-inits rel_pos/pos_embed: randomize everything
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return reference


@pytest.mark.parametrize("img_size", [64, 128])
def test_encoder_matches_meta_reference_loaded_from_official_layout(img_size, tmp_path):
    reference = _random_reference(img_size)
    path = tmp_path / "sam_official_layout.pth"
    torch.save({f"image_encoder.{k}": v for k, v in reference.state_dict().items()}, path)
    model = MoELoRASAM(_model_config(img_size)).eval()
    load_sam_weights(model, path)

    images = torch.randn(2, 4, 3, img_size, img_size)  # B=2, M=4: experts are zero, so all equal SAM
    with torch.no_grad():
        expected = reference(images.flatten(0, 1))
        actual, features = model.image_encoder(images.flatten(0, 1))
    assert actual.shape == expected.shape == (8, 32, img_size // 16, img_size // 16)
    assert (actual - expected).abs().max().item() <= 1e-5
    assert [f.shape for f in features] == [(8, img_size // 16, img_size // 16, 64)] * 2


def test_sam_weights_made_for_another_size_are_resized(tmp_path):
    reference = _random_reference(64)
    path = tmp_path / "sam_64.pth"
    torch.save({f"image_encoder.{k}": v for k, v in reference.state_dict().items()}, path)
    model = MoELoRASAM(_model_config(128)).eval()
    load_sam_weights(model, path)
    encoder = model.image_encoder
    assert torch.equal(encoder.pos_embed, resize_pos_embed(reference.pos_embed, (8, 8)))
    global_block = encoder.blocks[1].attn
    assert global_block.rel_pos_h.shape == (15, 16)
    assert torch.equal(global_block.rel_pos_h, resize_rel_pos(reference.blocks[1].attn.rel_pos_h, 15))
    # Windowed blocks do not depend on the image size: copied as they are.
    assert torch.equal(encoder.blocks[0].attn.rel_pos_w, reference.blocks[0].attn.rel_pos_w)


def _lora_encoder(num_experts):
    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=64, num_experts=num_experts, lora_rank=4, lora_alpha=8.0, **ENCODER).eval()
    with torch.no_grad():  # make SAM's weights non-trivial (rel_pos / pos_embed are zero-init)
        for name, p in encoder.named_parameters():
            if "lora" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    return encoder


def test_zero_lora_experts_leave_frozen_sam_exactly_unchanged():
    plain = _lora_encoder(0)
    with_experts = _lora_encoder(4)
    missing, unexpected = with_experts.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all("lora_" in k for k in missing) and len(missing) == 3 * 4
    images = torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(with_experts(images)[0], plain(images)[0])


def test_sample_i_uses_expert_i_mod_m_like_a_per_modality_loop():
    encoder = _lora_encoder(4)
    with torch.no_grad():
        for p in encoder.lora_parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    images = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        batched, _ = encoder(images.flatten(0, 1))
        batched = batched.unflatten(0, (2, 4))
        for m in range(4):
            # The same image through a single-expert copy holding only expert m.
            single = ImageEncoderViT(img_size=64, num_experts=1, lora_rank=4, lora_alpha=8.0, **ENCODER).eval()
            state = {k: (v[m:m + 1] if "lora_" in k else v) for k, v in encoder.state_dict().items()}
            single.load_state_dict(state)
            looped, _ = single(images[:, m])
            assert (batched[:, m] - looped).abs().max().item() < 1e-5
    # Different experts really give different features.
    same_image = images[:, :1].expand(-1, 4, -1, -1, -1).flatten(0, 1)
    with torch.no_grad():
        out = encoder(same_image)[0].unflatten(0, (2, 4))
    assert (out[:, 0] - out[:, 1]).abs().max().item() > 1e-3


@pytest.mark.parametrize("budget_bytes", [None, 4 * 24 * 10 * 48])
def test_fused_attention_equals_the_explicit_form_used_for_export(monkeypatch, budget_bytes):
    """Whole and in query chunks (the second budget gives chunks of 10 of the 48 query rows)."""
    if budget_bytes is not None:
        monkeypatch.setattr(image_encoder, "ATTENTION_CHUNK_BYTES", budget_bytes)
        assert image_encoder.query_chunk_rows(6 * 4, 48) == 10
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 4, 8 * 6, 16, generator=generator) for _ in range(3))
    rel_h, rel_w = torch.randn(15, 16, generator=generator), torch.randn(11, 16, generator=generator)
    whole = ((q * 0.25) @ k.transpose(-2, -1) + _explicit_bias(q, rel_h, rel_w, (8, 6))).softmax(-1) @ v
    fused = rel_pos_attention(q, k, v, rel_h, rel_w, (8, 6), 0.25, fused=True)
    explicit = rel_pos_attention(q, k, v, rel_h, rel_w, (8, 6), 0.25, fused=False)
    assert (fused - whole).abs().max().item() <= 1e-5
    assert (explicit - whole).abs().max().item() <= 1e-5


def _explicit_bias(q, rel_pos_h, rel_pos_w, size):
    """SAM's add_decomposed_rel_pos bias as one [B, heads, N, N] tensor (the reference form)."""
    batch, heads, tokens, dim = q.shape
    height, width = size
    r_q = q.reshape(batch * heads, height, width, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(height, height, rel_pos_h))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(width, width, rel_pos_w))
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(batch, heads, tokens, tokens)


def test_query_chunks_keep_scores_within_the_budget():
    # vit_b at 1024x1024, 4 modalities: 48 (image, head) pairs over 4096 tokens.
    rows = image_encoder.query_chunk_rows(48, 4096)
    assert rows % 64 == 0 and 4 * 48 * rows * 4096 <= image_encoder.ATTENTION_CHUNK_BYTES
    assert image_encoder.query_chunk_rows(48, 256) == 256  # small enough: one chunk
    assert image_encoder.query_chunk_rows(10**6, 4096) == 1  # never zero rows

