"""MoE-LoRA SAM: the whole model, from M modality images to per-pixel classes.

images [B, M, 3, H, W] -> one batch of B*M through the frozen SAM encoder, sample (b, m) using
LoRA expert m -> router weights from the pooled per-modality embeddings -> fused embedding
(weighted sum + mean over present modalities) -> semantic mask decoder; the auxiliary head
reads intermediate blocks fused the same way. `forward` is the engine contract (DESIGN.md §3)
so ONNX export needs no wrapper: argmax and max-softmax are part of the graph.

With `moda` adapters (config.adapters) a pool of domain adapters rides on the forward pass
(`model/domain_adapters.py`): a selector reading the first encoder blocks picks each frame's
domain, whose adapter updates the remaining blocks and the decoder; `forward` adds the `domain`
and `domain_confidence` outputs.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from sam_mmseg_ros.model.config import ModelConfig
from sam_mmseg_ros.model.domain_adapters import DomainAdapterPool
from sam_mmseg_ros.model.fusion import ModalityFusion
from sam_mmseg_ros.model.heads import AuxiliaryHead, SemanticMaskDecoder
from sam_mmseg_ros.model.image_encoder import ImageEncoderViT
from sam_mmseg_ros.model.router import ModalityRouter


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
        self.router = ModalityRouter(config.out_chans, config.num_modalities, config.top_k)
        self.fusion = ModalityFusion()
        self.decoder = SemanticMaskDecoder(
            config.out_chans, config.num_classes, config.decoder_depth, config.decoder_heads, config.decoder_mlp_dim
        )
        self.aux_head = AuxiliaryHead(config.embed_dim, len(config.aux_block_indexes), config.num_classes,
                                      config.out_chans // 2)
        # Built last, so every other part gets the same initial weights with either adapters value.
        self.domains = DomainAdapterPool(self.image_encoder, config, self.decoder) if config.adapters == "moda" else None
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

    def _domain_pass(self, frames: int, domain: torch.Tensor | None):
        if self.domains is None:
            return contextlib.nullcontext(None)
        return self.domains.frames(frames, domain)

    def _route(self, images: torch.Tensor, modality_mask: torch.Tensor):
        """Encode all modalities as one batch, zero absent slots, weigh the present ones."""
        b, m, c, h, w = images.shape
        embedding, block_features = self.image_encoder(images.reshape(b * m, c, h, w))
        embedding = embedding.reshape(b, m, *embedding.shape[1:])
        mask = modality_mask.to(embedding.dtype)
        embedding = embedding * mask.reshape(b, m, 1, 1, 1)
        weights = self.router(embedding, mask)
        return self.fusion(embedding, weights, mask), block_features, weights, mask

    def forward_logits(self, images: torch.Tensor, modality_mask: torch.Tensor,
                       domain: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training path: {logits, aux_logits [B, num_classes, H, W], router_weights [B, M]}, plus
        domain_logits [B, D] and domain [B] (the adapters used) for a moda model, whose frames use
        the adapters `domain` [B] names when given."""
        b, m, _, h, w = images.shape
        with self._domain_pass(b, domain) as domains:  # `domain` [B] forces the frames' adapters
            fused, block_features, weights, mask = self._route(images, modality_mask)
            logits = self.decoder(fused, (h, w))
        fused_blocks = [self.fusion(f.reshape(b, m, *f.shape[1:]), weights, mask) for f in block_features]
        out = {"logits": logits, "aux_logits": self.aux_head(fused_blocks, (h, w)), "router_weights": weights}
        if domains is not None:
            out.update(domain_logits=domains.logits, domain=domains.selected)
        return out

    def forward(self, images: torch.Tensor, modality_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Engine contract: {labels int32 [B, H, W], confidence float32 [B, H, W],
        router_weights float32 [B, M]}, plus domain int32 [B] and domain_confidence float32 [B]
        for a moda model. The auxiliary head is not evaluated."""
        h, w = images.shape[-2:]
        with self._domain_pass(images.shape[0], None) as domains:
            fused, _, weights, _ = self._route(images, modality_mask)
            logits = self.decoder(fused, (h, w))
        confidence, labels = torch.softmax(logits.float(), dim=1).max(dim=1)
        out = {"labels": labels.to(torch.int32), "confidence": confidence, "router_weights": weights.float()}
        if domains is not None:
            out.update(domain=domains.selected.to(torch.int32), domain_confidence=domains.confidence.float())
        return out
