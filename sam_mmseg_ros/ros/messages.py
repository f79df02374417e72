"""numpy -> ROS messages: images, point clouds (LiDAR, painted clouds, events), camera info.

The counterpart of `sam_mmseg_ros.decoders`, for the node's outputs, tools and tests. Message
types are imported here only, under `ros/`.
"""

from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from sam_mmseg_ros.contracts import EventArray, InputError, PointCloud
from sam_mmseg_ros.decoders.common import HOST_IS_BIGENDIAN, NS_PER_S, host_order, stamp_to_ns
from sam_mmseg_ros.decoders.image import image_encoding_info
from sam_mmseg_ros.decoders.pointcloud import POINTFIELD_DTYPES
from sam_mmseg_ros.sensors.camera import CameraModel

_DTYPE_TO_POINTFIELD = {dt.str[1:]: code for code, dt in POINTFIELD_DTYPES.items()}


def ns_to_stamp(ns: int):
    """Integer nanoseconds -> builtin_interfaces/Time (nanosec always in [0, 1e9))."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return Time(sec=sec, nanosec=nanosec)


def make_header(header=None, *, stamp_ns: int | None = None, frame_id: str | None = None):
    """A std_msgs/Header: a copy of `header` when given, with `stamp_ns` / `frame_id` overriding."""
    out = Header()
    if header is not None:
        out.stamp = ns_to_stamp(stamp_to_ns(header.stamp))
        out.frame_id = header.frame_id
    if stamp_ns is not None:
        out.stamp = ns_to_stamp(stamp_ns)
    if frame_id is not None:
        out.frame_id = frame_id
    return out


def _to_message_bytes(array_like: np.ndarray) -> array.array:
    """A uint8[] message field value. array.array is what the rclpy setter accepts without a
    per-element check, and frombytes on a memoryview costs one memcpy."""
    flat = np.ascontiguousarray(array_like).reshape(-1).view(np.uint8)
    out = array.array("B")
    out.frombytes(memoryview(flat))
    return out


def numpy_to_image(image: np.ndarray, encoding: str, header=None, *, stamp_ns: int | None = None,
                   frame_id: str | None = None):
    """[H, W] or [H, W, C] array -> sensor_msgs/Image (densely packed, host byte order)."""
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
    msg.data = _to_message_bytes(host_order(image))
    return msg


def array_to_pointcloud2(points: np.ndarray, header=None, *, stamp_ns: int | None = None,
                         frame_id: str | None = None, height: int = 1, is_dense: bool | None = None):
    """Structured array -> sensor_msgs/PointCloud2 keeping its layout (offsets, padding, itemsize).

    A 2-D array [H, W] is written as an organized cloud; otherwise `height` splits the points
    into rows. `is_dense` defaults to "no NaN in any float field".
    """
    if points.dtype.names is None:
        raise InputError("array_to_pointcloud2 needs a structured array with named fields")
    points = host_order(np.asarray(points))
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


EVENT_TIME_FORMATS = ("offset_ns", "float_seconds")


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


def camera_model_to_camera_info(camera: CameraModel, header=None, *, stamp_ns: int | None = None,
                                frame_id: str | None = None):
    """CameraModel -> sensor_msgs/CameraInfo (R identity, P = [K | 0], as for a monocular camera)."""
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
