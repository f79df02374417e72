"""RGB camera encoder: any ROS image encoding -> uint8 RGB -> ImageNet-normalized [3, H, W].

Resizing is the costly step at camera resolution, so it picks the cheapest method that is
still right: block averaging ("area") for integer down-scaling factors, done on uint16 sums
of the interleaved bytes in the message's own channel order (no float or reordered copy of the
full frame). Other factors (1920x1080 -> 512x512) block-average by the largest integer factors
that divide the image, which does the antialiasing, then resample bilinearly. "nearest"
(strided sampling) is the fastest option for integer factors, for deployments that accept
some aliasing.

Camera-native layouts (YUV 4:2:2, NV12/NV21, Bayer mosaics) are converted to RGB first, with
OpenCV: its SIMD colour conversions and demosaicing run a 1080p frame in a few ms (see
docs/BENCHMARKS.md), where numpy would need many full-frame passes. OpenCV is imported only for
those encodings, so the usual rgb8/bgr8 route stays a zero-copy view of the message.
"""

from __future__ import annotations

import numpy as np

from sam_mmseg_ros.contracts import IMAGENET_MEAN, IMAGENET_STD, ImageData, InputError

SATURATED_LEVEL = 250
DARK_LEVEL = 5
STATS_STRIDE = 4
"""Exposure fractions are estimated on every 4th row and column: 1/16 of the pixels gives the
same fraction to well under a percent, at a fraction of the cost."""

_MEAN = np.asarray(IMAGENET_MEAN, np.float32)
_STD = np.asarray(IMAGENET_STD, np.float32)

# encoding -> (channels in the message, dtype, index of R, G, B in the message's channels)
_LAYOUTS: dict[str, tuple[int, type, tuple[int, int, int]]] = {
    "rgb8": (3, np.uint8, (0, 1, 2)),
    "bgr8": (3, np.uint8, (2, 1, 0)),
    "rgba8": (4, np.uint8, (0, 1, 2)),
    "bgra8": (4, np.uint8, (2, 1, 0)),
    "mono8": (1, np.uint8, (0, 0, 0)),
    "rgb16": (3, np.uint16, (0, 1, 2)),
    "bgr16": (3, np.uint16, (2, 1, 0)),
    "rgba16": (4, np.uint16, (0, 1, 2)),
    "bgra16": (4, np.uint16, (2, 1, 0)),
    "mono16": (1, np.uint16, (0, 0, 0)),
}
# Camera layouts -> the OpenCV conversion to RGB. OpenCV names a Bayer pattern by the second row's
# second and third pixels, so ROS's rggb is its "BG" (cv_bridge maps them the same way).
_CAMERA_CONVERSIONS: dict[str, str] = {
    "yuv422_yuy2": "COLOR_YUV2RGB_YUYV", "yuyv": "COLOR_YUV2RGB_YUYV",
    "yuv422": "COLOR_YUV2RGB_UYVY", "uyvy": "COLOR_YUV2RGB_UYVY",
    "nv12": "COLOR_YUV2RGB_NV12", "nv21": "COLOR_YUV2RGB_NV21",
    **{f"bayer_{pattern}{bits}": f"COLOR_Bayer{cv}2RGB"
       for pattern, cv in (("rggb", "BG"), ("bggr", "RG"), ("gbrg", "GR"), ("grbg", "GB")) for bits in (8, 16)},
}
RGB_ENCODINGS: tuple[str, ...] = tuple(_LAYOUTS)
CAMERA_ENCODINGS: tuple[str, ...] = tuple(_CAMERA_CONVERSIONS)


def rgb_to_uint8(image: ImageData) -> np.ndarray:
    """[H, W, 3] uint8 RGB from any supported encoding.

    8-bit colour orders are views of the message buffer (read-only, possibly non-contiguous);
    mono is broadcast to three channels without copying; 16-bit keeps the high byte.
    """
    return _as_rgb(*_decode(image))


def _as_rgb(pixels: np.ndarray, order: tuple[int, int, int]) -> np.ndarray:
    """RGB view of decoded pixels in their own channel layout."""
    if pixels.shape[2] == 1:
        return np.broadcast_to(pixels, (*pixels.shape[:2], 3))
    return pixels[:, :, :3] if order == (0, 1, 2) else pixels[:, :, 2::-1]


