"""The multi-modal SAM, from M modality images to per-pixel classes, composed as its config says.

images [B, M, 3, H, W] -> one batch of B*M through the frozen image encoder (sample (b, m) using
LoRA expert m, or one shared LoRA), then one of two fusions:
- `router` (MLE-SAM): router weights from the per-modality embeddings (pooled, or per token:
  config.router) -> fused features (weighted sum, plus the mean over present modalities unless
  config.fusion_mean removes it) -> one semantic mask decoder pass; the auxiliary head reads
  the multi-scale features fused the same way.
- `memory` (MemorySAM): the modalities as a frame sequence through SAM2's memory attention and
  memory encoder, one decoder pass per frame, the mean of the present frames' predictions.
Backbones: SAM's ViT (stride-16 embedding; the auxiliary head reads intermediate blocks) or
SAM2's Hiera with its FPN (stride-16 embedding plus stride-4/8 features for the decoder's
high-resolution path; the auxiliary head reads the four FPN levels).

`forward` is the engine contract (DESIGN.md §3) so ONNX export needs no wrapper: argmax and
max-softmax are part of the graph. `router_weights` is each modality's share of the fused
prediction: the router's weights, or, for the memory fusion, 1/n for each of n present ones.

Tasks (config.tasks): semantic labels always; with "depth", a depth decoder of its own reads the
fused features too and `forward` adds the `depth` output (metres). With `ta_lora` adapters every
task has its own encoder features: the batch is B*T*M images ordered (b, t, m), the router runs on
all T task paths at once, and each task's head reads its own path fused with its own weights; the
contract's router_weights are the semantic path's. With `experts` adapters the tasks share one
path. The memory fusion is semantic-only (config validation).
"""

from __future__ import annotations

import torch
from torch import nn

from sam_mmseg_ros.contracts import TASK_OUTPUTS
from sam_mmseg_ros.model.config import ModelConfig
from sam_mmseg_ros.model.depth_head import DepthMaskDecoder, depth_from_log
from sam_mmseg_ros.model.fusion import ModalityFusion
from sam_mmseg_ros.model.heads import AuxiliaryHead, PositionEmbeddingRandom, SemanticMaskDecoder
from sam_mmseg_ros.model.hiera import Hiera
from sam_mmseg_ros.model.hiera_image_encoder import HieraImageEncoder
from sam_mmseg_ros.model.image_encoder import ImageEncoderViT
from sam_mmseg_ros.model.memory_fusion import MemorySequenceFusion, check_some_modality_present
from sam_mmseg_ros.model.prototypes import SemanticPrototypeMemory
from sam_mmseg_ros.model.router import ModalityRouter, reported_weights
from sam_mmseg_ros.model.task_lora import add_task_factors

SAM2_CONTEXT_TOKENS = 2
"""SAM2's decoder tokens that make no mask: object score and IoU (see SemanticMaskDecoder)."""


