"""Fusion of per-modality feature maps into one, as in MLE-SAM: the router-weighted sum plus
the plain mean over present modalities. The mean keeps every present sensor in the picture
even when top-k routing drops it; absent slots contribute nothing to either term."""

from __future__ import annotations

import torch
from torch import nn


class ModalityFusion(nn.Module):
    def forward(self, features: torch.Tensor, weights: torch.Tensor, modality_mask: torch.Tensor) -> torch.Tensor:
        """features [B, M, ...] (any trailing layout), weights and modality_mask [B, M] -> [B, ...].

        Absent slots are zeroed here as well, not only given weight 0, so whatever an absent
        slot's image held never reaches the heads.
        """
        shape = weights.shape + (1,) * (features.dim() - 2)
        mask = modality_mask.reshape(shape)
        features = features * mask
        weighted = (features * weights.reshape(shape)).sum(dim=1)
        mean = features.sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
        return weighted + mean