def exposure_stats(rgb: np.ndarray) -> dict[str, float]:
    """Fractions of saturated and dark pixels (by their brightest channel)."""
    sample = rgb[::STATS_STRIDE, ::STATS_STRIDE]
    brightest = np.maximum(np.maximum(sample[:, :, 0], sample[:, :, 1]), sample[:, :, 2])
    n = brightest.size
    return {
        "saturated_fraction": float(np.count_nonzero(brightest >= SATURATED_LEVEL)) / n,
        "dark_fraction": float(np.count_nonzero(brightest <= DARK_LEVEL)) / n,
        "nonfinite_count": 0.0,
    }


def encode_rgb(image: ImageData, size: tuple[int, int] = (512, 512), method: str = "area",
               out: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float], np.ndarray]:
    """ImageNet-normalized float32 [3, H, W] at `size` = (H, W), exposure stats, and the camera
    image as uint8 RGB [H, W, 3] (what `rgb_to_uint8` gives, from the same single decode).

    `method`: "area" (block average for integer factors) or "nearest" (strided sampling for
    integer factors); non-integer factors always use antialiased bilinear. `out` is an
    optional [3, H, W] float32 buffer to write into. Works on the message's own channel
    layout (bgr8, rgba8...), so no reordered copy of the full frame is made.
    """
    pixels, order = _decode(image)
    rgb = _as_rgb(pixels, order)
    return _normalize_pixels(pixels, order, size, method, out), exposure_stats(rgb), rgb


def _decode(image: ImageData) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(uint8 [H, W, C] pixels in the message's channel layout, index of R, G, B among them)."""
    if image.encoding in _CAMERA_CONVERSIONS:
        return camera_to_rgb(image), (0, 1, 2)
    layout = _LAYOUTS.get(image.encoding)
    if layout is None:
        raise InputError(f"unsupported image encoding '{image.encoding}' "
                         f"(supported: {', '.join(RGB_ENCODINGS + CAMERA_ENCODINGS)})")
    channels, dtype, order = layout
    array = np.asarray(image.array)
    if array.ndim == 2 and channels == 1:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] != channels or array.dtype != dtype:
        raise InputError(f"image with encoding '{image.encoding}' must be [H, W, {channels}] "
                         f"{np.dtype(dtype).name}, got {list(array.shape)} {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"image '{image.encoding}' is empty ({array.shape[1]}x{array.shape[0]})")
    if dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    return array, order


def camera_to_rgb(image: ImageData) -> np.ndarray:
    """uint8 [H, W, 3] RGB of a YUV 4:2:2, NV12/NV21 or Bayer image (as `decoders.image` gives it).

    16-bit Bayer keeps its high byte before demosaicing: the model sees 8 bits either way, and
    demosaicing 8 bits is half the memory traffic."""
    import cv2

    array = np.asarray(image.array)
    encoding = image.encoding
    expected = (2, np.uint8) if encoding in ("yuv422_yuy2", "yuyv", "yuv422", "uyvy") else (
        1, np.uint16 if encoding.endswith("16") else np.uint8)
    channels = 1 if array.ndim == 2 else array.shape[2]
    if array.ndim not in (2, 3) or channels != expected[0] or array.dtype != expected[1]:
        raise InputError(f"image with encoding '{encoding}' must be [H, W{', 2' if expected[0] == 2 else ''}] "
                         f"{np.dtype(expected[1]).name}, got {list(array.shape)} {array.dtype}")
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise InputError(f"image '{encoding}' is too small ({array.shape[1]}x{array.shape[0]})")
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(array), getattr(cv2, _CAMERA_CONVERSIONS[encoding]))


