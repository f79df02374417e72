"""sensor_msgs/Image -> ImageData."""

from __future__ import annotations

import re

import numpy as np

from sam_mmseg_ros.contracts import ImageData, InputError
from sam_mmseg_ros.decoders.common import HOST_IS_BIGENDIAN, host_order, message_bytes

# encoding -> (channels, dtype), as sensor_msgs/image_encodings.hpp defines them.
IMAGE_ENCODINGS: dict[str, tuple[int, np.dtype]] = {
    "rgb8": (3, np.dtype(np.uint8)),
    "bgr8": (3, np.dtype(np.uint8)),
    "rgba8": (4, np.dtype(np.uint8)),
    "bgra8": (4, np.dtype(np.uint8)),
    "mono8": (1, np.dtype(np.uint8)),
    "rgb16": (3, np.dtype(np.uint16)),
    "bgr16": (3, np.dtype(np.uint16)),
    "rgba16": (4, np.dtype(np.uint16)),
    "bgra16": (4, np.dtype(np.uint16)),
    "mono16": (1, np.dtype(np.uint16)),
    # Camera-native layouts (usb_cam, machine-vision cameras), converted to RGB by sensors.rgb:
    # YUV 4:2:2 is two bytes per pixel (Y plus alternating U / V), Bayer one sample per pixel.
    "yuv422_yuy2": (2, np.dtype(np.uint8)),  # Y0 U Y1 V (YUYV), usb_cam's yuyv
    "yuyv": (2, np.dtype(np.uint8)),
    "yuv422": (2, np.dtype(np.uint8)),  # U Y0 V Y1 (UYVY), usb_cam's uyvy
    "uyvy": (2, np.dtype(np.uint8)),
    **{f"bayer_{p}8": (1, np.dtype(np.uint8)) for p in ("rggb", "bggr", "gbrg", "grbg")},
    **{f"bayer_{p}16": (1, np.dtype(np.uint16)) for p in ("rggb", "bggr", "gbrg", "grbg")},
    # NV12 / NV21: a full-resolution Y plane then one half-resolution interleaved UV (VU) plane,
    # `height` x 3/2 rows of `step` bytes, decoded as one [3/2 H, W] plane.
    "nv12": (1, np.dtype(np.uint8)),
    "nv21": (1, np.dtype(np.uint8)),
}
SEMI_PLANAR = ("nv12", "nv21")
_CV_DEPTHS = {"8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16, "32S": np.int32,
              "32F": np.float32, "64F": np.float64}
_CV_TYPE = re.compile(r"^(8U|8S|16U|16S|32S|32F|64F)C([1-4])$")


def image_encoding_info(encoding: str) -> tuple[int, np.dtype]:
    """(channels, element dtype) of a ROS image encoding, including OpenCV-style '16UC1', '32FC1'."""
    if encoding in IMAGE_ENCODINGS:
        return IMAGE_ENCODINGS[encoding]
    match = _CV_TYPE.match(encoding)
    if match:
        return int(match.group(2)), np.dtype(_CV_DEPTHS[match.group(1)])
    raise InputError(f"unsupported image encoding '{encoding}' (supported: "
                     f"{', '.join(IMAGE_ENCODINGS)}, and <8U|8S|16U|16S|32S|32F|64F>C<1-4>)")


def image_to_numpy(msg) -> ImageData:
    """sensor_msgs/Image -> ImageData ([H, W] for one channel, else [H, W, C]).

    A strided view of the message buffer (row padding in `step` is skipped by the stride, not
    copied); only a byte order different from the host's costs a copy. NV12 / NV21 give their
    [3/2 H, W] planes as stored; camera layouts stay as they are (sensors.rgb converts them).
    """
    encoding = str(msg.encoding)
    channels, dtype = image_encoding_info(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise InputError(f"image has zero size {width}x{height} ({encoding})")
    if encoding in SEMI_PLANAR:
        if height % 2 or width % 2:
            raise InputError(f"{encoding} image needs an even width and height, got {width}x{height}")
        height = height * 3 // 2
    elif encoding in ("yuv422_yuy2", "yuyv", "yuv422", "uyvy") and width % 2:
        raise InputError(f"{encoding} image needs an even width (pixels come in pairs), got {width}")
    pixel_bytes = channels * dtype.itemsize
    if step < width * pixel_bytes:
        raise InputError(f"image step {step} is smaller than width {width} x {pixel_bytes} bytes per "
                         f"pixel ({encoding}): width, step or encoding is wrong")
    buf = message_bytes(msg.data)
    if buf.size < step * height:
        raise InputError(f"image buffer truncated: {buf.size} bytes, expected step {step} x height "
                         f"{height} = {step * height} ({width}x{height} {encoding})")
    if bool(msg.is_bigendian) != HOST_IS_BIGENDIAN:
        dtype = dtype.newbyteorder()
    view = np.ndarray(shape=(height, width, channels), dtype=dtype, buffer=buf,
                      strides=(step, pixel_bytes, dtype.itemsize))
    view = host_order(view)
    view.flags.writeable = False
    return ImageData(view[:, :, 0] if channels == 1 else view, encoding)
