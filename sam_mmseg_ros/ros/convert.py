"""ROS message <-> numpy conversion for images, point clouds, event streams and camera info.

Decoders only read attributes, so they accept rclpy messages and `rosbags` message dataclasses
alike (same field names; `data` is array.array / bytes in rclpy and a uint8 ndarray in rosbags):
offline bag evaluation and the live node decode with the same code. Decoded arrays are views of
the message buffer whenever the layout allows it (no copy), and are marked read-only.

Builders (numpy -> message) import the message types lazily, so importing this module never
imports rclpy. Anything a sensor could get wrong raises `contracts.InputError`.
"""

from __future__ import annotations

import array
import re
import sys

import numpy as np
from numpy.lib import recfunctions

from sam_mmseg_ros.contracts import EventArray, ImageData, InputError, PointCloud
from sam_mmseg_ros.sensors.camera import CameraModel

NS_PER_S = 1_000_000_000
HOST_IS_BIGENDIAN = sys.byteorder == "big"

# ---------------------------------------------------------------------------------------- stamps


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (or anything with sec, nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns: int):
    """Integer nanoseconds -> builtin_interfaces/Time (nanosec always in [0, 1e9))."""
    from builtin_interfaces.msg import Time

    sec, nanosec = divmod(int(ns), NS_PER_S)
    return Time(sec=sec, nanosec=nanosec)


def make_header(header=None, *, stamp_ns: int | None = None, frame_id: str | None = None):
    """A std_msgs/Header: a copy of `header` when given, with `stamp_ns` / `frame_id` overriding."""
    from std_msgs.msg import Header

    out = Header()
    if header is not None:
        out.stamp = ns_to_stamp(stamp_to_ns(header.stamp))
        out.frame_id = header.frame_id
    if stamp_ns is not None:
        out.stamp = ns_to_stamp(stamp_ns)
    if frame_id is not None:
        out.frame_id = frame_id
    return out


def _buffer(data) -> np.ndarray:
    """The message's byte buffer as a uint8 array, without copying (bytes, array.array, ndarray)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _to_message_bytes(array_like: np.ndarray) -> array.array:
    """A uint8[] message field value. array.array is what the rclpy setter accepts without a
    per-element check, and frombytes on a memoryview costs one memcpy."""
    flat = np.ascontiguousarray(array_like).reshape(-1).view(np.uint8)
    out = array.array("B")
    out.frombytes(memoryview(flat))
    return out


def _native(arr: np.ndarray) -> np.ndarray:
    """`arr` in host byte order: a view when it already is, else one byteswapping copy."""
    native = arr.dtype.newbyteorder("=")
    if arr.dtype == native:
        return arr
    return arr.astype(native)


# ---------------------------------------------------------------------------------------- images

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
}
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
    copied); only a byte order different from the host's costs a copy.
    """
    encoding = str(msg.encoding)
    channels, dtype = image_encoding_info(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise InputError(f"image has zero size {width}x{height} ({encoding})")
    pixel_bytes = channels * dtype.itemsize
    if step < width * pixel_bytes:
        raise InputError(f"image step {step} is smaller than width {width} x {pixel_bytes} bytes per "
                         f"pixel ({encoding}): width, step or encoding is wrong")
    buf = _buffer(msg.data)
    if buf.size < step * height:
        raise InputError(f"image buffer truncated: {buf.size} bytes, expected step {step} x height "
                         f"{height} = {step * height} ({width}x{height} {encoding})")
    if bool(msg.is_bigendian) != HOST_IS_BIGENDIAN:
        dtype = dtype.newbyteorder()
    view = np.ndarray(shape=(height, width, channels), dtype=dtype, buffer=buf,
                      strides=(step, pixel_bytes, dtype.itemsize))
    view = _native(view)
    view.flags.writeable = False
    return ImageData(view[:, :, 0] if channels == 1 else view, encoding)


def numpy_to_image(image: np.ndarray, encoding: str, header=None, *, stamp_ns: int | None = None,
                   frame_id: str | None = None):
    """[H, W] or [H, W, C] array -> sensor_msgs/Image (densely packed, host byte order)."""
    from sensor_msgs.msg import Image

    channels, dtype = image_encoding_info(encoding)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] != channels:
        raise InputError(f"array of shape {image.shape} does not fit encoding '{encoding}' "
                         f"({channels} channel(s))")
    if image.dtype.newbyteorder("=") != dtype:
        raise InputError(f"array dtype {image.dtype} does not fit encoding '{encoding}' ({dtype})")
    height, width = image.shape[:2]
    msg = Image()
    msg.header = make_header(header, stamp_ns=stamp_ns, frame_id=frame_id)
    msg.height, msg.width, msg.encoding = int(height), int(width), encoding
    msg.is_bigendian = HOST_IS_BIGENDIAN
    msg.step = int(width * channels * dtype.itemsize)
    msg.data = _to_message_bytes(_native(image))
    return msg


