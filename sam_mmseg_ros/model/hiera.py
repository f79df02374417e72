"""SAM2's Hiera trunk (Meta's `sam2.modeling.backbones.hieradet`) with MoE-LoRA experts.

Hiera is a four-stage hierarchical ViT: a stride-4 patch embedding, then stages at strides 4,
8, 16 and 32 whose first block pools the queries 2x2 (and doubles width and heads), windowed
attention except in a few global blocks, and a windowed absolute position embedding. SAM2 reads
all four stage outputs through its FPN neck (`hiera_image_encoder.py`).

Re-implemented rather than imported for the same reasons as the ViT encoder: every block's fused
`qkv` carries one LoRA expert per modality on q and v (`MoELoRAQKV`, batched over the modality
slots, no loop) while keeping Meta's parameter names (`blocks.N.attn.qkv.weight` ...), so
official SAM2/SAM2.1 checkpoints load unchanged. Drop-path is left out (SAM2 trains with rate 0
and it does nothing at inference). Parity with Meta's module is checked in test_model_hiera.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam_mmseg_ros.model.heads import MLP
from sam_mmseg_ros.model.image_encoder import window_partition, window_unpartition
from sam_mmseg_ros.model.lora import MoELoRAQKV

Q_STRIDE = (2, 2)
"""Query pooling between stages, as in every SAM2 config (with dim_mul = head_mul = 2)."""


def _pool(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """Max-pool a [B, H, W, C] map over H and W."""
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Attention whose queries may be pooled (the first block of a stage), so the output has the
    pooled grid while keys and values keep the input's."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None, num_experts: int,
                 lora_rank: int, lora_alpha: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = MoELoRAQKV(dim, num_experts=num_experts, rank=lora_rank, alpha=lora_alpha, out_dim=dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x, num_samples).reshape(batch, height * width, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)  # [B, N, heads, head_dim]
        if self.q_pool is not None:
            q = _pool(q.reshape(batch, height, width, -1), self.q_pool)
            height, width = q.shape[1:3]
            q = q.reshape(batch, height * width, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(batch, height, width, -1))


class MultiScaleBlock(nn.Module):
    """Pre-norm block; at a stage change the shortcut is projected to the new width and pooled."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, window_size: int, q_stride: tuple[int, int] | None,
                 num_experts: int, lora_rank: int, lora_alpha: float, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, self.pool, num_experts, lora_rank, lora_alpha)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.pool is not None:
                shortcut = _pool(shortcut, self.pool)
        window_size = self.window_size
        if window_size > 0:
            height, width = x.shape[1:3]
            # Windows of one image stay contiguous, so the LoRA expert grouping still holds.
            x, pad_hw = window_partition(x, window_size)
        x = self.attn(x, num_samples)
        if self.q_stride:  # the queries were pooled: so are the windows and the grid
            window_size = self.window_size // self.q_stride[0]
            height, width = shortcut.shape[1:3]
            pad_hw = (height + (-height % window_size), width + (-width % window_size)) if window_size else None
        if self.window_size > 0:
            x = window_unpartition(x, window_size, pad_hw, (height, width))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """Hiera trunk: [S, 3, H, W] -> four stage outputs [S, C_i, H/4/2^i, W/4/2^i], finest first.

    `num_experts` > 0 adds that many LoRA experts to every block's q and v; the batch must then
    be B*num_experts images ordered (b, m).
    """

    def __init__(self, embed_dim: int = 96, num_heads: int = 1, stages: tuple[int, ...] = (2, 3, 16, 3),
                 global_att_blocks: tuple[int, ...] = (12, 16, 20), window_spec: tuple[int, ...] = (8, 4, 14, 7),
                 window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14), num_experts: int = 0,
                 lora_rank: int = 8, lora_alpha: float = 8.0) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError("stages and window_spec need one entry per stage")
        self.num_experts = num_experts
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        q_pool_blocks = {end + 1 for end in self.stage_ends[:-1]}
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))
        self.blocks = nn.ModuleList()
        dim, stage = embed_dim, 0
        for i in range(sum(stages)):
            dim_out = dim
            # The window lags a block: a stage's first block still uses the previous stage's.
            window_size = 0 if i in global_att_blocks else window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out, num_heads, stage = dim * 2, num_heads * 2, stage + 1
            self.blocks.append(MultiScaleBlock(dim, dim_out, num_heads, window_size,
                                               Q_STRIDE if i in q_pool_blocks else None,
                                               num_experts, lora_rank, lora_alpha))
            dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]  # coarsest first, as SAM2

    def position_embedding(self, size: tuple[int, int]) -> torch.Tensor:
        """Background embedding resized to the token grid plus the tiled window embedding [1, h, w, C]."""
        pos_embed = F.interpolate(self.pos_embed, size=size, mode="bicubic")
        window = self.pos_embed_window
        pos_embed = pos_embed + window.tile(1, 1, size[0] // window.shape[2], size[1] // window.shape[3])
        return pos_embed.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        num_samples = x.shape[0]
        if self.num_experts and num_samples % self.num_experts:
            raise ValueError(f"batch of {num_samples} images is not B x {self.num_experts} modalities")
        x = self.patch_embed(x)
        x = x + self.position_embedding(tuple(x.shape[1:3]))
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x, num_samples)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for block in self.blocks for p in block.attn.qkv.expert_parameters()]


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution to tokens [S, H/4, W/4, C]."""

    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)
