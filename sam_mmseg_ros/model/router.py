"""Modality router: how much each present modality contributes to the fused features.

Each modality's encoder output is averaged over space and scored by one learned linear gate
with a sigmoid (MLE-SAM); absent modalities are masked out and the scores of the present ones
are normalised with a softmax over modalities, optionally keeping only the top k.
"""

from __future__ import annotations

import torch
from torch import nn

from sam_mmseg_ros.model.image_encoder import capturing_graph

_ABSENT_SCORE = -1.0e4
"""Score given to absent modalities before the softmax. Finite (not -inf) so an all-absent row
gives zeros instead of NaN in an exported graph; small enough that exp() is exactly 0 next to
a sigmoid score in [0, 1], in fp16 too."""

_MIN_WEIGHT_SUM = 2.0**-14
"""Floor of the renormalising sum: fp16's smallest normal number (1e-12 becomes 0 in fp16, and
an all-absent row then gives 0/0 = NaN). Any row with a modality present sums to >= 1/M."""


class ModalityRouter(nn.Module):
    def __init__(self, embed_dim: int, num_modalities: int, top_k: int | None = None) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.top_k = top_k
        self.gate = nn.Linear(embed_dim, 1)

    def forward(self, features: torch.Tensor, modality_mask: torch.Tensor) -> torch.Tensor:
        """features [B, M, C, h, w], modality_mask [B, M] (1 present, 0 absent) -> weights [B, M].

        Weights sum to 1 over present modalities and are exactly 0 for absent ones. With no
        modality present, eager mode raises ValueError; a traced/exported graph cannot raise,
        so there every weight is 0 (no NaN) and the fused features become 0.
        """
        if not capturing_graph():  # a data-dependent check cannot be recorded in a graph
            if bool((modality_mask.sum(dim=1) == 0).any()):
                raise ValueError("every modality is absent in at least one sample: nothing to route")
        scores = torch.sigmoid(self.gate(features.mean(dim=(3, 4))).squeeze(-1))
        present = modality_mask > 0
        weights = torch.softmax(scores.masked_fill(~present, _ABSENT_SCORE), dim=1) * modality_mask
        if self.top_k is not None and self.top_k < self.num_modalities:
            keep = torch.zeros_like(weights).scatter(1, weights.topk(self.top_k, dim=1).indices, 1.0)
            weights = weights * keep
        return weights / weights.sum(dim=1, keepdim=True).clamp_min(_MIN_WEIGHT_SUM)
