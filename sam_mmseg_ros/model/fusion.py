"""Fusion of per-modality feature maps into one: the router-weighted sum, plus a mean term.

MLE-SAM adds the plain mean over present modalities (`mean="plain"`): it keeps every present
sensor in the picture even when top-k routing drops it, but it also keeps a blind sensor at
1/M of the features whatever the router says. `mean="learned"` scales the mean by a learned
scalar (starting at 1, i.e. at MLE-SAM), `mean="none"` leaves the router alone in charge.
Absent slots contribute nothing to either term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam_mmseg_ros.model.config import FUSION_MEANS


class ModalityFusion(nn.Module):
    def __init__(self, mean: str = "plain") -> None:
        super().__init__()
        if mean not in FUSION_MEANS:
            raise ValueError(f"unknown fusion mean {mean!r}; choose from {FUSION_MEANS}")
        self.mean = mean
        if mean == "learned":
            self.mean_weight = nn.Parameter(torch.tensor(1.0))

    def forward(self, features: torch.Tensor, weights: torch.Tensor, modality_mask: torch.Tensor,
                channel_dim: int = 2) -> torch.Tensor:
        """features [B, M, ...] with channels at `channel_dim` (2 for [B, M, C, h, w], -1 for
        channels-last [B, M, h, w, C]); weights [B, M] or per token [B, M, h, w], resized
        bilinearly to feature maps of another size (SAM2's stride-4/8 levels; the weights still
        sum to 1 over modalities); modality_mask [B, M] -> [B, ...].

        Absent slots are zeroed here as well, not only given weight 0, so whatever an absent
        slot's image held never reaches the heads.
        """
        shape = modality_mask.shape + (1,) * (features.dim() - 2)
        mask = modality_mask.reshape(shape)
        features = features * mask
        if weights.dim() == 2:
            w = weights.reshape(shape)
        else:
            spatial = features.shape[3:] if channel_dim == 2 else features.shape[2:-1]
            if weights.shape[2:] != spatial:
                weights = F.interpolate(weights, size=tuple(spatial), mode="bilinear", align_corners=False)
            w = weights.unsqueeze(channel_dim)
        fused = (features * w).sum(dim=1)
        if self.mean == "none":
            return fused
        mean = features.sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
        return fused + (self.mean_weight * mean if self.mean == "learned" else mean)
