"""SAM2's image encoder: the Hiera trunk and its FPN neck (Meta's
`sam2.modeling.backbones.image_encoder`), with Meta's module names (`trunk.*`, `neck.convs.N.conv.*`).

The neck maps the four stage outputs to `d_model` channels; the two coarsest levels (strides 32
and 16) are merged top-down with nearest upsampling, the two finest (strides 8 and 4) are
lateral only (SAM2's `fpn_top_down_levels: [2, 3]`). SAM2 drops the stride-32 level after the
neck (`scalp: 1`): its mask decoder reads stride 16 as the image embedding and strides 4 and 8
as high-resolution features. Here all four levels are returned; the model gives the first three
to the decoder as SAM2 does and all four to the auxiliary head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam_mmseg_ros.model.hiera import Hiera

TOP_DOWN_LEVELS = (2, 3)
"""Levels (0 = stride 4) that receive the upsampled coarser level, as in every SAM2 config."""


class FpnNeck(nn.Module):
    """Stage outputs (finest first) -> `d_model`-channel levels (finest first)."""

    def __init__(self, d_model: int, backbone_channel_list: list[int]) -> None:
        super().__init__()
        self.backbone_channel_list = list(backbone_channel_list)  # coarsest first, as SAM2 names them
        self.convs = nn.ModuleList()
        for dim in backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=1))
            self.convs.append(lateral)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(self.convs) - 1
        out: list[torch.Tensor] = [None] * len(xs)  # type: ignore[list-item]
        previous = None
        for i in range(n, -1, -1):  # coarsest first
            lateral = self.convs[n - i](xs[i])
            if i in TOP_DOWN_LEVELS and previous is not None:
                previous = lateral + F.interpolate(previous.float(), scale_factor=2.0, mode="nearest").to(lateral.dtype)
            else:
                previous = lateral
            out[i] = previous
        return out


class HieraImageEncoder(nn.Module):
    """Hiera trunk + FPN neck: [S, 3, H, W] -> levels [S, d_model, H/s, W/s] for s = 4, 8, 16, 32.

    The batch is B*M images ordered (b, m) when the trunk has LoRA experts (see `Hiera`).
    """

    def __init__(self, trunk: Hiera, d_model: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = FpnNeck(d_model, trunk.channel_list)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(self.trunk(x))

    def lora_parameters(self) -> list[nn.Parameter]:
        return self.trunk.lora_parameters()
