"""Meta's SAM2 model (`sam2.modeling.sam2_base.SAM2Base`) built without hydra, as SAM2's config
files describe it, for a given Hiera ModelConfig: the reference for parity tests and the maker of
official-layout checkpoints ({"model": state dict}, as Meta publishes them)."""

import torch
from meta_reference import meta_sam2

from sam_mmseg_ros.model.config import ModelConfig


def meta_sam2_model(config: ModelConfig, version: str = "2.1", object_pointers: bool = True):
    """A SAM2Base with `config`'s trunk, FPN width, memory sizes and decoder sizes; "2.1" adds
    SAM2.1's extra parameters (no_obj_embed_spatial, obj_ptr_tpos_proj). Official configs all
    use object pointers; without them the memory attention sees spatial memories only (as ours)."""
    hieradet, image_encoder = meta_sam2("backbones.hieradet"), meta_sam2("backbones.image_encoder")
    position, attention = meta_sam2("position_encoding"), meta_sam2("memory_attention")
    memory, transformer = meta_sam2("memory_encoder"), meta_sam2("sam.transformer")
    base = meta_sam2("sam2_base")
    d, mem = config.out_chans, config.memory_dim
    trunk = hieradet.Hiera(embed_dim=config.embed_dim, num_heads=config.num_heads, stages=config.stages,
                           global_att_blocks=config.global_attn_indexes, window_spec=config.window_spec,
                           window_pos_embed_bkg_spatial_size=config.window_pos_embed_bkg)
    neck = image_encoder.FpnNeck(position_encoding=position.PositionEmbeddingSine(num_pos_feats=d), d_model=d,
                                 backbone_channel_list=trunk.channel_list, fpn_top_down_levels=[2, 3],
                                 fpn_interp_model="nearest")
    grid = [config.img_size // 16] * 2

    def rope(**more):
        return transformer.RoPEAttention(embedding_dim=d, num_heads=1, downsample_rate=1, dropout=0.1,
                                         rope_theta=10000.0, feat_sizes=grid, **more)

    layer = attention.MemoryAttentionLayer(
        activation="relu", cross_attention=rope(rope_k_repeat=True, kv_in_dim=mem), d_model=d,
        dim_feedforward=config.memory_mlp_dim, dropout=0.1, pos_enc_at_attn=False, pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False, self_attention=rope())
    memory_encoder = memory.MemoryEncoder(
        out_dim=mem, in_dim=d, position_encoding=position.PositionEmbeddingSine(num_pos_feats=mem),
        mask_downsampler=memory.MaskDownSampler(embed_dim=d, kernel_size=3, stride=2, padding=1),
        fuser=memory.Fuser(memory.CXBlock(dim=d, kernel_size=7, padding=3, layer_scale_init_value=1e-6,
                                          use_dwconv=True), num_layers=2))
    sam2_1 = version == "2.1"
    return base.SAM2Base(
        image_encoder=image_encoder.ImageEncoder(trunk, neck, scalp=1),
        memory_attention=attention.MemoryAttention(d_model=d, pos_enc_at_input=True, layer=layer,
                                                   num_layers=config.memory_layers),
        memory_encoder=memory_encoder, num_maskmem=config.num_maskmem, image_size=config.img_size,
        sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0, use_mask_input_as_output_without_sam=True,
        directly_add_no_mem_embed=True, no_obj_embed_spatial=sam2_1, use_high_res_features_in_sam=True,
        multimask_output_in_sam=True, iou_prediction_use_sigmoid=True, use_obj_ptrs_in_encoder=object_pointers,
        add_tpos_enc_to_obj_ptrs=sam2_1, proj_tpos_enc_in_obj_ptrs=sam2_1, use_signed_tpos_enc_to_obj_ptrs=sam2_1,
        only_obj_ptrs_in_the_past_for_eval=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
        fixed_no_obj_ptr=object_pointers, multimask_output_for_tracking=True, use_multimask_token_for_obj_ptr=True,
        multimask_min_pt_num=0, multimask_max_pt_num=1, use_mlp_for_obj_ptr_proj=True,
    )


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Every parameter random (SAM2 zero-inits position embeddings and more), in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return module.eval()
