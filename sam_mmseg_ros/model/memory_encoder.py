"""SAM2's memory encoder (Meta's `sam2.modeling.memory_encoder`, same module names): a frame's
stride-16 features fused with its predicted mask into a compact memory [B, mem_dim, h, w] and
the memory's sine position encoding.

The mask (image resolution, one channel, already on SAM2's logit scale) is downsampled 16x by
strided convolutions, added to the projected features, refined by two ConvNeXt blocks and
projected to `mem_dim` channels (64 in SAM2) so that later frames attend to fewer channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sam_mmseg_ros.model.image_encoder import LayerNorm2d
from sam_mmseg_ros.model.position_encoding import PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """Mask [B, 1, H, W] -> [B, embed_dim, H/16, W/16]: stride-2 convs that quadruple the
    channels each time (SAM2: kernel 3, padding 1), LayerNorm and GELU, then a 1x1 projection."""

    def __init__(self, embed_dim: int, kernel_size: int = 3, stride: int = 2, padding: int = 1,
                 total_stride: int = 16) -> None:
        super().__init__()
        num_layers = int(math.log2(total_stride) // math.log2(stride))
        if stride**num_layers != total_stride:
            raise ValueError(f"total_stride {total_stride} is not a power of stride {stride}")
        self.encoder = nn.Sequential()
        in_chans = 1
        for _ in range(num_layers):
            out_chans = in_chans * stride**2
            self.encoder.append(nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding))
            self.encoder.append(LayerNorm2d(out_chans))
            self.encoder.append(nn.GELU())
            in_chans = out_chans
        self.encoder.append(nn.Conv2d(in_chans, embed_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7, LayerNorm, pointwise MLP (4x), layer scale, residual."""

    def __init__(self, dim: int, kernel_size: int = 7, padding: int = 3, layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=padding, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    def __init__(self, dim: int, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()
        self.position_encoding = PositionEmbeddingSine(out_dim)

    def forward(self, pix_feat: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pix_feat [B, in_dim, h, w], mask [B, 1, 16h, 16w] (SAM2 scale: sigmoid * 20 - 10)
        -> (memory [B, out_dim, h, w], position encoding [1, out_dim, h, w])."""
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(mask)
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x)