# ----------------------------------------------------------------------------------- point clouds

# sensor_msgs/PointField datatype constants -> numpy element type.
POINTFIELD_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.int8), 2: np.dtype(np.uint8), 3: np.dtype(np.int16), 4: np.dtype(np.uint16),
    5: np.dtype(np.int32), 6: np.dtype(np.uint32), 7: np.dtype(np.float32), 8: np.dtype(np.float64),
}
_DTYPE_TO_POINTFIELD = {dt.str[1:]: code for code, dt in POINTFIELD_DTYPES.items()}


def pointfields_to_dtype(fields, point_step: int, bigendian: bool = HOST_IS_BIGENDIAN) -> np.dtype:
    """The structured dtype of one point: names, formats, offsets and itemsize from the PointFields.

    A field with count > 1 becomes a subarray field of shape (count,); unnamed fields are padding
    and are left out.
    """
    names, formats, offsets = [], [], []
    for field in fields:
        if not field.name:
            continue
        if field.datatype not in POINTFIELD_DTYPES:
            raise InputError(f"PointField '{field.name}' has unknown datatype {field.datatype}")
        if field.name in names:
            raise InputError(f"PointCloud2 has duplicate field '{field.name}'")
        base = POINTFIELD_DTYPES[field.datatype]
        if bigendian != HOST_IS_BIGENDIAN:
            base = base.newbyteorder()
        count = max(int(field.count), 1)
        if field.offset + count * base.itemsize > point_step:
            raise InputError(f"PointField '{field.name}' (offset {field.offset}, {count} x "
                             f"{base.itemsize} bytes) overruns point_step {point_step}")
        names.append(field.name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(int(field.offset))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})


