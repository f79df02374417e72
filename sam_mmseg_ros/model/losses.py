"""Training loss: OHEM cross-entropy on the main and the auxiliary head (DESIGN.md §4).

OHEM as in CMNeXt's `OhemCrossEntropy`: a pixel counts when the model gives its true class a
probability below `thresh` (loss above -log(thresh)); when fewer than `min_kept_fraction` of the
labelled pixels are that hard, the hardest that many count instead. Easy road and sky pixels
would otherwise drown the thin classes (poles, signs, riders) that matter for driving.

Class-balanced OHEM (`class_weights`): the hard pixels are chosen as above, from the plain
losses, and averaged with a weight per class (e.g. inverse square-root frequency), so a class
that covers 0.1 % of the pixels is not outvoted a thousand to one among the hard ones either.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sam_mmseg_ros.contracts import IGNORE_LABEL


class OhemCrossEntropy(nn.Module):
    def __init__(self, thresh: float = 0.7, min_kept_fraction: float = 1 / 16,
                 ignore_index: int = IGNORE_LABEL, class_weights: torch.Tensor | None = None):
        super().__init__()
        if not 0.0 < thresh <= 1.0 or not 0.0 < min_kept_fraction <= 1.0:
            raise ValueError("thresh and min_kept_fraction must be in (0, 1]")
        self.loss_thresh = -math.log(thresh)
        self.min_kept_fraction = min_kept_fraction
        self.ignore_index = ignore_index
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """logits [B, C, H, W] (resized bilinearly to the label when smaller), label [B, H, W]."""
        if logits.shape[-2:] != label.shape[-2:]:
            logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        pixel_loss = F.cross_entropy(logits.float(), label, ignore_index=self.ignore_index, reduction="none")
        labelled = label != self.ignore_index
        pixel_loss = pixel_loss[labelled]
        if pixel_loss.numel() == 0:  # nothing labelled: a zero that still carries the graph
            return logits.sum() * 0.0
        hard = pixel_loss > self.loss_thresh
        min_kept = max(1, int(pixel_loss.numel() * self.min_kept_fraction))
        if int(hard.sum()) < min_kept:
            hard = torch.zeros_like(hard).scatter(0, pixel_loss.topk(min_kept).indices, True)
        if self.class_weights is None:
            return pixel_loss[hard].mean()
        weights = self.class_weights.to(pixel_loss.device)[label[labelled][hard]]
        return (pixel_loss[hard] * weights).sum() / weights.sum().clamp_min(1e-12)


class SegmentationLoss(nn.Module):
    """OHEM on `logits` plus `aux_weight` x OHEM on `aux_logits` of `forward_logits`' output."""

    def __init__(self, aux_weight: float = 0.4, thresh: float = 0.7, min_kept_fraction: float = 1 / 16,
                 ignore_index: int = IGNORE_LABEL, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.aux_weight = aux_weight
        self.ohem = OhemCrossEntropy(thresh, min_kept_fraction, ignore_index, class_weights)

    def forward(self, outputs: dict[str, torch.Tensor], label: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns {"loss": total to backpropagate, "main": ..., "aux": ...}."""
        main = self.ohem(outputs["logits"], label)
        aux = self.ohem(outputs["aux_logits"], label)
        return {"loss": main + self.aux_weight * aux, "main": main.detach(), "aux": aux.detach()}