def _normalize_pixels(pixels: np.ndarray, order: tuple[int, int, int], size: tuple[int, int],
                      method: str, out: np.ndarray | None) -> np.ndarray:
    if method not in ("area", "nearest"):
        raise ValueError(f"unknown resize method '{method}' (use 'area' or 'nearest')")
    h, w = size
    if out is None:
        out = np.empty((3, h, w), np.float32)
    H, W = pixels.shape[:2]
    fy, fx = H // h, W // w
    integer = fy >= 1 and fx >= 1 and fy * h == H and fx * w == W
    if integer and (method == "nearest" or (fy, fx) == (1, 1)):
        _normalize_into(pixels[fy // 2::fy, fx // 2::fx], order, 1.0 / 255.0, out)
    elif integer and fy * fx <= 257:
        _area_normalize_into(pixels, order, fy, fx, out)
    elif integer:
        blocks = pixels.reshape(h, fy, w, fx, pixels.shape[2]).sum(axis=(1, 3))
        _normalize_into(blocks, order, 1.0 / (255.0 * fy * fx), out)
    else:
        # Block-average by the largest integer factors that divide the image and keep it at
        # least as large as the target (this is the antialiasing), then bilinear the rest.
        fy, fx = _largest_divisor(H, max(1, H // h)), _largest_divisor(W, max(1, W // w))
        rows, cols = linear_taps(H // fy, h), linear_taps(W // fx, w)
        for c, plane in enumerate(_block_sum_planes(pixels, order, fy, fx)):
            np.multiply(bilinear(plane, rows, cols), np.float32(1.0 / (255.0 * fy * fx * _STD[c])),
                        out=out[c])
            np.subtract(out[c], np.float32(_MEAN[c] / _STD[c]), out=out[c])
    return out


BAND_BYTES = 256 * 1024
"""Input bytes processed per step: the band (and its uint16 block sums) stays in the L2 cache
while each of the three channels is read from it."""


def _normalize_into(values: np.ndarray, order, to_unit: float, out: np.ndarray) -> None:
    """out[c] = (values[..., order[c]] * to_unit - mean[c]) / std[c], one band of rows and
    one channel at a time."""
    h = out.shape[1]
    band = max(1, BAND_BYTES // (values.shape[1] * values.shape[2] * values.itemsize))
    for top in range(0, h, band):
        rows = slice(top, min(h, top + band))
        for c in range(3):
            np.multiply(values[rows, :, order[c]], np.float32(to_unit / _STD[c]), out=out[c, rows])
            np.subtract(out[c, rows], np.float32(_MEAN[c] / _STD[c]), out=out[c, rows])


def _area_normalize_into(pixels: np.ndarray, order, fy: int, fx: int, out: np.ndarray) -> None:
    """Block average and normalize, one band of output rows and one channel at a time."""
    h = out.shape[1]
    band = max(1, BAND_BYTES // (pixels.shape[1] * pixels.shape[2] * fy))
    for top in range(0, h, band):
        bottom = min(h, top + band)
        for c, plane in enumerate(_block_sum_planes(pixels[top * fy:bottom * fy], order, fy, fx)):
            np.multiply(plane, np.float32(1.0 / (255.0 * fy * fx * _STD[c])), out=out[c, top:bottom])
            np.subtract(out[c, top:bottom], np.float32(_MEAN[c] / _STD[c]), out=out[c, top:bottom])


def _block_sum_planes(pixels: np.ndarray, order, fy: int, fx: int):
    """Yield the uint16 [H / fy, W / fx] block sums of R, G, B (exact for blocks of up to 257
    pixels). Rows are summed on the contiguous interleaved bytes, then each channel's columns
    straight into a small plane: no float or per-channel copy of the full frame."""
    H, W, C = pixels.shape
    h, w = H // fy, W // fx
    rows = np.ascontiguousarray(pixels).reshape(h, fy, W * C)
    acc = rows[:, 0].astype(np.uint16) if fy == 1 else np.add(rows[:, 0], rows[:, 1], dtype=np.uint16)
    for i in range(2, fy):
        acc += rows[:, i]
    stride = C * fx
    for c in range(3):
        src = order[c]
        plane = np.empty((h, w), np.uint16)
        if fx == 1:
            np.copyto(plane, acc[:, src::stride])
        else:
            np.add(acc[:, src::stride], acc[:, src + C::stride], out=plane)
        for j in range(2, fx):
            plane += acc[:, src + C * j::stride]
        yield plane


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(at_most, 16) + 1) if n % d == 0)


def bilinear(plane: np.ndarray, rows, cols) -> np.ndarray:
    """Separable bilinear resample of a [H, W] plane with taps from `linear_taps`."""
    r0, r1, wr = rows
    c0, c1, wc = cols
    src = plane.astype(np.float32)
    vertical = np.take(src, r0, axis=0)
    vertical *= (1 - wr)[:, None]
    vertical += np.take(src, r1, axis=0) * wr[:, None]
    out = np.take(vertical, c0, axis=1)
    out *= 1 - wc
    out += np.take(vertical, c1, axis=1) * wc
    return out


def linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weight for output pixel centres (align_corners=False, clamped)."""
    position = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lower = np.floor(position).astype(np.intp)
    upper = np.minimum(lower + 1, n_in - 1)
    return lower, upper, (position - lower).astype(np.float32)
