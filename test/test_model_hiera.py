"""SAM2 parts against Meta's sam2 package: Hiera trunk, FPN neck, high-resolution mask decoder,
memory attention and memory encoder; MoE-LoRA experts inside Hiera; official-layout SAM2
checkpoints into every SAM2 config."""

import pytest
import torch
from sam2_reference import meta_sam2_model, randomize

from sam_mmseg_ros.model import MODEL_CONFIGS, build_model
from sam_mmseg_ros.model.checkpoint import CheckpointError, load_sam_weights
from sam_mmseg_ros.model.config import config_from_untrusted
from sam_mmseg_ros.model.hiera import Hiera
from sam_mmseg_ros.model.position_encoding import PositionEmbeddingSine
from sam_mmseg_ros.model.sam2_weights import load_sam2_weights, plan_sam2_state

torch.set_num_threads(1)

MICRO = dict(img_size=64, embed_dim=16, num_heads=1, depth=7, stages=(1, 2, 3, 1), global_attn_indexes=(4,),
             window_spec=(4, 2, 4, 3), window_pos_embed_bkg=(5, 5), out_chans=32, decoder_heads=8,
             decoder_mlp_dim=2048, lora_rank=2, num_classes=5, memory_layers=2, memory_dim=16, memory_mlp_dim=64)
"""Windows that need padding at both sizes tested (64: stage 4 is 2x2 in windows of 3; 96: stage 3
is 6x6 in windows of 4), a global block, and stage changes that double width and heads. The
decoder has SAM2's fixed depth, heads and MLP width (SAM2Base hard-codes them)."""
TOLERANCE = 1e-4


def _config(name="tiny_hiera", img_size=64, **overrides):
    return MODEL_CONFIGS[name].with_overrides(**{**MICRO, "img_size": img_size, **overrides})


def _official(config, version="2.1", object_pointers=True, seed=0):
    return randomize(meta_sam2_model(config, version, object_pointers), seed)


def _loaded(name, official, img_size=64, **overrides):
    model = build_model(_config(name, img_size, **overrides)).eval()
    load_sam2_weights(model, {"model": official.state_dict()})
    return model


