"""sensor_msgs/CompressedImage -> ImageData: image_transport's `compressed` (JPEG, PNG) and
`compressedDepth` (PNG of 16-bit depth, or of quantized inverse depth for 32FC1) transports.

The `format` field is read the way image_transport's subscribers read it: "<encoding>; jpeg
compressed bgr8" (newer publishers: the original encoding, then what the compressed bytes hold),
or a bare "jpeg" / "png" (older ones, whose bytes are BGR). OpenCV decodes (libjpeg-turbo and
libpng, the libraries image_transport itself uses); colour comes out in the stored channel order
and is labelled so (bgr8 for image_transport's own output), which sensors.rgb reads without a
reordering copy.
"""

from __future__ import annotations

import numpy as np

from sam_mmseg_ros.contracts import ImageData, InputError
from sam_mmseg_ros.decoders.common import message_bytes

JPEG_END = b"\xff\xd9"
CONFIG_HEADER = np.dtype([("format", "<i4"), ("quant_a", "<f4"), ("quant_b", "<f4")])
"""compressed_depth_image_transport's ConfigHeader, written before the PNG: compression format
(0: inverse depth) and the two quantization parameters, in the publisher's (little-endian) order."""

_COLOR = ("rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16")


def _cv2():
    import cv2

    return cv2


def _split_format(fmt: str) -> tuple[str, str]:
    """'rgb8; jpeg compressed bgr8' -> ('rgb8', ' jpeg compressed bgr8'); 'jpeg' -> ('', 'jpeg')."""
    if ";" not in fmt:
        return "", fmt
    encoding, rest = fmt.split(";", 1)
    return encoding.strip(), rest


def _imdecode(data: np.ndarray, what: str) -> np.ndarray:
    image = _cv2().imdecode(data, -1)  # IMREAD_UNCHANGED: keep 16 bits, alpha and grey
    if image is None or image.size == 0:
        raise InputError(f"{what} ({data.size} bytes) could not be decoded: truncated, corrupt or not "
                         f"JPEG/PNG")
    return image


def compressed_image_to_numpy(msg) -> ImageData:
    """sensor_msgs/CompressedImage (image_transport `compressed`) -> ImageData in the stored channel
    order: bgr8 / bgra8 / mono8 (or their 16-bit forms for 16-bit PNG), rgb8 / rgba8 when an older
    publisher compressed RGB bytes as they were ("rgb8; jpeg compressed " without a bgr target).

    A JPEG without its end-of-image marker is refused: libjpeg fills a truncated image with grey
    and reports success, which would pass a half-grey frame to the model as a good one."""
    fmt = str(msg.format)
    data = message_bytes(msg.data)
    what = f"compressed image '{fmt}'"
    if data.size == 0:
        raise InputError(f"{what} is empty (0 bytes)")
    if "compressedDepth" in fmt:
        raise InputError(f"{what} is a compressedDepth depth image, not a camera image")
    original, rest = _split_format(fmt)
    is_jpeg = bytes(data[:2]) == b"\xff\xd8"
    if is_jpeg and JPEG_END not in bytes(data[-16:]):
        raise InputError(f"{what} is truncated: the JPEG ends without its end-of-image marker "
                         f"({data.size} bytes)")
    image = _imdecode(data, what)
    channels = 1 if image.ndim == 2 else image.shape[2]
    bits = "16" if image.dtype == np.uint16 else "8"
    if image.dtype not in (np.uint8, np.uint16) or channels not in (1, 3, 4):
        raise InputError(f"{what} decoded to an unsupported {channels}-channel {image.dtype} image")
    if channels == 1:
        return ImageData(image, f"mono{bits}")
    # image_transport's subscriber: the bytes are BGR unless a newer-format colour message lacks the
    # "compressed bgr" target, in which case the publisher compressed them in their own (RGB) order.
    stored_rgb = bool(original) and original in _COLOR and "compressed bgr" not in rest
    order = "rgb" if stored_rgb else "bgr"
    return ImageData(image, f"{order}{'a' if channels == 4 else ''}{bits}")


def compressed_depth_to_numpy(msg) -> ImageData:
    """sensor_msgs/CompressedImage (image_transport `compressedDepth`) -> 16UC1 or 32FC1 ImageData.

    The payload is the 12-byte ConfigHeader, then a PNG: 16-bit depth as is for 16UC1, and for
    32FC1 the inverse depth quantized by the publisher as q = A / depth + B, decoded here as
    depth = A / (q - B) with q = 0 meaning no depth (NaN), in float32 as the reference subscriber
    does. The `rvl` variant is refused with that reason."""
    fmt = str(msg.format)
    data = message_bytes(msg.data)
    what = f"compressedDepth image '{fmt}'"
    encoding, rest = _split_format(fmt)
    if "rvl" in rest:
        raise InputError(f"{what}: the RVL codec is not supported (publish with format png)")
    if encoding not in ("16UC1", "mono16", "32FC1"):
        raise InputError(f"{what}: unsupported depth encoding '{encoding}' (16UC1, mono16 or 32FC1)")
    if data.size <= CONFIG_HEADER.itemsize:
        raise InputError(f"{what} is truncated: {data.size} bytes, not even the "
                         f"{CONFIG_HEADER.itemsize}-byte header and a PNG")
    header = np.frombuffer(data[:CONFIG_HEADER.itemsize].tobytes(), CONFIG_HEADER)[0]
    image = _imdecode(data[CONFIG_HEADER.itemsize:], what)
    if image.ndim != 2 or image.dtype != np.uint16:
        raise InputError(f"{what}: the PNG holds a {image.dtype} image of shape {list(image.shape)}, "
                         f"expected one 16-bit channel")
    if encoding != "32FC1":
        return ImageData(image, "16UC1")
    quant_a, quant_b = np.float32(header["quant_a"]), np.float32(header["quant_b"])
    if not (np.isfinite(quant_a) and np.isfinite(quant_b)) or quant_a == 0:
        raise InputError(f"{what}: invalid quantization parameters A={quant_a}, B={quant_b}")
    depth = image.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth -= quant_b
        np.divide(quant_a, depth, out=depth)
    depth[image == 0] = np.nan
    return ImageData(depth, "32FC1")
