"""Modalities as images: a ready uint8 image, or the sparse pixels of one, -> float32 [3, h, w] in
[0, 1] at the model input size.

DELIVER stores depth (HHA), events and LiDAR as images, an upstream node may publish event frames,
and the node's DELIVER-style encoders turn an event stream or a cloud into the pixels of such an
image. Training on DELIVER files, a DELIVER bag fed to the node and the live DELIVER-style
encoders all end here, so one frame gives the model the same input whichever way it came.

How an image is brought to the model input size depends on what its pixels mean (the
encoding's `image_resample`, sensors/encodings.py):
- "area" (dense images such as HHA): block average, antialiased bilinear otherwise, exactly as
  the RGB camera (`sensors.rgb`);
- "max" (sparse events): each input pixel takes the maximum over the image pixels it covers
  (rows [floor(i H / h), floor((i + 1) H / h)), same for columns), so a single event pixel
  survives any downscale, where nearest-neighbour sampling drops most of them;
- "nearest_point" (sparse LiDAR ranges, 0 = no point): the smallest non-zero value over the
  covered pixels, i.e. the nearest point, as a z-buffer keeps it.
Upscaling (a low-resolution event sensor) repeats pixels, nearest-neighbour (input pixel
floor(i H / h)), as DELIVER's loader upsamples its low-resolution event images.

Sparse images are pooled from their non-zero pixels only (a few percent of the image): one
scatter of those into the small output instead of reductions over every pixel, which measured
5-10x slower at 1024x1024.
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


def _bins(n_in: int, n_out: int) -> np.ndarray:
    """Output index of every input index along an axis that is not upscaled (n_out <= n_in)."""
    starts = (np.arange(n_out) * n_in) // n_out
    return np.searchsorted(starts, np.arange(n_in), side="right") - 1


def pool_sparse(rows: np.ndarray, cols: np.ndarray, channels: np.ndarray | int, values: np.ndarray | int,
                in_size: tuple[int, int], size: tuple[int, int], keep: str, n_channels: int) -> np.ndarray:
    """uint8 [h, w, n_channels] of a sparse image of `in_size` = (H, W) given by its non-zero
    entries (row, column, channel, uint8 value; a scalar channel or value applies to all):
    "max" or "nearest_point" (the smallest non-zero value) per covered block,
    nearest-neighbour along upscaled axes."""
    if keep not in ("max", "nearest_point"):
        raise ValueError(f"unknown sparse resample '{keep}' (use 'max' or 'nearest_point')")
    (H, W), (h, w) = in_size, size
    mid_h, mid_w = min(H, h), min(W, w)  # pool where the image shrinks, repeat where it grows
    # int32 tables scaled to flat offsets: two gathers and adds per entry, no int64 temporaries.
    target = np.take((_bins(H, mid_h) * (mid_w * n_channels)).astype(np.int32), rows)
    target += np.take((_bins(W, mid_w) * n_channels).astype(np.int32), cols)
    target += channels
    out = np.zeros(mid_h * mid_w * n_channels, np.uint8)
    if np.isscalar(values):  # one value (DVS images): a plain scatter, ~10x faster than maximum.at
        out[target] = values
    else:
        # Negation in uint8 maps v -> 256 - v and keeps 0: the smallest non-zero value becomes the
        # largest, and "nothing" stays the smallest.
        np.maximum.at(out, target, np.negative(values) if keep == "nearest_point" else values)
        if keep == "nearest_point":
            np.negative(out, out=out)
    out = out.reshape(mid_h, mid_w, n_channels)
    if h > mid_h:
        out = np.take(out, (np.arange(h) * H) // h, axis=0)
    if w > mid_w:
        out = np.take(out, (np.arange(w) * W) // w, axis=1)
    return out


def resize_sparse(array: np.ndarray, size: tuple[int, int], keep: str = "max") -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [h, w, C] by `pool_sparse` of its non-zero entries."""
    pooled, _ = _pool_image(np.ascontiguousarray(array), size, keep)
    return pooled


def _pool_image(pixels: np.ndarray, size: tuple[int, int], keep: str) -> tuple[np.ndarray, int]:
    """`pool_sparse` of a contiguous uint8 [H, W, C] image's non-zero entries, and how many
    pixels hold anything."""
    H, W, C = pixels.shape
    flat = np.flatnonzero(pixels)
    index, channels = np.divmod(flat, C)
    rows, cols = np.divmod(index, W)
    pooled = pool_sparse(rows, cols, channels, pixels.reshape(-1)[flat], (H, W), size, keep, C)
    return pooled, int(index.size and 1 + np.count_nonzero(np.diff(index)))  # `index` is sorted


def sparse_to_unit(pooled: np.ndarray, out: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 1 or 3] -> out float32 [3, h, w] in [0, 1] (one channel is repeated)."""
    np.multiply(pooled.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=out)
    return out


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
        return out, int(np.count_nonzero(rgb.max(axis=2)))
    # mono8 stays one channel (no 3x copy); colour orders become contiguous RGB once.
    if image.encoding == "mono8":
        array = np.asarray(image.array)
        pixels = np.ascontiguousarray(array.reshape(array.shape[0], array.shape[1], 1))
    else:
        pixels = np.ascontiguousarray(rgb_to_uint8(image))
    pooled, active = _pool_image(pixels, size, resample)
    return sparse_to_unit(pooled, out), active
