"""sensor_msgs/PointCloud2 -> structured arrays, PointCloud (LiDAR) and EventArray (events)."""

from __future__ import annotations

import numpy as np
from numpy.lib import recfunctions

from sam_mmseg_ros.contracts import EventArray, InputError, PointCloud
from sam_mmseg_ros.decoders.common import HOST_IS_BIGENDIAN, NS_PER_S, host_order, message_bytes, stamp_to_ns

# sensor_msgs/PointField datatype constants -> numpy element type.
POINTFIELD_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.int8), 2: np.dtype(np.uint8), 3: np.dtype(np.int16), 4: np.dtype(np.uint16),
    5: np.dtype(np.int32), 6: np.dtype(np.uint32), 7: np.dtype(np.float32), 8: np.dtype(np.float64),
}


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
    buf = message_bytes(msg.data)
    if buf.size < row_step * height:
        raise InputError(f"PointCloud2 data truncated: {buf.size} bytes, expected row_step {row_step}"
                         f" x height {height} = {row_step * height}")
    points = np.ndarray(shape=(height, width), dtype=dtype, buffer=buf, strides=(row_step, point_step))
    points = host_order(points)
    if not keep_organized:
        points = points.reshape(-1)  # a view unless rows are padded
    points.flags.writeable = False
    return points


def field_name(points: np.ndarray, *names: str) -> str | None:
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
    intensity_name = field_name(points, "intensity", "i")
    intensity = points[intensity_name] if intensity_name else None
    return PointCloud(xyz, intensity, str(msg.header.frame_id))


def pointcloud2_to_events(msg, width: int, height: int) -> EventArray:
    """Events carried as a PointCloud2 (one point per event) -> EventArray.

    Fields: x, y (any integer type); t either float64 seconds since the epoch or an integer
    offset in nanoseconds from the header stamp (told apart by the field's datatype); polarity
    (or p) as 0/1 or -1/1. `width` x `height` is the event sensor's resolution.
    """
    points = pointcloud2_to_array(msg)
    names = points.dtype.names
    polarity_name = field_name(points, "polarity", "p")
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
