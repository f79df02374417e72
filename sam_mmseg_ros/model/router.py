"""Modality router: how much each present modality contributes to the fused features.

Four kinds, chosen by `ModelConfig.router`:

- "sigmoid" (MLE-SAM as published): each modality's encoder output, averaged over space, is
  scored by one learned linear gate with a sigmoid; scores of absent modalities are masked out
  and the present ones normalised by a softmax over modalities. A sigmoid score lies in (0, 1),
  so no weight can exceed another by more than a factor e: this router cannot turn a sensor down.
- "softmax": the same pooled linear gate, plus a learned per-modality bias, as unbounded logits
  divided by a learned temperature (log-parametrised, starting at `temperature`); the softmax
  can give a sensor that sees nothing almost no weight.
- "spatial": the gate scores every token of every modality (a per-pixel router, since fog
  hides far things first and headlights light only the near road), the softmax runs over the
  modalities at each token. The weights reported (engine output `router_weights`, health) are
  their spatial mean, which still sums to 1 over the present modalities.
- "spatial_joint": "spatial" plus a joint gate: each modality's logit at a token also reads
  every present modality's token there (one linear map of their concatenation, starting at 0).
  A shared per-modality gate judges a sensor by its own features only; a time-of-flight camera
  reading the fog in front of it looks like a plausible near wall, and only the camera's
  washed-out token says it is fog. Not in MLE-SAM.

Kept from MLE-SAM in all kinds: a linear gate shared by the modalities (the LoRA-adapted
embeddings differ per modality), masking of absent modalities before the softmax, optional
top-k (per token for "spatial"), renormalisation over the kept modalities.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sam_mmseg_ros.model.config import ROUTERS
from sam_mmseg_ros.model.image_encoder import capturing_graph

_ABSENT_SCORE = -1.0e4
"""Score given to absent modalities before the softmax. Finite (not -inf) so an all-absent row
gives zeros instead of NaN in an exported graph; small enough that exp() is exactly 0 next to
any present score (those are clamped to +-_MAX_LOGIT), in fp16 too."""
_MAX_LOGIT = 30.0

_MIN_WEIGHT_SUM = 2.0**-14
"""Floor of the renormalising sum: fp16's smallest normal number (1e-12 becomes 0 in fp16, and
an all-absent row then gives 0/0 = NaN). Any row with a modality present sums to >= 1/M."""


class ModalityRouter(nn.Module):
    def __init__(self, embed_dim: int, num_modalities: int, top_k: int | None = None, kind: str = "sigmoid",
                 temperature: float = 1.0) -> None:
        super().__init__()
        if kind not in ROUTERS:
            raise ValueError(f"unknown router {kind!r}; choose from {ROUTERS}")
        self.num_modalities = num_modalities
        self.top_k = top_k
        self.kind = kind
        self.gate = nn.Linear(embed_dim, 1)
        if kind == "spatial_joint":
            self.joint_gate = nn.Linear(num_modalities * embed_dim, num_modalities)
            nn.init.zeros_(self.joint_gate.weight)
            nn.init.zeros_(self.joint_gate.bias)
        if kind != "sigmoid":
            self.modality_bias = nn.Parameter(torch.zeros(num_modalities))
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def scores(self, features: torch.Tensor, modality_mask: torch.Tensor) -> torch.Tensor:
        """features [B, M, C, h, w], modality_mask [B, M] -> scores [B, M] (pooled kinds) or
        [B, M, h, w] (spatial kinds)."""
        if self.kind in ("spatial", "spatial_joint"):
            logits = self.gate(features.movedim(2, -1)).squeeze(-1)  # [B, M, h, w]
            if self.kind == "spatial_joint":  # absent slots zeroed, so they say nothing
                present = features * modality_mask.reshape(*modality_mask.shape, 1, 1, 1)
                logits = logits + self.joint_gate(present.flatten(1, 2).movedim(1, -1)).movedim(-1, 1)
            bias = self.modality_bias.reshape(1, -1, 1, 1)
        else:
            logits = self.gate(features.mean(dim=(3, 4))).squeeze(-1)  # [B, M]
            if self.kind == "sigmoid":
                return torch.sigmoid(logits)
            bias = self.modality_bias.reshape(1, -1)
        return ((logits + bias) * torch.exp(-self.log_temperature)).clamp(-_MAX_LOGIT, _MAX_LOGIT)

    def forward(self, features: torch.Tensor, modality_mask: torch.Tensor) -> torch.Tensor:
        """features [B, M, C, h, w], modality_mask [B, M] (1 present, 0 absent) -> weights [B, M],
        or [B, M, h, w] for the spatial router.

        Weights sum to 1 over present modalities and are exactly 0 for absent ones. With no
        modality present, eager mode raises ValueError; a traced/exported graph cannot raise,
        so there every weight is 0 (no NaN) and the fused features become 0.
        """
        if not capturing_graph():  # a data-dependent check cannot be recorded in a graph
            if bool((modality_mask.sum(dim=1) == 0).any()):
                raise ValueError("every modality is absent in at least one sample: nothing to route")
        scores = self.scores(features, modality_mask)
        mask = modality_mask.reshape(modality_mask.shape + (1,) * (scores.dim() - 2))
        weights = torch.softmax(scores.masked_fill(mask <= 0, _ABSENT_SCORE), dim=1) * mask
        if self.top_k is not None and self.top_k < self.num_modalities:
            keep = torch.zeros_like(weights).scatter(1, weights.topk(self.top_k, dim=1).indices, 1.0)
            weights = weights * keep
        return weights / weights.sum(dim=1, keepdim=True).clamp_min(_MIN_WEIGHT_SUM)


def reported_weights(weights: torch.Tensor) -> torch.Tensor:
    """[B, M] router weights for the engine contract: a spatial router's spatial mean."""
    return weights if weights.dim() == 2 else weights.mean(dim=(2, 3))
