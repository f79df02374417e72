"""SAM2's fixed position encodings, written so that an exported graph holds only real-valued,
static-shape ops.

`PositionEmbeddingSine` is Meta's `position_encoding.PositionEmbeddingSine` (used by the FPN
neck and the memory encoder); `AxialRoPE` is the axial rotary encoding of SAM2's memory
attention (`compute_axial_cis` / `apply_rotary_enc`). Meta rotates with complex tensors
(`torch.polar`, `view_as_complex`), which ONNX has no type for; here the same rotation is the
cos/sin form on (even, odd) channel pairs. Both depend only on the grid size, so the exporter
folds them to constants.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Normalised 2-D sine/cosine encoding [1, num_pos_feats, h, w] of a feature map's grid
    (DETR's, with SAM2's defaults: temperature 10000, normalise to 2*pi)."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError("num_pos_feats must be even")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        eps, scale = 1e-6, 2 * math.pi
        y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)[:, None].expand(h, w)
        x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)[None, :].expand(h, w)
        y_embed = y_embed / (h + eps) * scale
        x_embed = x_embed / (w + eps) * scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, None] / dim_t
        pos_y = y_embed[:, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
        pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
        return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).unsqueeze(0).to(x.dtype)


class AxialRoPE(nn.Module):
    """Axial rotary position encoding of tokens on an h x w grid (row-major), SAM2's RoPE.

    The first half of each head's channel pairs rotates with the token's column, the second
    half with its row, at frequencies theta^(-4i/dim). Keys longer than the grid (memories of
    several frames, each a full grid) repeat the grid's rotation (`rope_k_repeat`).
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError("RoPE needs a head width divisible by 4")
        self.head_dim = head_dim
        self.theta = theta

    def angles(self, size: tuple[int, int], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each [h*w, head_dim/2], one angle per channel pair."""
        h, w = size
        freqs = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 4, device=device)[: self.head_dim // 4].float()
                                      / self.head_dim))
        t = torch.arange(h * w, dtype=torch.float32, device=device)
        t_x, t_y = t % w, torch.div(t, w, rounding_mode="floor")
        angle = torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)
        return angle.cos(), angle.sin()

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate the (even, odd) channel pairs of x [..., N, head_dim]; N is a multiple of the
        grid's token count (repeated frames)."""
        repeats = x.shape[-2] // cos.shape[0]
        if repeats > 1:
            cos, sin = cos.repeat(repeats, 1), sin.repeat(repeats, 1)
        pairs = x.float().unflatten(-1, (-1, 2))
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return rotated.flatten(-2).to(x.dtype)