@pytest.mark.parametrize("img_size", [64, 96])
def test_trunk_neck_and_positions_match_meta_loaded_from_an_official_file(img_size, tmp_path):
    official = _official(_config(img_size=img_size))
    path = tmp_path / "sam2.1_hiera_micro.pt"
    torch.save({"model": official.state_dict()}, path)  # as Meta publishes them
    model = build_model(_config(img_size=img_size)).eval()
    load_sam_weights(model, path)  # dispatches on the layout
    images = torch.randn(2, 4, 3, img_size, img_size)  # experts are zero: every modality equals SAM2
    with torch.no_grad():
        reference = official.image_encoder(images.flatten(0, 1))
        trunk = official.image_encoder.trunk(images.flatten(0, 1))
        ours_trunk = model.image_encoder.trunk(images.flatten(0, 1))
        levels = model.image_encoder(images.flatten(0, 1))
    for ref, ours in zip(trunk, ours_trunk, strict=True):
        assert (ref - ours).abs().max().item() <= TOLERANCE
    # SAM2 keeps strides 4, 8, 16 (scalp 1); the stride-32 level is ours for the auxiliary head.
    assert [level.shape[-1] for level in levels] == [img_size // s for s in (4, 8, 16, 32)]
    for ref, ours in zip(reference["backbone_fpn"], levels[:3], strict=True):
        assert (ref - ours).abs().max().item() <= TOLERANCE
    for ref, level in zip(reference["vision_pos_enc"], levels[:3], strict=True):
        assert (ref[:1] - PositionEmbeddingSine(32)(level)).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("img_size", [64, 96])
def test_high_resolution_decoder_matches_meta_mask_decoder(img_size):
    official = _official(_config(img_size=img_size))
    model = _loaded("tiny_hiera", official, img_size)
    num_classes, h = MICRO["num_classes"], img_size // 16
    meta_decoder = official.sam_mask_decoder
    with torch.no_grad():  # Meta's decoder with our class tokens as its mask tokens, one shared hypernetwork
        meta_decoder.mask_tokens = torch.nn.Embedding.from_pretrained(model.decoder.class_tokens.weight)
        meta_decoder.num_mask_tokens = num_classes
        meta_decoder.output_hypernetworks_mlps = torch.nn.ModuleList([meta_decoder.output_hypernetworks_mlps[0]]
                                                                     * num_classes)
    embedding, f0, f1 = torch.randn(2, 32, h, h), torch.randn(2, 32, 4 * h, 4 * h), torch.randn(2, 32, 2 * h, 2 * h)
    with torch.no_grad():
        sparse, dense = official.sam_prompt_encoder(points=None, boxes=None, masks=None)
        expected = meta_decoder.predict_masks(
            embedding, official.sam_prompt_encoder.get_dense_pe(), sparse.expand(2, -1, -1),
            dense.expand(2, -1, -1, -1), repeat_image=False,
            high_res_features=[meta_decoder.conv_s0(f0), meta_decoder.conv_s1(f1)])[0]
        actual = model.decoder(embedding, (4 * h, 4 * h), (f0, f1))
    assert actual.shape == expected.shape == (2, num_classes, 4 * h, 4 * h)
    assert (actual - expected).abs().max().item() <= TOLERANCE


def _reference_frames(official, model, embedding, high_res, present, size):
    """MemorySAM's sequence on the present frames only, with Meta's SAM2Base memory functions
    (every frame a conditioning frame, SAM2's no-memory embedding on the first) and our decoder."""
    _, _, c, h, w = embedding.shape
    output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    pos = PositionEmbeddingSine(c)(embedding[:, 0]).flatten(2).permute(2, 0, 1)
    frames = {}
    for index, t in enumerate(present):
        feats = [embedding[:, t].flatten(2).permute(2, 0, 1)]
        pix = official._prepare_memory_conditioned_features(
            frame_idx=index, is_init_cond_frame=index == 0, current_vision_feats=feats, current_vision_pos_embeds=[pos],
            feat_sizes=[(h, w)], output_dict=output_dict, num_frames=len(present))
        logits = model.decoder(pix, size, (high_res[0][:, t], high_res[1][:, t]))
        frames[t] = logits
        confidence = logits.softmax(dim=1).amax(dim=1, keepdim=True)
        features, position = official._encode_new_memory(
            current_vision_feats=feats, feat_sizes=[(h, w)], pred_masks_high_res=torch.logit(confidence),
            object_score_logits=torch.ones(embedding.shape[0], 1), is_mask_from_pts=False)
        output_dict["cond_frame_outputs"][index] = {"maskmem_features": features, "maskmem_pos_enc": position}
    return frames


@pytest.mark.parametrize("mask", [[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
def test_memory_sequence_equals_sam2_memory_over_the_present_modalities(mask):
    config = _config("tiny_memorysam")
    official = _official(config, object_pointers=False)
    model = _loaded("tiny_memorysam", official)
    images, modality_mask = torch.randn(1, 4, 3, 64, 64), torch.tensor([mask])
    with torch.no_grad():
        embedding, high_res, _ = model._encode(images, modality_mask)
        frames = model.memory(embedding, high_res, modality_mask, model.decoder, (64, 64))
        present = [t for t in range(4) if mask[t]]
        expected = _reference_frames(official, model, embedding, high_res, present, (64, 64))
        logits = model.forward_logits(images, modality_mask)["logits"]
    for t in present:
        assert (frames[:, t] - expected[t]).abs().max().item() <= TOLERANCE, t
    mean = torch.stack([expected[t] for t in present]).mean(dim=0)  # MemorySAM's memory residual
    assert (logits - mean).abs().max().item() <= TOLERANCE


def test_memory_encoder_and_attention_match_meta():
    config = _config("tiny_memorysam", img_size=96)
    official = _official(config, object_pointers=False)
    model = _loaded("tiny_memorysam", official, 96)
    h = 6
    pix, mask = torch.randn(2, 32, h, h), torch.randn(2, 1, 16 * h, 16 * h)
    curr, curr_pos = torch.randn(2, h * h, 32), torch.randn(2, h * h, 32)
    memory, memory_pos = torch.randn(2, 3 * h * h, 16), torch.randn(2, 3 * h * h, 16)
    with torch.no_grad():
        expected = official.memory_encoder(pix, mask, skip_mask_sigmoid=True)
        features, position = model.memory.memory_encoder(pix, mask)
        attended = official.memory_attention(curr=[curr.transpose(0, 1)], curr_pos=[curr_pos.transpose(0, 1)],
                                             memory=memory.transpose(0, 1), memory_pos=memory_pos.transpose(0, 1))
        ours = model.memory.memory_attention(curr, curr_pos, memory, memory_pos, (h, h))
    assert (features - expected["vision_features"]).abs().max().item() <= TOLERANCE
    assert (position - expected["vision_pos_enc"][0]).abs().max().item() <= TOLERANCE
    assert (ours - attended.transpose(0, 1)).abs().max().item() <= TOLERANCE


def test_hiera_sample_i_uses_expert_i_mod_m_like_a_per_modality_loop():
    trunk_args = dict(embed_dim=16, num_heads=1, stages=(1, 2, 3, 1), global_att_blocks=(4,),
                      window_spec=(4, 2, 4, 3), window_pos_embed_bkg_spatial_size=(5, 5), lora_rank=2)
    torch.manual_seed(0)
    trunk = randomize(Hiera(**trunk_args, num_experts=4), scale=0.1)
    images = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        batched = [f.unflatten(0, (2, 4)) for f in trunk(images.flatten(0, 1))]
        for m in range(4):
            single = Hiera(**trunk_args, num_experts=1).eval()
            single.load_state_dict({k: (v[m:m + 1] if "lora_" in k else v) for k, v in trunk.state_dict().items()})
            for level, looped in zip(batched, single(images[:, m]), strict=True):
                assert (level[:, m] - looped).abs().max().item() < 1e-5
        # Stage-change blocks project dim -> 2*dim: their experts have that shape, and act.
        assert trunk.blocks[1].attn.qkv.lora_b_v.shape == (4, 2, 32)
        same = trunk(images[:, :1].expand(-1, 4, -1, -1, -1).flatten(0, 1))[-1].unflatten(0, (2, 4))
    assert (same[:, 0] - same[:, 1]).abs().max().item() > 1e-3


@pytest.fixture(scope="module")
def official_sizes():
    """One randomly initialised Meta SAM2 model per official trunk (built once, ~7 s in all)."""
    return {size: meta_sam2_model(MODEL_CONFIGS[f"hiera_{size}"], "2" if size == "t" else "2.1").state_dict()
            for size in ("t", "s", "b+", "l")}


OWN_KEYS = (".lora_", "decoder.class_tokens.", "router.", "aux_head.", "prototype_memory.")
"""Model keys that are not SAM2's: LoRA, class tokens, router, heads, prototypes."""


@pytest.mark.parametrize("name", [f"{kind}_{size}" for kind in ("hiera", "memorysam") for size in ("t", "s", "b+", "l")])
def test_official_sam2_checkpoint_fits_every_sam2_config(name, official_sizes):
    official = official_sizes[name.split("_")[1]]
    with torch.device("meta"):
        model = build_model(name)
    plan, report = plan_sam2_state(model, official, name)
    own = model.state_dict()
    # Every official key is loaded or named with its reason; every SAM2 part of the model is loaded.
    assert set(report.unused) | {k for k in official if k not in report.unused} == set(official)
    assert all(reason for reason in report.unused.values())
    assert not [k for k in report.kept_init if not any(part in k for part in OWN_KEYS)]
    assert set(plan) == {k for k in own if not any(part in k for part in OWN_KEYS)}
    assert all(plan[k].shape == own[k].shape for k in plan)
    memory_keys = [k for k in official if k.startswith(("memory_attention.", "memory_encoder."))]
    if name.startswith("memorysam"):
        assert not set(memory_keys) & set(report.unused) and "memory.no_mem_embed" in plan
    else:
        assert set(memory_keys) <= set(report.unused)
    assert "decoder.context_tokens.weight" in plan and "decoder.conv_s0.weight" in plan


@pytest.mark.slow
def test_official_size_sam2_file_loads_into_both_tiny_configs(tmp_path, official_sizes):
    """The real thing at full size: Meta's SAM2.1-style Hiera-T file (156 MB) into hiera_t and memorysam_t."""
    path = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": official_sizes["t"]}, path)
    for name in ("hiera_t", "memorysam_t"):
        model = build_model(name)
        report = load_sam2_weights(model, path)
        state = model.state_dict()
        assert all(torch.equal(state[k], official_sizes["t"][k]) for k in report.loaded if k.startswith("image_encoder."))
        assert not [k for k in report.kept_init if not any(part in k for part in OWN_KEYS)]


def test_small_sam2_files_load_completely_and_bad_ones_are_refused(tmp_path):
    official = _official(_config("tiny_memorysam"))
    path = tmp_path / "sam2.1_micro.pt"
    torch.save({"model": official.state_dict()}, path)
    model = build_model(_config("tiny_memorysam"))
    report = load_sam2_weights(model, path)
    state = model.state_dict()
    for key in ("image_encoder.trunk.blocks.1.attn.qkv.weight", "memory.memory_attention.layers.1.linear2.bias",
                "decoder.transformer.layers.0.mlp.lin1.weight", "decoder.conv_s1.weight"):
        assert key in report.loaded
    assert torch.equal(state["decoder.transformer.layers.0.mlp.lin1.weight"],
                       official.state_dict()["sam_mask_decoder.transformer.layers.0.mlp.layers.0.weight"])
    assert torch.equal(state["decoder.context_tokens.weight"][1], official.sam_mask_decoder.iou_token.weight[0])
    # A decoder of other widths keeps its init, and says so.
    wider = build_model(_config("tiny_memorysam", decoder_mlp_dim=96))
    report = load_sam2_weights(wider, path)
    assert "decoder.transformer.layers.0.mlp.lin1.weight" in report.kept_init
    assert "sam_mask_decoder.transformer.layers.0.mlp.layers.0.weight" in report.unused
    # A file holding only the image encoder: the rest keeps its init; a decoder in part is an error.
    encoder_only = {k: v for k, v in official.state_dict().items() if k.startswith("image_encoder.")}
    report = load_sam2_weights(build_model(_config("tiny_memorysam")), {"model": encoder_only})
    assert "decoder.conv_s0.weight" in report.kept_init and "memory.no_mem_embed" in report.kept_init
    partial = {k: v for k, v in official.state_dict().items() if not k.startswith("sam_mask_decoder.conv_s1.")}
    with pytest.raises(CheckpointError, match="decoder is incomplete"):
        load_sam2_weights(build_model(_config("tiny_memorysam")), partial)
    # Foreign keys, a misfit encoder and the wrong family are errors.
    with pytest.raises(CheckpointError, match="not part of SAM2"):
        load_sam2_weights(build_model(_config()), {**official.state_dict(), "extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="image encoder does not fit"):
        load_sam2_weights(build_model(_config(embed_dim=24, num_heads=2)), path)
    with pytest.raises(CheckpointError, match="SAM2 \\(Hiera\\) checkpoint"):
        load_sam_weights(build_model("tiny", img_size=64), path)
    with pytest.raises(CheckpointError, match="not a SAM2 checkpoint"):
        load_sam2_weights(build_model(_config()), {"image_encoder.patch_embed.proj.weight": torch.zeros(1)})


def test_hiera_config_validation():
    with pytest.raises(ValueError, match="multiple of 32"):
        _config(img_size=80)
    with pytest.raises(ValueError, match="cannot use global attention"):
        _config(global_attn_indexes=(1,))
    with pytest.raises(ValueError, match="must be even"):
        _config(window_spec=(4, 3, 4, 3))
    with pytest.raises(ValueError, match="sum of stages"):
        _config(depth=8)
    with pytest.raises(ValueError, match="need the hiera backbone"):
        MODEL_CONFIGS["tiny"].with_overrides(fusion="memory")
    assert MODEL_CONFIGS["memorysam_b+"].stages == (2, 3, 16, 3) and not MODEL_CONFIGS["memorysam_b+"].lora_per_modality


def test_every_registered_config_passes_the_untrusted_file_limits_and_absurd_hiera_sizes_do_not():
    for name, config in MODEL_CONFIGS.items():
        assert config_from_untrusted(config.to_dict()) == config, name
    hostile = MODEL_CONFIGS["hiera_t"].to_dict()
    with pytest.raises(ValueError, match="window_spec needs"):  # a 10^5-wide window embedding
        config_from_untrusted({**hostile, "window_spec": [100_000, 4, 14, 7]})
    with pytest.raises(ValueError, match="lora_per_modality is a int, expected bool"):
        config_from_untrusted({**hostile, "lora_per_modality": 1})
