"""MoE-LoRA SAM: the whole model, from M modality images to per-pixel classes.

images [B, M, 3, H, W] -> one batch of B*M through the frozen SAM encoder, sample (b, m) using
LoRA expert m -> router weights from the per-modality embeddings (pooled, or per token) -> fused embedding
(weighted sum, plus the mean over present modalities unless the config removes it) -> semantic mask decoder; the auxiliary head
reads intermediate blocks fused the same way. `forward` is the engine contract (DESIGN.md §3)
so ONNX export needs no wrapper: argmax and max-softmax are part of the graph.
"""

from __future__ import annotations

import torch
from torch import nn

from sam_mmseg_ros.model.config import ModelConfig
from sam_mmseg_ros.model.fusion import ModalityFusion
from sam_mmseg_ros.model.heads import AuxiliaryHead, SemanticMaskDecoder
from sam_mmseg_ros.model.image_encoder import ImageEncoderViT
from sam_mmseg_ros.model.router import ModalityRouter, reported_weights


class MoELoRASAM(nn.Module):
    SAM_KEY_MAP: dict[str, str] = {
        "image_encoder.": "image_encoder.",
        "mask_decoder.transformer.": "decoder.transformer.",
        "mask_decoder.output_upscaling.": "decoder.output_upscaling.",
        "mask_decoder.output_hypernetworks_mlps.0.": "decoder.output_hypernetwork.",
        "prompt_encoder.pe_layer.": "decoder.pe_layer.",
        "prompt_encoder.no_mask_embed.": "decoder.no_mask_embed.",
    }
    """Official SAM checkpoint key prefix -> this model's prefix, for everything that is SAM's.
    Decoder entries apply only when out_chans, decoder depth/heads/mlp equal SAM's (256, 2, 8, 2048)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoderViT(
            img_size=config.img_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.out_chans,
            window_size=config.window_size,
            global_attn_indexes=config.global_attn_indexes,
            feature_indexes=config.aux_block_indexes,
            num_experts=config.num_modalities,
            lora_rank=config.lora_rank,
            lora_alpha=config.lora_alpha,
        )
        self.router = ModalityRouter(config.out_chans, config.num_modalities, config.top_k, config.router,
                                     config.router_temperature)
        self.fusion = ModalityFusion(config.fusion_mean)
        self.decoder = SemanticMaskDecoder(
            config.out_chans, config.num_classes, config.decoder_depth, config.decoder_heads, config.decoder_mlp_dim
        )
        self.aux_head = AuxiliaryHead(config.embed_dim, len(config.aux_block_indexes), config.num_classes,
                                      config.out_chans // 2)
        self.set_encoder_trainable(False)

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Train SAM's own encoder weights too (used to pretrain a small encoder from scratch)
        or freeze them (default: only experts, router and heads learn)."""
        experts = {id(p) for p in self.image_encoder.lora_parameters()}
        for p in self.image_encoder.parameters():
            p.requires_grad_(trainable or id(p) in experts)

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) number of parameters."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def _route(self, images: torch.Tensor, modality_mask: torch.Tensor):
        """Encode all modalities as one batch, zero absent slots, weigh the present ones."""
        b, m, c, h, w = images.shape
        embedding, block_features = self.image_encoder(images.reshape(b * m, c, h, w))
        embedding = embedding.reshape(b, m, *embedding.shape[1:])
        mask = modality_mask.to(embedding.dtype)
        embedding = embedding * mask.reshape(b, m, 1, 1, 1)
        weights = self.router(embedding, mask)
        return self.fusion(embedding, weights, mask), block_features, weights, mask

    def forward_logits(self, images: torch.Tensor, modality_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training path: {logits, aux_logits [B, num_classes, H, W], router_weights [B, M]}."""
        b, m, _, h, w = images.shape
        fused, block_features, weights, mask = self._route(images, modality_mask)
        logits = self.decoder(fused, (h, w))
        # Block features are channels-last [B*M, h, w, C] on the embedding's token grid.
        fused_blocks = [self.fusion(f.reshape(b, m, *f.shape[1:]), weights, mask, channel_dim=-1)
                        for f in block_features]
        return {"logits": logits, "aux_logits": self.aux_head(fused_blocks, (h, w)),
                "router_weights": reported_weights(weights)}

    def forward(self, images: torch.Tensor, modality_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Engine contract: {labels int32 [B, H, W], confidence float32 [B, H, W],
        router_weights float32 [B, M]}. The auxiliary head is not evaluated."""
        h, w = images.shape[-2:]
        fused, _, weights, _ = self._route(images, modality_mask)
        logits = self.decoder(fused, (h, w))
        confidence, labels = torch.softmax(logits.float(), dim=1).max(dim=1)
        return {"labels": labels.to(torch.int32), "confidence": confidence,
                "router_weights": reported_weights(weights).float()}
