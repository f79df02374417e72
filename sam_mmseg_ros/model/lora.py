"""Mixture of LoRA experts on the fused qkv projection of a SAM attention block.

MLE-SAM adds one low-rank expert per modality to the query and value projections and keeps
SAM's weight frozen. All modalities run as one batch through the shared encoder, so the expert
is chosen by position in the batch: samples are ordered (b, m) and sample i uses expert i % M.
The experts are applied with one batched matmul over a [B, M, N, C] view of the tokens,
never a Python loop over modalities, so the exported graph is a handful of static ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MoELoRAQKV(nn.Module):
    """`qkv` Linear (dim -> 3*out_dim) with per-modality LoRA experts on q and v.

    `weight` and `bias` keep the names of SAM's `attn.qkv` (and SAM2 Hiera's, whose stage-change
    blocks project dim -> 3*out_dim with out_dim = 2*dim) so official checkpoints load as is.
    Experts: A [M, dim, rank] (Kaiming), B [M, rank, out_dim] (zero, so a fresh model is exactly
    the frozen encoder), delta = x @ A_m @ B_m * alpha / rank. `num_experts=0` is a plain Linear.
    """

    def __init__(self, dim: int, num_experts: int = 0, rank: int = 8, alpha: float = 8.0,
                 bias: bool = True, out_dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim = dim if out_dim is None else out_dim
        self.num_experts = num_experts
        self.weight = nn.Parameter(torch.empty(3 * out_dim, dim))
        self.bias = nn.Parameter(torch.zeros(3 * out_dim)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if num_experts > 0:
            self.scale = alpha / rank
            self.lora_a_q = nn.Parameter(torch.empty(num_experts, dim, rank))
            self.lora_b_q = nn.Parameter(torch.zeros(num_experts, rank, out_dim))
            self.lora_a_v = nn.Parameter(torch.empty(num_experts, dim, rank))
            self.lora_b_v = nn.Parameter(torch.zeros(num_experts, rank, out_dim))
            for a in (self.lora_a_q, self.lora_a_v):
                # Same init as nn.Linear / peft's LoRA A, per expert (fan_in = dim).
                for expert in a.data:
                    nn.init.kaiming_uniform_(expert.T, a=math.sqrt(5))

    def expert_parameters(self) -> list[nn.Parameter]:
        if self.num_experts == 0:
            return []
        return [self.lora_a_q, self.lora_b_q, self.lora_a_v, self.lora_b_v]

    def forward(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """x: [S, ..., dim] where the rows of each of the `num_samples` images are contiguous
        (e.g. its attention windows), images ordered (b, m)."""
        out = F.linear(x, self.weight, self.bias)
        if self.num_experts == 0:
            return out
        grouped = x.reshape(num_samples // self.num_experts, self.num_experts, -1, self.dim)
        # [B, M, N, dim] @ [M, dim, 2r] @ [M, 2r, 3*out_dim]: q and v experts in one pass, the
        # token tensors are touched once.
        a, b = self.expert_factors()
        delta = (grouped @ a) @ (b * self.scale)
        return out + delta.reshape(out.shape)

    def expert_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [M, dim, 2r], B [M, 2r, 3*out_dim]): the q and v experts side by side, B as the tiny
        block matrix (B_q | 0 | 0 ; 0 | 0 | B_v) so one product updates q and v and leaves k."""
        a = torch.cat([self.lora_a_q, self.lora_a_v], dim=-1)
        zeros = torch.zeros_like(self.lora_b_q)
        b = torch.cat([torch.cat([self.lora_b_q, zeros, zeros], dim=-1),
                       torch.cat([zeros, zeros, self.lora_b_v], dim=-1)], dim=1)
        return a, b

    def extra_repr(self) -> str:
        rank = self.lora_a_q.shape[-1] if self.num_experts else 0
        return f"dim={self.dim}, out_dim={self.out_dim}, experts={self.num_experts}, rank={rank}"
