"""Dense metric depth head: the depth task's own SAM mask decoder (TA-LoRA's per-task decoder).

TA-LoRA's modified SAM drops the prompt encoder and gives every task its own no-mask embedding and
mask decoder. The depth decoder is SAM's mask decoder with one output token: the two-way
transformer refines the token and the depth task's fused image embedding, the hypernetwork turns
the token into a dynamic 1x1 regressor over the 4x-upscaled embedding, and the result is log depth
at stride 4, upsampled bilinearly to the input size.

Log depth because depth is positive and spans two orders of magnitude (1.6 m of bonnet-side road
to 300 m of street), because a step in log depth is a relative error (what AbsRel measures and the
training loss penalises), and because interpolating log depth between a near and a far pixel does
not invent a middle distance as readily as interpolating metres. `depth()` turns it into metres,
clamped to DEPTH_RANGE_M so the engine output is always finite and positive (fp16 engines keep
the Exp in fp32, engine/export.FP32_OPS).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sam_mmseg_ros.model.heads import SemanticMaskDecoder

DEPTH_RANGE_M = (0.1, 1000.0)
"""Range the predicted depth is clamped to, metres."""
INITIAL_DEPTH_M = 10.0
"""Depth a fresh head predicts everywhere (about the median of a street scene): training starts
from a sensible scale instead of exp(0) = 1 m."""


class DepthMaskDecoder(SemanticMaskDecoder):
    """Fused image embedding [B, C, h, w] -> log depth [B, H, W] (metres). The SAM decoder with a
    single output token (`class_tokens` holds it) and a learned log-depth offset."""

    def __init__(self, transformer_dim: int, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048,
                 high_res: bool = False, context_tokens: int = 0) -> None:
        super().__init__(transformer_dim, 1, depth, num_heads, mlp_dim, high_res, context_tokens)
        self.log_depth_offset = nn.Parameter(torch.tensor(math.log(INITIAL_DEPTH_M)))

    def forward(self, image_embedding: torch.Tensor, output_size: tuple[int, int],
                high_res_features: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """high_res_features: SAM2's stride-4/8 features, as for SemanticMaskDecoder."""
        return super().forward(image_embedding, output_size, high_res_features)[:, 0] + self.log_depth_offset


def depth_from_log(log_depth: torch.Tensor) -> torch.Tensor:
    """Metres, float32, clamped to DEPTH_RANGE_M."""
    low, high = (math.log(v) for v in DEPTH_RANGE_M)
    return torch.exp(log_depth.float().clamp(low, high))
