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

from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F

from sam_mmseg_ros.contracts import IMAGENET_MEAN, IMAGENET_STD, MODALITIES, MODALITY_INDEX


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


def rgb_alone(mask: torch.Tensor, generator: torch.Generator, p: float) -> torch.Tensor:
    """Keep only RGB, with probability `p`, in the [B, M] samples that have it: modality dropout
    alone gives RGB-only samples rarely (p^3 (1 - p) of them), yet RGB alone is what the node
    runs on when every other sensor fails. Draws from `generator`, like `modality_dropout`."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"rgb_alone probability must be in [0, 1], got {p}")
    rgb = MODALITY_INDEX["rgb"]
    chosen = (torch.rand(mask.shape[0], generator=generator) < p).to(mask.device) & (mask[:, rgb] > 0)
    only_rgb = torch.zeros_like(mask)
    only_rgb[:, rgb] = mask[:, rgb]
    return torch.where(chosen[:, None], only_rgb, mask)


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation of encoded samples, the same for synthetic and DELIVER data.

    Geometric steps (flip, random resized crop) move every modality and the label together;
    photometric steps (colour jitter, blur) touch only the RGB slot, because depth, events and
    LiDAR are measurements whose values mean something (metres, polarity, range).
    """

    flip: float = 0.5  # probability of a horizontal flip
    crop: float = 0.8  # probability of a random resized crop
    crop_scale: tuple[float, float] = (0.35, 1.0)  # area fraction kept
    crop_ratio: tuple[float, float] = (0.6, 1.7)  # crop aspect (width / height), as cameras differ
    brightness: float = 0.4  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.4
    saturation: float = 0.4
    blur: float = 0.2  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.3, 1.5)  # pixels


def augment(images: torch.Tensor, mask: torch.Tensor, label: torch.Tensor, generator: torch.Generator,
            config: Augmentation = Augmentation(), depth: torch.Tensor | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Augment a batch (images [B, M, 3, H, W] encoded as in `encode_images`, mask [B, M], label
    [B, H, W], optional ground-truth depth [B, H, W] of a depth task) with draws from `generator`
    (a CPU generator, so a resumed run repeats them). Returns new (images, label, depth) of the
    same shapes, depth None when none was given. Labels and depth are resampled by nearest neighbour,
    RGB bilinearly, the other modalities by nearest neighbour (a sparse LiDAR raster or an event
    frame must not be smeared into values no sensor produced)."""
    b, m, _, h, w = images.shape
    out_images, out_labels = images.clone(), label.clone()
    out_depth = depth.clone() if depth is not None else None
    rgb = MODALITIES.index("rgb")

    def draw(lo: float = 0.0, hi: float = 1.0) -> float:
        return float(lo + (hi - lo) * torch.rand((), generator=generator))

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for i in range(b):
        x, y = out_images[i], out_labels[i]
        d = out_depth[i] if out_depth is not None else None
        if draw() < config.flip:
            x, y = x.flip(-1), y.flip(-1)
            d = d.flip(-1) if d is not None else None
        if draw() < config.crop:
            area = draw(*config.crop_scale) * h * w
            ratio = float(np.exp(draw(np.log(config.crop_ratio[0]), np.log(config.crop_ratio[1]))))
            cw = int(round(min(w, np.sqrt(area * ratio))))
            ch = int(round(min(h, np.sqrt(area / ratio))))
            top, left = int(draw(0, h - ch + 1)), int(draw(0, w - cw + 1))
            window = (slice(top, top + ch), slice(left, left + cw))
            sensors = F.interpolate(x[:, :, window[0], window[1]], size=(h, w), mode="nearest-exact")
            sensors[rgb] = F.interpolate(x[rgb:rgb + 1, :, window[0], window[1]], size=(h, w), mode="bilinear",
                                         align_corners=False)[0]
            x = sensors
            y = F.interpolate(y[None, None, window[0], window[1]].float(), size=(h, w),
                              mode="nearest-exact")[0, 0].long()
            if d is not None:
                d = F.interpolate(d[None, None, window[0], window[1]], size=(h, w), mode="nearest-exact")[0, 0]
        if mask[i, rgb] > 0:
            pixels = (x[rgb] * std + mean).clamp(0, 1)
            pixels = pixels * draw(1 - config.brightness, 1 + config.brightness)
            grey = pixels.mean(dim=0, keepdim=True)
            pixels = grey + (pixels - grey) * draw(1 - config.saturation, 1 + config.saturation)
            pixels = pixels.mean() + (pixels - pixels.mean()) * draw(1 - config.contrast, 1 + config.contrast)
            if draw() < config.blur:
                pixels = _gaussian_blur(pixels, draw(*config.blur_sigma))
            x[rgb] = (pixels.clamp(0, 1) - mean) / std
        out_images[i], out_labels[i] = x * mask[i].view(m, 1, 1, 1), y
        if d is not None:
            out_depth[i] = d
    return out_images, out_labels, out_depth


def _gaussian_blur(chw: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(np.ceil(2.5 * sigma)))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=chw.dtype) / sigma) ** 2)
    taps = taps / taps.sum()
    c = chw.shape[0]
    x = F.pad(chw[None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


def class_frequencies(dataset, num_classes: int, max_samples: int = 256) -> np.ndarray:
    """Fraction of labelled pixels per class over up to `max_samples` samples spread evenly over
    `dataset` (for class-balanced losses)."""
    count = len(dataset)
    indices = np.unique(np.linspace(0, count - 1, min(count, max_samples)).astype(int))
    totals = np.zeros(num_classes, np.float64)
    for i in indices:
        label = np.asarray(dataset[int(i)]["label"]).ravel()
        totals += np.bincount(label[label < num_classes], minlength=num_classes)[:num_classes]
    return totals / max(totals.sum(), 1.0)
