"""What every training / evaluation dataset returns, and what all of them share: label resizing
and random modality dropout. Images are encoded by the node's own `sensors.preprocess`, so
training sees what the node computes.

A sample is a dict:

    images          float32 [M, 3, H, W]  RGB ImageNet-normalized, other modalities in [0, 1],
                                          an absent slot all zeros
    modality_mask   float32 [M]           1 present, 0 absent (order: contracts.MODALITIES)
    label           int64   [H, W]        class ids 0..C-1, IGNORE_LABEL (255) where unknown
    condition       str                   weather / lighting, for per-condition metrics
    case            str                   sensor-failure case ('normal' if none), where known
    depth           float32 [H, W]        ground-truth metric depth along the optical axis, 0 where
                                          unknown (sky); only datasets that have it, when asked

so torch's default collate batches any of them and the trainer never needs to know which
dataset it is reading.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F


class Sample(TypedDict, total=False):
    images: torch.Tensor
    modality_mask: torch.Tensor
    label: torch.Tensor
    condition: str
    depth: torch.Tensor


def resize_label(label: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8/int [H, W] class ids -> int64 [h, w], nearest neighbour (never blends ids)."""
    tensor = torch.from_numpy(np.ascontiguousarray(label)).long()
    if tuple(tensor.shape) != tuple(size):
        # nearest-exact samples pixel centres, as pipeline.resize_nearest does for predictions.
        tensor = F.interpolate(tensor[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return tensor


def resize_depth(depth_m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float [H, W] metres (0 or non-finite = unknown) -> float32 [h, w] with 0 = unknown, nearest
    neighbour at pixel centres: every kept value is a real measurement and unknown pixels never
    blend into known ones."""
    from sam_mmseg_ros.pipeline import resize_nearest

    depth = np.asarray(depth_m, np.float32)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0.0))
    return np.ascontiguousarray(resize_nearest(depth, *size))


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
