"""Modalities that arrive already rendered as images: uint8 image -> float32 [3, h, w] in [0, 1] at
the model input size.

DELIVER stores depth (HHA), events and LiDAR as images, an upstream node may publish event frames,
and the node's own DELIVER-style encoders render events and LiDAR as such images first. Training
on DELIVER files, a DELIVER bag fed to the node and the live DELIVER-style encoders all end in
`encode_image_input`, so one frame gives the model the same input whichever way it came.

How an image is brought to the model input size depends on what its pixels mean (the
encoding's `image_resample`, sensors/encodings.py):
- "area" (dense images such as HHA): block average, antialiased bilinear otherwise, exactly as
  the RGB camera (`sensors.rgb`);
- "max" (sparse events): each input pixel takes the maximum over the image pixels it covers, so
  a single event pixel survives any downscale (nearest-neighbour sampling drops most of them);
- "nearest_point" (sparse LiDAR ranges, 0 = no point): the smallest non-zero value over the
  covered pixels, i.e. the nearest point, as a z-buffer would keep.
Upscaling (a low-resolution event sensor) repeats pixels, nearest-neighbour, in all three.
"""

from __future__ import annotations

import numpy as np

from sam_mmseg_ros.contracts import IMAGENET_MEAN, IMAGENET_STD, ImageData, InputError
from sam_mmseg_ros.sensors.rgb import encode_rgb, rgb_to_uint8

IMAGE_INPUT_ENCODINGS = ("rgb8", "bgr8", "mono8", "rgba8", "bgra8")
RESAMPLE = ("area", "max", "nearest_point")
_MEAN = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
_STD = np.asarray(IMAGENET_STD, np.float32)[:, None, None]


def is_image_input(data) -> bool:
    """True for a ready 8-bit image (as opposed to metric depth, an event array or a cloud)."""
    return isinstance(data, ImageData) and data.encoding in IMAGE_INPUT_ENCODINGS


def _axis_max(array: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Maximum over the input pixels each of `n_out` output pixels covers along `axis` (output
    pixel i covers [floor(i N / n), floor((i + 1) N / n))); nearest-neighbour when upscaling."""
    n_in = array.shape[axis]
    if n_in == n_out:
        return array
    if n_out > n_in:
        return np.take(array, (np.arange(n_out) * n_in) // n_out, axis=axis)
    return np.maximum.reduceat(array, (np.arange(n_out) * n_in) // n_out, axis=axis)


def resize_sparse(array: np.ndarray, size: tuple[int, int], keep: str = "max") -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [h, w, C]: per channel, the maximum ("max") or the smallest
    non-zero value ("nearest_point") over the pixels each output pixel covers."""
    if keep == "nearest_point":
        # Negation in uint8 maps v -> 256 - v and 0 -> 0: the smallest non-zero value becomes the
        # largest, and "no point" stays the smallest.
        pooled = _axis_max(_axis_max(np.negative(array), size[0], 0), size[1], 1)
        return np.negative(pooled)
    if keep != "max":
        raise ValueError(f"unknown sparse resample '{keep}' (use 'max' or 'nearest_point')")
    return _axis_max(_axis_max(array, size[0], 0), size[1], 1)


def encode_image_input(image: ImageData, size: tuple[int, int], resample: str,
                       out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """float32 [3, h, w] in [0, 1] of a ready image (rgb8/bgr8/rgba8/bgra8 as RGB, mono8 repeated
    to three channels) at `size`, and the number of its pixels that hold anything (non-zero)."""
    if not is_image_input(image):
        raise InputError(f"unsupported encoding '{image.encoding}' for a ready image "
                         f"(supported: {', '.join(IMAGE_INPUT_ENCODINGS)})")
    if resample not in RESAMPLE:
        raise ValueError(f"unknown resample '{resample}' (use {', '.join(RESAMPLE)})")
    h, w = size
    if out is None:
        out = np.empty((3, h, w), np.float32)
    if resample == "area":
        # The camera's resize, then its ImageNet normalization undone: one resize code for both.
        _, _, rgb = encode_rgb(image, size, "area", out=out)
        out *= _STD
        out += _MEAN
        np.clip(out, 0.0, 1.0, out=out)
    else:
        rgb = rgb_to_uint8(image)
        small = resize_sparse(rgb, size, resample)
        np.multiply(small.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=out)
    active = int(np.count_nonzero(rgb.max(axis=2)))
    return out, active
