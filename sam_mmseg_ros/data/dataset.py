"""What every training / evaluation dataset returns, and the two operations all of them share:
encoding decoded uint8 images into the model's input contract (DESIGN.md §3) and random
modality dropout.

A sample is a dict:

    images          float32 [M, 3, H, W]  RGB ImageNet-normalized, other modalities in [0, 1],
                                          an absent slot all zeros
    modality_mask   float32 [M]           1 present, 0 absent (order: contracts.MODALITIES)
    label           int64   [H, W]        class ids 0..C-1, IGNORE_LABEL (255) where unknown
    condition       str                   weather / lighting / failure case, for per-case metrics

so torch's default collate batches any of them and the trainer never needs to know which
dataset it is reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F

from sam_mmseg_ros.contracts import IMAGENET_MEAN, IMAGENET_STD, MODALITIES, InputError


class Sample(TypedDict):
    images: torch.Tensor
    modality_mask: torch.Tensor
    label: torch.Tensor
    condition: str


def _to_chw(array: np.ndarray, name: str) -> torch.Tensor:
    """uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] -> float32 [3, H, W] in [0, 1]."""
    if array.dtype != np.uint8:
        raise InputError(f"{name}: expected a uint8 image, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"{name}: expected an [H, W], [H, W, 3] or [H, W, 4] image, got {array.shape}")
    chw = torch.from_numpy(np.ascontiguousarray(array[:, :, :3])).permute(2, 0, 1).float().div_(255.0)
    # Single-channel sensors (events, LiDAR) are repeated to 3 channels, as DELIVER's loaders do,
    # so every modality goes through the same patch embedding.
    return chw.expand(3, -1, -1) if chw.shape[0] == 1 else chw


def encode_images(arrays: Mapping[str, np.ndarray | None], size: tuple[int, int],
                  modalities: tuple[str, ...] = MODALITIES) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded uint8 images per modality (None or missing key = absent) -> (images [M, 3, H, W],
    modality_mask [M]) at `size` (H, W), bilinear. Slots follow contracts.MODALITIES; only the
    modalities named in `modalities` are used, the others stay absent."""
    height, width = size
    images = torch.zeros(len(MODALITIES), 3, height, width)
    mask = torch.zeros(len(MODALITIES))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for slot, name in enumerate(MODALITIES):
        array = arrays.get(name)
        if name not in modalities or array is None:
            continue
        chw = _to_chw(array, name)
        if chw.shape[1:] != (height, width):
            chw = F.interpolate(chw[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        images[slot] = (chw - mean) / std if name == "rgb" else chw
        mask[slot] = 1.0
    return images, mask


def resize_label(label: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8/int [H, W] class ids -> int64 [h, w], nearest neighbour (never blends ids)."""
    tensor = torch.from_numpy(np.ascontiguousarray(label)).long()
    if tuple(tensor.shape) != tuple(size):
        # nearest-exact samples pixel centres, as the bilinear image resize beside it does.
        tensor = F.interpolate(tensor[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return tensor


def modality_dropout(mask: torch.Tensor, generator: torch.Generator, p: float) -> torch.Tensor:
    """Drop each present modality independently with probability `p` (RGB included), never all.

    Works on [M] or [B, M]. When every present modality of a sample was drawn for dropping, one
    of them, chosen uniformly, is kept: so every proper subset of the present modalities can be
    dropped, which is what teaches the model to run on any sensor that is left. The draws come
    from `generator` (a CPU generator) so a resumed run repeats them. The caller zeroes the
    dropped slots of the images (`images * new_mask[..., None, None, None]`).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"modality dropout probability must be in [0, 1), got {p}")
    flat = mask.detach().reshape(-1, mask.shape[-1]).cpu()
    present = flat > 0
    drop = torch.rand(flat.shape, generator=generator) < p
    keep = present & ~drop
    emptied = present.any(dim=1) & ~keep.any(dim=1)
    # Random scores over the present modalities; the argmax is a uniform pick among them.
    scores = torch.rand(flat.shape, generator=generator).masked_fill(~present, -1.0)
    rescue = F.one_hot(scores.argmax(dim=1), flat.shape[1]).bool() & emptied[:, None]
    return (keep | rescue).reshape(mask.shape).to(device=mask.device, dtype=mask.dtype)