def build_image_encoder(config: ModelConfig) -> nn.Module:
    experts = config.num_modalities if config.lora_per_modality else 1
    if config.backbone == "hiera":
        trunk = Hiera(config.embed_dim, config.num_heads, config.stages, config.global_attn_indexes,
                      config.window_spec, config.window_pos_embed_bkg, num_experts=experts,
                      lora_rank=config.lora_rank, lora_alpha=config.lora_alpha)
        return HieraImageEncoder(trunk, config.out_chans)
    return ImageEncoderViT(
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
        num_experts=experts,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
    )


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
    Decoder entries apply only when out_chans, decoder depth/heads/mlp equal SAM's (256, 2, 8, 2048).
    SAM2 checkpoints: `sam2_weights.SAM2_KEY_MAP`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        hiera = config.backbone == "hiera"
        self.image_encoder = build_image_encoder(config)
        # Encoder paths: one per task with task-aware adapters, else one shared by the tasks.
        self.task_paths = len(config.tasks) if config.adapters == "ta_lora" else 1
        if config.adapters == "ta_lora":
            add_task_factors(self.image_encoder, self.task_paths)
        if config.fusion == "router":
            self.router = ModalityRouter(config.out_chans, config.num_modalities, config.top_k, config.router,
                                         config.router_temperature)
            self.fusion = ModalityFusion(config.fusion_mean)
        else:
            self.memory = MemorySequenceFusion(config.out_chans, config.memory_dim, config.memory_layers,
                                               config.memory_mlp_dim, config.num_maskmem)
        self.decoder = SemanticMaskDecoder(
            config.out_chans, config.num_classes, config.decoder_depth, config.decoder_heads, config.decoder_mlp_dim,
            high_res=hiera, context_tokens=SAM2_CONTEXT_TOKENS if hiera else 0,
        )
        self.depth_decoder = (DepthMaskDecoder(config.out_chans, config.decoder_depth, config.decoder_heads,
                                               config.decoder_mlp_dim, high_res=hiera,
                                               context_tokens=SAM2_CONTEXT_TOKENS if hiera else 0)
                              if "depth" in config.tasks else None)
        self.aux_head = None
        if config.aux_head and hiera:  # the four FPN levels, as they are
            self.aux_head = AuxiliaryHead(config.out_chans, 4, config.num_classes, config.out_chans // 2,
                                          log_scales=(0, 0, 0, 0), channels_last=False)
        elif config.aux_head:
            self.aux_head = AuxiliaryHead(config.embed_dim, len(config.aux_block_indexes), config.num_classes,
                                          config.out_chans // 2)
        self.prototype_memory = (SemanticPrototypeMemory(config.num_classes, config.out_chans // 8,
                                                         config.prototype_momentum)
                                 if config.prototype_weight > 0 else None)
        self.set_encoder_trainable(False)

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Train the image encoder's own weights too (used to pretrain a small encoder from
        scratch) or freeze them (default: only LoRA, router/memory and heads learn)."""
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

    def prepare_export(self, input_size: tuple[int, int]) -> None:
        """Compute what depends only on the input size (the decoders' positional encodings on the
        stride-16 embedding grid) in fp32 now, so an export at `input_size` holds it as a constant."""
        grid = (input_size[0] // self.config.patch_size, input_size[1] // self.config.patch_size)
        for module in self.modules():
            if isinstance(module, PositionEmbeddingRandom):
                module(grid)

    def _encode(self, images: torch.Tensor, modality_mask: torch.Tensor):
        """All modalities (once per task path) as one batch -> (stride-16 embedding, decoder
        high-res features or None, auxiliary-head features), each [B*T, M, ...] with rows ordered
        (b, t), absent slots zeroed."""
        b, m, c, h, w = images.shape
        t = self.task_paths
        batch = images.reshape(b * m, c, h, w) if t == 1 else \
            images[:, None].expand(b, t, m, c, h, w).reshape(b * t * m, c, h, w)
        path_mask = modality_mask.to(images.dtype).repeat_interleave(t, dim=0)  # [B*T, M]

        def per_modality(x: torch.Tensor) -> torch.Tensor:
            x = x.reshape(b * t, m, *x.shape[1:])
            return x * path_mask.reshape(b * t, m, *([1] * (x.dim() - 2)))

        if self.config.backbone == "hiera":
            levels = [per_modality(level) for level in self.image_encoder(batch)]
            return levels[2], (levels[0], levels[1]), levels
        embedding, block_features = self.image_encoder(batch)
        return per_modality(embedding), None, [per_modality(f) for f in block_features]

    def _predict(self, images: torch.Tensor, modality_mask: torch.Tensor, training_outputs: bool) -> dict:
        """{"logits", "router_weights"} plus "log_depth" for a depth model; with
        `training_outputs` also "aux_logits" (when the model has the head) and
        "prototype_features" (when it has the prototype memory)."""
        size = tuple(images.shape[-2:])
        b, t = images.shape[0], self.task_paths
        mask = modality_mask.to(images.dtype)
        embedding, high_res, aux_features = self._encode(images, mask)

        def path(x: torch.Tensor, index: int) -> torch.Tensor:  # [B*T, ...] -> task path `index`, [B, ...]
            return x.reshape(b, t, *x.shape[1:])[:, index]

        if self.config.fusion == "router":
            weights = self.router(embedding, mask.repeat_interleave(t, dim=0))  # [B*T, M] or [B*T, M, h, w]

            def fuse(features: torch.Tensor, index: int = 0, channel_dim: int = 2) -> torch.Tensor:
                return self.fusion(path(features, index), path(weights, index), mask, channel_dim)

            def decode(decoder: nn.Module, index: int) -> torch.Tensor:
                high = tuple(fuse(f, index) for f in high_res) if high_res else None
                return decoder(fuse(embedding, index), size, high)

            out = {"logits": decode(self.decoder, 0), "router_weights": reported_weights(path(weights, 0))}
            if self.depth_decoder is not None:
                out["log_depth"] = decode(self.depth_decoder, self.config.tasks.index("depth") if t > 1 else 0)
        else:  # semantic only, one path (config validation)
            check_some_modality_present(mask)
            weights = mask / mask.sum(dim=1, keepdim=True).clamp_min(1.0)
            frames = self.memory(embedding, high_res, mask, self.decoder, size)
            out = {"logits": (frames * weights.reshape(*weights.shape, 1, 1, 1)).sum(dim=1), "router_weights": weights}

            def fuse(features: torch.Tensor, index: int = 0, channel_dim: int = 2) -> torch.Tensor:  # the mean
                return (features * weights.reshape(*weights.shape, *([1] * (features.dim() - 2)))).sum(dim=1)
        # The training-only heads help the semantic task: they read the semantic path.
        if training_outputs and self.aux_head is not None:
            # ViT block features are channels-last [B*T, M, h, w, C]; Hiera's FPN levels are not.
            channel_dim = 2 if self.config.backbone == "hiera" else -1
            out["aux_logits"] = self.aux_head([fuse(f, channel_dim=channel_dim) for f in aux_features], size)
        if training_outputs and self.prototype_memory is not None:
            out["prototype_features"] = self.decoder.conv_s0(fuse(high_res[0]))
        return out

    def forward_logits(self, images: torch.Tensor, modality_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training path: {logits [B, num_classes, H, W], router_weights [B, M]} plus log_depth
        [B, H, W] for a depth model, aux_logits [B, num_classes, H, W] and prototype_features
        [B, out_chans/8, H/4, W/4] when the config has those heads."""
        return self._predict(images, modality_mask, training_outputs=True)

    def forward(self, images: torch.Tensor, modality_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Engine contract: {labels int32 [B, H, W], confidence float32 [B, H, W],
        router_weights float32 [B, M]}, plus depth float32 [B, H, W] (metres) for a depth model.
        The training-only heads are not evaluated."""
        out = self._predict(images, modality_mask, training_outputs=False)
        confidence, labels = torch.softmax(out["logits"].float(), dim=1).max(dim=1)
        result = {"labels": labels.to(torch.int32), "confidence": confidence,
                  "router_weights": out["router_weights"].float()}
        if "log_depth" in out:
            result["depth"] = depth_from_log(out["log_depth"])
        return result
