"""SAM2's memory attention (Meta's `sam2.modeling.memory_attention`, same module names): the
current frame's stride-16 features attend to themselves and then to the memories of earlier
frames, with axial RoPE on queries and keys.

Two changes for a static, batched graph: attention is written out (MatMul, Softmax, MatMul),
with RoPE as real cos/sin (`position_encoding.AxialRoPE`), and cross-attention takes an
additive per-key bias so that memories of absent frames are masked out inside the graph rather
than left out of a Python list. Tensors are batch-first ([B, tokens, C]) throughout.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from sam_mmseg_ros.model.heads import Attention
from sam_mmseg_ros.model.position_encoding import AxialRoPE


class RoPEAttention(Attention):
    """SAM decoder attention with axial RoPE on q and k (keys covering several frames repeat
    the grid's rotation) and an optional additive key bias [B, 1, 1, Nk]."""

    def __init__(self, embedding_dim: int, num_heads: int, kv_in_dim: int | None = None, dropout: float = 0.0,
                 rope_theta: float = 10000.0) -> None:
        super().__init__(embedding_dim, num_heads, kv_in_dim=kv_in_dim)
        self.dropout_p = dropout
        self.rope = AxialRoPE(self.internal_dim // num_heads, rope_theta)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int],
                key_bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        cos, sin = self.rope.angles(size, q.device)
        q, k = self.rope.rotate(q, cos, sin), self.rope.rotate(k, cos, sin)
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if key_bias is not None:
            scores = scores + key_bias
        weights = F.dropout(scores.softmax(dim=-1), self.dropout_p, self.training)
        out = weights @ v
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


class MemoryAttentionLayer(nn.Module):
    """Self-attention, cross-attention to the memories (position encoding on their keys only,
    as SAM2 configures it), ReLU MLP; pre-norm with dropout on each residual."""

    def __init__(self, d_model: int, kv_in_dim: int, dim_feedforward: int, num_heads: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(d_model, num_heads, dropout=dropout)
        self.cross_attn_image = RoPEAttention(d_model, num_heads, kv_in_dim=kv_in_dim, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, size: tuple[int, int],
                key_bias: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(tgt)
        tgt = tgt + self.dropout1(self.self_attn(x, x, x, size))
        x = self.norm2(tgt)
        tgt = tgt + self.dropout2(self.cross_attn_image(x, memory + memory_pos, memory, size, key_bias))
        x = self.norm3(tgt)
        return tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x)))))


class MemoryAttention(nn.Module):
    def __init__(self, d_model: int, layer: MemoryAttentionLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, curr: torch.Tensor, curr_pos: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                size: tuple[int, int], key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """curr [B, h*w, d_model] (grid `size`), curr_pos broadcastable to it, memory and
        memory_pos [B, Nk, kv_in_dim] (whole frames of h*w tokens), key_bias [B, 1, 1, Nk]."""
        output = curr + 0.1 * curr_pos  # SAM2's pos_enc_at_input
        for layer in self.layers:
            output = layer(output, memory, memory_pos, size, key_bias)
        return self.norm(output)