def pointcloud2_to_array(msg, keep_organized: bool = False) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> structured array [height * width] (or [height, width] when
    `keep_organized`), one named field per PointField, in host byte order.

    Zero-copy for densely packed rows in host byte order; row_step padding or a foreign byte order
    costs one copy.
    """
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    dtype = pointfields_to_dtype(msg.fields, point_step, bool(msg.is_bigendian))
    if height * width == 0:
        empty = np.zeros((height, width), dtype=dtype)
        return empty if keep_organized else empty.reshape(-1)
    if point_step <= 0 or row_step < width * point_step:
        raise InputError(f"PointCloud2 row_step {row_step} is smaller than width {width} x "
                         f"point_step {point_step}")
    buf = _buffer(msg.data)
    if buf.size < row_step * height:
        raise InputError(f"PointCloud2 data truncated: {buf.size} bytes, expected row_step {row_step}"
                         f" x height {height} = {row_step * height}")
    points = np.ndarray(shape=(height, width), dtype=dtype, buffer=buf, strides=(row_step, point_step))
    points = _native(points)
    if not keep_organized:
        points = points.reshape(-1)  # a view unless rows are padded
    points.flags.writeable = False
    return points


def _field(points: np.ndarray, *names: str) -> str | None:
    return next((n for n in names if n in points.dtype.names), None)


def pointcloud2_to_cloud(msg) -> PointCloud:
    """sensor_msgs/PointCloud2 -> PointCloud: xyz [N, 3] in the stored float type (a view when x, y,
    z are adjacent), intensity from field 'intensity' or 'i' when present. NaN points are kept;
    projection drops them."""
    points = pointcloud2_to_array(msg)
    missing = [n for n in ("x", "y", "z") if n not in points.dtype.names]
    if missing:
        raise InputError(f"PointCloud2 has no field(s) {missing} (fields: {list(points.dtype.names)})")
    xyz_fields = points[["x", "y", "z"]]
    types = {points.dtype.fields[n][0] for n in ("x", "y", "z")}
    stored = types.pop() if len(types) == 1 else None
    out_type = stored if stored in (np.float32, np.float64) else np.dtype(np.float32)
    xyz = recfunctions.structured_to_unstructured(xyz_fields, dtype=out_type)
    intensity_name = _field(points, "intensity", "i")
    intensity = points[intensity_name] if intensity_name else None
    return PointCloud(xyz, intensity, str(msg.header.frame_id))


def array_to_pointcloud2(points: np.ndarray, header=None, *, stamp_ns: int | None = None,
                         frame_id: str | None = None, height: int = 1, is_dense: bool | None = None):
    """Structured array -> sensor_msgs/PointCloud2 keeping its layout (offsets, padding, itemsize).

    A 2-D array [H, W] is written as an organized cloud; otherwise `height` splits the points
    into rows. `is_dense` defaults to "no NaN in any float field".
    """
    from sensor_msgs.msg import PointCloud2, PointField

    if points.dtype.names is None:
        raise InputError("array_to_pointcloud2 needs a structured array with named fields")
    points = _native(np.asarray(points))
    if points.ndim == 2:
        height, width = points.shape
    else:
        if height <= 0 or points.size % height:
            raise InputError(f"{points.size} points cannot be split into {height} rows")
        width = points.size // height
    fields = []
    for name in points.dtype.names:
        field_dtype, offset = points.dtype.fields[name][:2]
        code = _DTYPE_TO_POINTFIELD.get(field_dtype.base.str[1:])
        if code is None:
            raise InputError(f"field '{name}' has dtype {field_dtype.base}, which PointField cannot hold")
        count = int(np.prod(field_dtype.shape)) if field_dtype.shape else 1
        fields.append(PointField(name=name, offset=int(offset), datatype=code, count=count))
    if is_dense is None:
        is_dense = not any(np.isnan(points[n]).any() for n in points.dtype.names
                           if points.dtype.fields[n][0].base.kind == "f")
    msg = PointCloud2()
    msg.header = make_header(header, stamp_ns=stamp_ns, frame_id=frame_id)
    msg.height, msg.width = int(height), int(width)
    msg.fields = fields
    msg.is_bigendian = HOST_IS_BIGENDIAN
    msg.point_step = int(points.dtype.itemsize)
    msg.row_step = int(points.dtype.itemsize * width)
    msg.is_dense = bool(is_dense)
    msg.data = _to_message_bytes(points)
    return msg


def cloud_to_pointcloud2(cloud: PointCloud, header=None, *, stamp_ns: int | None = None,
                         frame_id: str | None = None):
    """PointCloud -> PointCloud2 with x, y, z in the cloud's float type (+ float32 intensity)."""
    xyz = np.asarray(cloud.xyz)
    float_type = xyz.dtype if xyz.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    spec = [("x", float_type), ("y", float_type), ("z", float_type)]
    if cloud.intensity is not None:
        spec.append(("intensity", np.float32))
    points = np.empty(len(cloud), dtype=spec)
    points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if cloud.intensity is not None:
        points["intensity"] = cloud.intensity
    return array_to_pointcloud2(points, header, stamp_ns=stamp_ns,
                                frame_id=cloud.frame_id if frame_id is None else frame_id)


# ------------------------------------------------------------------------------------------ events

EVENT_TIME_FORMATS = ("offset_ns", "float_seconds")


def pointcloud2_to_events(msg, width: int, height: int) -> EventArray:
    """Events carried as a PointCloud2 (one point per event) -> EventArray.

    Fields: x, y (any integer type); t either float64 seconds since the epoch or an integer
    offset in nanoseconds from the header stamp (told apart by the field's datatype); polarity
    (or p) as 0/1 or -1/1. `width` x `height` is the event sensor's resolution.
    """
    points = pointcloud2_to_array(msg)
    names = points.dtype.names
    polarity_name = _field(points, "polarity", "p")
    missing = [n for n in ("x", "y", "t") if n not in names] + ([] if polarity_name else ["polarity"])
    if missing:
        raise InputError(f"event PointCloud2 has no field(s) {missing} (fields: {list(names)})")
    for name in ("x", "y"):
        if points.dtype.fields[name][0].kind not in "iu":
            raise InputError(f"event field '{name}' must be an integer type, got {points.dtype.fields[name][0]}")
    x, y = points["x"].astype(np.int32), points["y"].astype(np.int32)
    outside = (x < 0) | (x >= width) | (y < 0) | (y >= height)
    if outside.any():
        raise InputError(f"{int(outside.sum())} of {len(x)} events lie outside the {width}x{height} "
                         f"event sensor (x in [{x.min()}, {x.max()}], y in [{y.min()}, {y.max()}])")
    t = points["t"]
    if t.dtype == np.float64:
        t_ns = np.round(t * NS_PER_S).astype(np.int64)
    elif t.dtype.kind in "iu":
        t_ns = stamp_to_ns(msg.header.stamp) + t.astype(np.int64)
    else:
        raise InputError(f"event field 't' must be float64 seconds or an integer nanosecond offset, "
                         f"got {t.dtype}")
    polarity = np.where(points[polarity_name] > 0, 1, -1).astype(np.int8)
    return EventArray(x, y, t_ns, polarity, int(width), int(height))


