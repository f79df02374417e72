"""Training loss: OHEM cross-entropy on the main and the auxiliary head (DESIGN.md §4), plus
MemorySAM's prototype alignment loss for models that carry the prototype memory.

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
    """OHEM on `logits`, plus `aux_weight` x OHEM on `aux_logits` (models with the auxiliary
    head) and `prototype_weight` x MemorySAM's prototype alignment loss on `prototype_features`
    (models with the semantic prototype memory, passed as `prototypes`), of `forward_logits`' output."""

    def __init__(self, aux_weight: float = 0.4, thresh: float = 0.7, min_kept_fraction: float = 1 / 16,
                 ignore_index: int = IGNORE_LABEL, class_weights: torch.Tensor | None = None,
                 prototypes: nn.Module | None = None, prototype_weight: float = 0.0):
        super().__init__()
        self.aux_weight = aux_weight
        self.ohem = OhemCrossEntropy(thresh, min_kept_fraction, ignore_index, class_weights)
        self.prototypes = prototypes
        self.prototype_weight = prototype_weight

    def forward(self, outputs: dict[str, torch.Tensor], label: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns {"loss": total to backpropagate, "main": ..., "aux": ... (0 without the head),
        and "prototype": ... when the model has the prototype memory}."""
        main = self.ohem(outputs["logits"], label)
        loss = main
        parts = {"main": main.detach(), "aux": torch.zeros_like(main.detach())}
        if "aux_logits" in outputs:
            aux = self.ohem(outputs["aux_logits"], label)
            loss = loss + self.aux_weight * aux
            parts["aux"] = aux.detach()
        if self.prototypes is not None and "prototype_features" in outputs:
            prototype = self.prototypes(outputs["prototype_features"], label)
            loss = loss + self.prototype_weight * prototype
            parts["prototype"] = prototype.detach()
        return {"loss": loss, **parts}


class LogDepthL1(nn.Module):
    """Depth task loss: mean |log predicted - log true depth| over pixels with a known depth.

    L1 in log space penalises relative error, the quantity AbsRel reports (|d - d*| / d* is
    |log d - log d*| to first order), equally at 3 m and at 60 m, where an L1 in metres would let
    the far pixels dominate. Unlike the scale-invariant log loss it keeps the absolute scale, which
    a metric depth output needs."""

    def forward(self, log_depth: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """log_depth [B, H, W] (natural log of metres), depth [B, H, W] metres, 0 or non-finite where
        unknown."""
        valid = torch.isfinite(depth) & (depth > 0)
        if not bool(valid.any()):  # no known depth in the batch: a zero that still carries the graph
            return log_depth.sum() * 0.0
        return (log_depth.float()[valid] - depth[valid].float().log()).abs().mean()
