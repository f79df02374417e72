"""MoE-LoRA SAM: the whole model, from M modality images to per-pixel classes.

images [B, M, 3, H, W] -> one batch of B*M through the frozen SAM encoder, sample (b, m) using
LoRA expert m -> router weights from the pooled per-modality embeddings -> fused embedding
(weighted sum + mean over present modalities) -> semantic mask decoder; the auxiliary head
reads intermediate blocks fused the same way. `forward` is the engine contract (DESIGN.md §3)
so ONNX export needs no wrapper: argmax and max-softmax are part of the graph.

Tasks (config.tasks): semantic labels always; with "depth", a depth decoder of its own reads the
fused embedding too and `forward` adds the `depth` output (metres). With `ta_lora` adapters every
task has its own encoder features: the batch is B*T*M images ordered (b, t, m), the router and
the fusion run on all T task paths at once, and each task's head reads its own path; the contract's
router_weights are the semantic path's. With `experts` adapters the tasks share one path.
"""

from __future__ import annotations

import torch
from torch import nn

from sam_mmseg_ros.contracts import TASK_OUTPUTS
from sam_mmseg_ros.model.config import ModelConfig
from sam_mmseg_ros.model.depth_head import DepthMaskDecoder, depth_from_log
from sam_mmseg_ros.model.fusion import ModalityFusion
from sam_mmseg_ros.model.heads import AuxiliaryHead, SemanticMaskDecoder
from sam_mmseg_ros.model.image_encoder import ImageEncoderViT
from sam_mmseg_ros.model.router import ModalityRouter
from sam_mmseg_ros.model.task_lora import add_task_factors


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
        # Encoder paths: one per task with task-aware adapters, else one shared by the tasks.
        self.task_paths = len(config.tasks) if config.adapters == "ta_lora" else 1
        if config.adapters == "ta_lora":
            add_task_factors(self.image_encoder, self.task_paths)
        self.router = ModalityRouter(config.out_chans, config.num_modalities, config.top_k)
        self.fusion = ModalityFusion()
        self.decoder = SemanticMaskDecoder(
            config.out_chans, config.num_classes, config.decoder_depth, config.decoder_heads, config.decoder_mlp_dim
        )
        self.aux_head = AuxiliaryHead(config.embed_dim, len(config.aux_block_indexes), config.num_classes,
                                      config.out_chans // 2)
        self.depth_decoder = (DepthMaskDecoder(config.out_chans, config.decoder_depth, config.decoder_heads,
                                               config.decoder_mlp_dim) if "depth" in config.tasks else None)
        self.set_encoder_trainable(False)

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Train SAM's own encoder weights too (used to pretrain a small encoder from scratch)
        or freeze them (default: only experts, router and heads learn)."""
        experts = {id(p) for p in self.image_encoder.lora_parameters()}
        for p in self.image_encoder.parameters():
            p.requires_grad_(trainable or id(p) in experts)

    @property
    def output_names(self) -> tuple[str, ...]:
        """What `forward` returns, in engine-contract order: the semantic outputs, then the other
        tasks' (contracts.TASK_OUTPUTS)."""
        return tuple(name for task in self.config.tasks for name in TASK_OUTPUTS[task])

    def with_tasks(self, tasks) -> MoELoRASAM:
        """This model restricted to `tasks` (some of its own, semantic first), e.g. without depth
        when a deployment does not want it: the dropped tasks' heads and task cores are left out,
        so neither the model nor a graph exported from it computes them. Returns `self` when
        nothing is dropped."""
        tasks = tuple(tasks)
        if tasks == self.config.tasks:
            return self
        if not set(tasks) <= set(self.config.tasks):
            raise ValueError(f"the model has the tasks {list(self.config.tasks)}, not {list(tasks)}")
        kept = [self.config.tasks.index(t) for t in tasks]
        model = MoELoRASAM(self.config.with_overrides(tasks=tasks))
        own = model.state_dict()
        state = {key: value[kept] if ".lora_core_" in key and value.shape != own[key].shape else value
                 for key, value in self.state_dict().items() if key in own}
        model.load_state_dict(state)
        return model.train(self.training)

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) number of parameters."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def _route(self, images: torch.Tensor, modality_mask: torch.Tensor):
        """Encode all modalities (once per task path) as one batch, zero absent slots, weigh the
        present ones. Returns fused [B, T, C, h, w], the block features [B*T*M, ...], router
        weights [B, T, M] and the mask [B, M]."""
        b, m, c, h, w = images.shape
        t = self.task_paths
        batch = images.reshape(b * m, c, h, w) if t == 1 else \
            images[:, None].expand(b, t, m, c, h, w).reshape(b * t * m, c, h, w)
        embedding, block_features = self.image_encoder(batch)
        embedding = embedding.reshape(b * t, m, *embedding.shape[1:])
        mask = modality_mask.to(embedding.dtype)
        path_mask = mask.repeat_interleave(t, dim=0)  # [B*T, M], rows ordered (b, t)
        embedding = embedding * path_mask.reshape(b * t, m, 1, 1, 1)
        weights = self.router(embedding, path_mask)
        fused = self.fusion(embedding, weights, path_mask)
        return fused.reshape(b, t, *fused.shape[1:]), block_features, weights.reshape(b, t, m), mask

    def _depth_path(self, fused: torch.Tensor) -> torch.Tensor:
        return fused[:, self.config.tasks.index("depth") if self.task_paths > 1 else 0]

    def forward_logits(self, images: torch.Tensor, modality_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training path: {logits, aux_logits [B, num_classes, H, W], router_weights [B, M]}, plus
        log_depth [B, H, W] for a depth model."""
        b, m, _, h, w = images.shape
        fused, block_features, weights, mask = self._route(images, modality_mask)
        semantic_weights = weights[:, 0]
        out = {"logits": self.decoder(fused[:, 0], (h, w)), "router_weights": semantic_weights}
        # The auxiliary head helps the semantic task: it reads the semantic path's blocks.
        fused_blocks = [self.fusion(f.reshape(b, self.task_paths, m, *f.shape[1:])[:, 0], semantic_weights, mask)
                        for f in block_features]
        out["aux_logits"] = self.aux_head(fused_blocks, (h, w))
        if self.depth_decoder is not None:
            out["log_depth"] = self.depth_decoder(self._depth_path(fused), (h, w))
        return out

    def forward(self, images: torch.Tensor, modality_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Engine contract: {labels int32 [B, H, W], confidence float32 [B, H, W],
        router_weights float32 [B, M]}, plus depth float32 [B, H, W] (metres) for a depth model.
        The auxiliary head is not evaluated."""
        h, w = images.shape[-2:]
        fused, _, weights, _ = self._route(images, modality_mask)
        logits = self.decoder(fused[:, 0], (h, w))
        confidence, labels = torch.softmax(logits.float(), dim=1).max(dim=1)
        out = {"labels": labels.to(torch.int32), "confidence": confidence, "router_weights": weights[:, 0].float()}
        if self.depth_decoder is not None:
            out["depth"] = depth_from_log(self.depth_decoder(self._depth_path(fused), (h, w)))
        return out