def events_to_pointcloud2(events: EventArray, header=None, *, stamp_ns: int | None = None,
                          frame_id: str | None = None, time_format: str = "offset_ns"):
    """EventArray -> PointCloud2 with x, y (uint16), polarity (int8, +-1) and t.

    time_format 'offset_ns': t is uint32 nanoseconds after the header stamp (default stamp: the
    earliest event), which spans 4.29 s per message. 'float_seconds': t is float64 seconds since
    the epoch.
    """
    if time_format not in EVENT_TIME_FORMATS:
        raise InputError(f"time_format must be one of {EVENT_TIME_FORMATS}, got '{time_format}'")
    if header is None and stamp_ns is None:
        stamp_ns = int(events.t_ns.min()) if len(events) else 0
    header_ns = stamp_ns if stamp_ns is not None else stamp_to_ns(header.stamp)
    if time_format == "offset_ns":
        offsets = events.t_ns.astype(np.int64) - header_ns
        if len(events) and (offsets.min() < 0 or offsets.max() >= 2**32):
            raise InputError(f"event times span [{offsets.min()}, {offsets.max()}] ns from the header "
                             f"stamp; 'offset_ns' holds [0, 2^32)")
        t_type, t_values = np.uint32, offsets
    else:
        t_type, t_values = np.float64, events.t_ns / NS_PER_S
    # t at offset 8 keeps a float64 aligned; 3 padding bytes after polarity.
    dtype = np.dtype({"names": ["x", "y", "polarity", "t"],
                      "formats": [np.uint16, np.uint16, np.int8, t_type],
                      "offsets": [0, 2, 4, 8], "itemsize": 8 + np.dtype(t_type).itemsize})
    points = np.zeros(len(events), dtype=dtype)
    points["x"], points["y"] = events.x, events.y
    points["polarity"] = np.where(events.polarity > 0, 1, -1)
    points["t"] = t_values
    return array_to_pointcloud2(points, header, stamp_ns=stamp_ns, frame_id=frame_id, is_dense=True)


# ------------------------------------------------------------------------------------- camera info


def camera_info_to_model(msg) -> CameraModel:
    """sensor_msgs/CameraInfo -> CameraModel; an unusable calibration raises InputError."""
    try:
        return CameraModel.from_camera_info(msg.width, msg.height, msg.distortion_model, msg.d, msg.k,
                                            msg.p, frame_id=str(msg.header.frame_id))
    except InputError:
        raise
    except (ValueError, TypeError) as exc:
        raise InputError(f"camera_info cannot be read: {exc}") from exc


def camera_model_to_camera_info(camera: CameraModel, header=None, *, stamp_ns: int | None = None,
                                frame_id: str | None = None):
    """CameraModel -> sensor_msgs/CameraInfo (R identity, P = [K | 0], as for a monocular camera)."""
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    msg.header = make_header(header, stamp_ns=stamp_ns,
                             frame_id=camera.frame_id if frame_id is None and header is None else frame_id)
    msg.width, msg.height = int(camera.width), int(camera.height)
    msg.distortion_model = camera.distortion_model or "plumb_bob"
    msg.d = [float(v) for v in camera.D]
    msg.k = camera.K.astype(np.float64).ravel()
    msg.r = np.eye(3).ravel()
    msg.p = np.hstack([camera.K, np.zeros((3, 1))]).ravel()
    return msg
