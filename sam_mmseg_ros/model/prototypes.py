"""MemorySAM's semantic prototype memory (SPMM, paper §3.4): a training-only loss that pulls each
class's mean feature in the current batch towards a slowly moving global prototype of that class.

Features are the stride-4 FPN level projected by the decoder's `conv_s0` (32 channels for SAM2's
256-wide decoder, the "conv to 32 channels" of the paper), averaged over the present modalities,
as in the released code (`m_feat` in `sam_lora_image_encoder_seg.py`). Labels are downsampled
to the feature grid by nearest neighbour. Current prototypes are per-class means, computed for
all classes at once with a one-hot matmul. The loss is the MSE between current and global
prototypes, then the global ones move towards the current ones with `momentum` (0.2 in the paper
and the code: global = 0.8 * global + 0.2 * current).

Where this follows the paper rather than the released `PrototypeSegmentation`: classes absent
from a batch are neither scored nor updated (the code averages them in as zero vectors, decaying
their global prototype towards 0), a class's first sighting initialises its global prototype
(the code starts every prototype at 0, so the first loss pulls all features towards 0), the
per-class mean is not divided by the count a second time, and the loss compares against the
prototypes before this step's update and is weighted by the paper's lambda (1, Table 5; the code
multiplies by 256 * 256 to make up for the double division).

The prototypes are buffers of the model, so checkpoints carry them and a resumed run continues
with the same memory; inference never reads them (they are not in the exported graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SemanticPrototypeMemory(nn.Module):
    def __init__(self, num_classes: int, dim: int, momentum: float = 0.2) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def forward(self, features: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """features [B, D, h, w], label [B, H, W] (ids outside [0, num_classes), the ignore
        label among them, count for no class) -> prototype alignment loss; updates the global prototypes when training."""
        num_classes, dim = self.prototypes.shape
        small = F.interpolate(label[:, None].float(), size=features.shape[-2:], mode="nearest").long().flatten()
        onehot = (small[None, :] == torch.arange(num_classes, device=small.device)[:, None]).to(features.dtype)
        counts = onehot.sum(dim=1)
        flat = features.permute(0, 2, 3, 1).reshape(-1, dim)
        current = (onehot @ flat) / counts.clamp_min(1.0)[:, None]
        present = counts > 0
        with torch.no_grad():
            target = torch.where(self.seen[:, None], self.prototypes, current.float()).to(current.dtype)
        loss = ((current - target) ** 2).mean(dim=1)
        loss = (loss * present).sum() / present.sum().clamp_min(1)
        if self.training:
            with torch.no_grad():
                updated = (1.0 - self.momentum) * target.float() + self.momentum * current.float()
                self.prototypes.copy_(torch.where(present[:, None], updated, self.prototypes))
                self.seen |= present
        return loss
