"""Message decoders (sam_mmseg_ros.decoders) and builders (sam_mmseg_ros.ros.messages).

Decoders are duck-typed, so most tests feed them plain namespaces with message field names and
run without ROS; builders and the rclpy/rosbags cross-checks are marked `ros`.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from sam_mmseg_ros.contracts import EventArray, InputError, PointCloud
from sam_mmseg_ros.decoders.camera_info import camera_info_to_model
from sam_mmseg_ros.decoders.common import stamp_to_ns
from sam_mmseg_ros.decoders.image import image_encoding_info, image_to_numpy
from sam_mmseg_ros.decoders.pointcloud import (
    pointcloud2_to_array,
    pointcloud2_to_cloud,
    pointcloud2_to_events,
)
from sam_mmseg_ros.sensors.camera import CameraModel

INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
STAMP_NS = 1_700_000_123_456_789_012


@pytest.fixture
def messages():
    """The builders need rclpy's message types (the decoders do not)."""
    return pytest.importorskip("sam_mmseg_ros.ros.messages")


def fake_header(stamp_ns=STAMP_NS, frame_id="cam"):
    sec, nanosec = divmod(stamp_ns, 10**9)
    return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id=frame_id)


def fake_image(array, encoding, step=None, bigendian=False, data=None):
    """An Image-shaped namespace; rows padded to `step` bytes with 0xAB."""
    array = np.asarray(array)
    height, width = array.shape[:2]
    row = array.astype(array.dtype.newbyteorder(">" if bigendian else "<")).reshape(height, -1)
    row = row.view(np.uint8).reshape(height, -1)
    step = row.shape[1] if step is None else step
    padded = np.full((height, step), 0xAB, np.uint8)
    padded[:, : row.shape[1]] = row
    return SimpleNamespace(header=fake_header(), height=height, width=width, encoding=encoding,
                           is_bigendian=int(bigendian), step=step,
                           data=padded.tobytes() if data is None else data)


def fake_field(name, offset, datatype, count=1):
    return SimpleNamespace(name=name, offset=offset, datatype=datatype, count=count)


def fake_cloud(points, fields, height=1, row_pad=0, bigendian=False, frame_id="lidar"):
    """A PointCloud2-shaped namespace from a structured array laid out exactly as `fields` say."""
    points = np.asarray(points)
    width = points.size // height if height else 0
    swapped = points.astype(points.dtype.newbyteorder(">" if bigendian else "<"))
    rows = swapped.reshape(height, width).view(np.uint8).reshape(height, -1) if points.size else \
        np.zeros((height, 0), np.uint8)
    row_step = rows.shape[1] + row_pad
    data = np.zeros((height, row_step), np.uint8)
    data[:, : rows.shape[1]] = rows
    return SimpleNamespace(header=fake_header(frame_id=frame_id), height=height, width=width,
                           fields=fields, is_bigendian=bigendian, point_step=points.dtype.itemsize,
                           row_step=row_step, data=data.tobytes(), is_dense=False)


def random_image(encoding, height=5, width=7, seed=0):
    channels, dtype = image_encoding_info(encoding)
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "rgb16", "bgr16", "rgba16", "bgra16", "mono16",
             "16UC1", "32FC1", "8UC1", "8UC3"]

# ----------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_image_decodes_every_encoding_as_a_view(encoding):
    expected = random_image(encoding)
    msg = fake_image(expected, encoding)
    image = image_to_numpy(msg)
    assert image.encoding == encoding
    assert image.array.dtype == expected.dtype.newbyteorder("=")
    np.testing.assert_array_equal(image.array, expected)
    assert np.shares_memory(image.array, np.frombuffer(msg.data, np.uint8))
    assert not image.array.flags.writeable


def test_image_step_padding_is_skipped_without_copy():
    expected = random_image("rgb8", 4, 5)
    msg = fake_image(expected, "rgb8", step=5 * 3 + 9)
    image = image_to_numpy(msg)
    np.testing.assert_array_equal(image.array, expected)
    assert np.shares_memory(image.array, np.frombuffer(msg.data, np.uint8))
    assert image.array.strides == (24, 3, 1)


@pytest.mark.parametrize("encoding", ["mono16", "rgb16", "32FC1", "16UC1"])
def test_big_endian_image_is_byteswapped_to_host_order(encoding):
    expected = random_image(encoding, seed=3)
    image = image_to_numpy(fake_image(expected, encoding, step=None, bigendian=True))
    assert image.array.dtype.isnative
    np.testing.assert_array_equal(image.array, expected)


def test_big_endian_padded_float_image():
    expected = random_image("32FC1", 3, 4)
    image = image_to_numpy(fake_image(expected, "32FC1", step=4 * 4 + 6, bigendian=True))
    np.testing.assert_array_equal(image.array, expected)


def test_image_accepts_array_array_and_ndarray_buffers():
    import array

    expected = random_image("bgr8")
    msg = fake_image(expected, "bgr8")
    for data in (array.array("B", msg.data), np.frombuffer(msg.data, np.uint8).copy()):
        msg.data = data
        np.testing.assert_array_equal(image_to_numpy(msg).array, expected)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (dict(data=b"\0" * (5 * 21 - 1)), "truncated"),
        (dict(step=20), "smaller than width"),
        (dict(encoding="yuv420"), "unsupported image encoding"),
        (dict(width=0, step=0, data=b""), "zero size"),
        (dict(encoding="rgb16"), "smaller than width"),  # 7 px x 6 bytes do not fit a 21-byte step
    ],
)
def test_bad_images_raise_input_error(change, reason):
    msg = fake_image(random_image("rgb8"), "rgb8")
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(InputError, match=reason):
        image_to_numpy(msg)


# ----------------------------------------------------------------------------------- point clouds

XYZI_PADDED = np.dtype({"names": ["x", "y", "z", "intensity"], "formats": ["<f4"] * 4,
                        "offsets": [0, 4, 8, 16], "itemsize": 32})
XYZI_FIELDS = [fake_field("x", 0, FLOAT32), fake_field("y", 4, FLOAT32), fake_field("z", 8, FLOAT32),
               fake_field("intensity", 16, FLOAT32)]


def random_points(dtype, n, seed=0):
    rng = np.random.default_rng(seed)
    points = np.zeros(n, dtype)
    for name in dtype.names:
        points[name] = rng.uniform(-50, 50, points[name].shape).astype(dtype.fields[name][0].base)
    return points


def assert_points_equal(actual, expected):
    """Field by field, so NaN == NaN (structured comparison treats NaN as unequal)."""
    assert actual.dtype.names == expected.dtype.names and actual.shape == expected.shape
    for name in expected.dtype.names:
        np.testing.assert_array_equal(actual[name], expected[name])


def test_float32_cloud_with_padding_decodes_as_views():
    points = random_points(XYZI_PADDED, 11)
    msg = fake_cloud(points, XYZI_FIELDS)
    decoded = pointcloud2_to_array(msg)
    assert decoded.dtype.itemsize == 32 and decoded.dtype.names == ("x", "y", "z", "intensity")
    for name in ("x", "y", "z", "intensity"):
        np.testing.assert_array_equal(decoded[name], points[name])
    cloud = pointcloud2_to_cloud(msg)
    assert cloud.xyz.dtype == np.float32 and cloud.xyz.shape == (11, 3)
    np.testing.assert_array_equal(cloud.xyz, np.stack([points["x"], points["y"], points["z"]], 1))
    np.testing.assert_array_equal(cloud.intensity, points["intensity"])
    assert cloud.frame_id == "lidar"
    buffer = np.frombuffer(msg.data, np.uint8)
    assert np.shares_memory(cloud.xyz, buffer) and np.shares_memory(cloud.intensity, buffer)


def test_float64_cloud_with_extra_fields_and_count():
    dtype = np.dtype({"names": ["ring", "x", "y", "z", "i", "rgb", "time", "normal"],
                      "formats": ["<u2", "<f8", "<f8", "<f8", "<u1", "<u4", "<f8", ("<f4", (3,))],
                      "offsets": [0, 8, 16, 24, 32, 36, 40, 48], "itemsize": 64})
    fields = [fake_field("ring", 0, UINT16), fake_field("x", 8, FLOAT64), fake_field("y", 16, FLOAT64),
              fake_field("z", 24, FLOAT64), fake_field("i", 32, UINT8), fake_field("rgb", 36, UINT32),
              fake_field("time", 40, FLOAT64), fake_field("normal", 48, FLOAT32, count=3)]
    points = random_points(dtype, 9)
    decoded = pointcloud2_to_array(fake_cloud(points, fields))
    assert decoded.dtype == dtype
    assert_points_equal(decoded, points)
    cloud = pointcloud2_to_cloud(fake_cloud(points, fields))
    assert cloud.xyz.dtype == np.float64
    np.testing.assert_array_equal(cloud.xyz[:, 2], points["z"])
    np.testing.assert_array_equal(cloud.intensity, points["i"])


def test_all_integer_pointfield_types():
    formats = ["<i1", "<u1", "<i2", "<u2", "<i4", "<u4", "<f4", "<f8"]
    names = [f"f{k}" for k in range(8)]
    offsets = [0, 1, 2, 4, 8, 12, 16, 24]
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": 32})
    fields = [fake_field(n, o, code) for n, o, code in zip(names, offsets, range(1, 9), strict=True)]
    points = random_points(dtype, 4)
    assert_points_equal(pointcloud2_to_array(fake_cloud(points, fields)), points)


def test_organized_cloud_with_nan_points_keeps_them():
    points = random_points(XYZI_PADDED, 6)
    points["x"][[1, 4]] = np.nan
    msg = fake_cloud(points, XYZI_FIELDS, height=2)
    organized = pointcloud2_to_array(msg, keep_organized=True)
    assert organized.shape == (2, 3)
    assert_points_equal(organized.reshape(-1), points)
    cloud = pointcloud2_to_cloud(msg)
    assert len(cloud) == 6 and np.isnan(cloud.xyz[[1, 4], 0]).all()


def test_row_step_padding():
    points = random_points(XYZI_PADDED, 6)
    msg = fake_cloud(points, XYZI_FIELDS, height=2, row_pad=40)
    assert_points_equal(pointcloud2_to_array(msg), points)
    assert pointcloud2_to_array(msg, keep_organized=True).strides == (3 * 32 + 40, 32)


def test_big_endian_cloud():
    points = random_points(XYZI_PADDED, 5)
    decoded = pointcloud2_to_array(fake_cloud(points, XYZI_FIELDS, bigendian=True))
    assert all(decoded.dtype.fields[n][0].isnative for n in decoded.dtype.names)
    assert_points_equal(decoded, points)


def test_empty_cloud():
    msg = fake_cloud(np.zeros(0, XYZI_PADDED), XYZI_FIELDS)
    assert msg.width == 0
    assert pointcloud2_to_array(msg).shape == (0,)
    cloud = pointcloud2_to_cloud(msg)
    assert cloud.xyz.shape == (0, 3) and cloud.intensity.shape == (0,)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (dict(data=b"\0" * (2 * 96 - 1)), "truncated"),
        (dict(row_step=95), "row_step"),
        (dict(fields=[fake_field("x", 0, 9)]), "unknown datatype"),
        (dict(fields=[fake_field("x", 28, FLOAT64)]), "overruns point_step"),
        (dict(fields=XYZI_FIELDS + [fake_field("x", 12, FLOAT32)]), "duplicate"),
    ],
)
def test_malformed_clouds_raise_input_error(change, reason):
    msg = fake_cloud(random_points(XYZI_PADDED, 6), XYZI_FIELDS, height=2)
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(InputError, match=reason):
        pointcloud2_to_array(msg)


def test_cloud_without_xyz_raises_input_error():
    msg = fake_cloud(random_points(XYZI_PADDED, 3), XYZI_FIELDS[1:])
    with pytest.raises(InputError, match="no field"):
        pointcloud2_to_cloud(msg)


# ----------------------------------------------------------------------------------------- events


def fake_event_cloud(x, y, t, polarity, t_format, polarity_format="i1", polarity_name="polarity"):
    dtype = np.dtype({"names": ["x", "y", "t", polarity_name],
                      "formats": ["<u2", "<i4", t_format, polarity_format],
                      "offsets": [0, 4, 8, 16], "itemsize": 24})
    points = np.zeros(len(x), dtype)
    points["x"], points["y"], points["t"], points[polarity_name] = x, y, t, polarity
    code = {"<f8": FLOAT64, "<u4": UINT32, "<i4": INT32, "<f4": FLOAT32}[t_format]
    fields = [fake_field("x", 0, UINT16), fake_field("y", 4, INT32), fake_field("t", 8, code),
              fake_field(polarity_name, 16, {"i1": INT8, "u1": UINT8}[polarity_format])]
    return fake_cloud(points, fields)


X, Y = np.array([0, 5, 639, 17]), np.array([0, 479, 3, 200])
OFFSETS = np.array([0, 1_000, 2_500_000, 4_000_000_000], np.int64)


def test_events_with_float_seconds_and_signed_polarity():
    t_ns = STAMP_NS + OFFSETS
    msg = fake_event_cloud(X, Y, t_ns / 1e9, [-1, 1, 1, -1], "<f8")
    events = pointcloud2_to_events(msg, 640, 480)
    np.testing.assert_array_equal(events.x, X)
    np.testing.assert_array_equal(events.y, Y)
    np.testing.assert_allclose(events.t_ns, t_ns, rtol=0, atol=1_000)  # float64 s: ~0.25 us at 2023
    np.testing.assert_array_equal(events.polarity, [-1, 1, 1, -1])
    assert events.polarity.dtype == np.int8 and events.t_ns.dtype == np.int64


def test_events_with_integer_offsets_and_01_polarity_named_p():
    msg = fake_event_cloud(X, Y, OFFSETS, [0, 1, 1, 0], "<u4", "u1", "p")
    events = pointcloud2_to_events(msg, 640, 480)
    np.testing.assert_array_equal(events.t_ns, STAMP_NS + OFFSETS)
    np.testing.assert_array_equal(events.polarity, [-1, 1, 1, -1])
    assert (events.width, events.height) == (640, 480)


@pytest.mark.parametrize(
    ("width", "t_format", "reason"),
    [(320, "<u4", "outside the 320x480"), (640, "<f4", "float64 seconds or an integer")],
)
def test_bad_events_raise_input_error(width, t_format, reason):
    msg = fake_event_cloud(X, Y, OFFSETS, [0, 1, 1, 0], t_format)
    with pytest.raises(InputError, match=reason):
        pointcloud2_to_events(msg, width, 480)


# ------------------------------------------------------------------------------------ camera info


def test_camera_info_decodes_and_rejects_bad_calibration():
    k = [500.0, 0, 320, 0, 510, 240, 0, 0, 1]
    msg = SimpleNamespace(header=fake_header(frame_id="cam_optical"), width=640, height=480,
                          distortion_model="plumb_bob", d=[0.1, -0.05, 0, 0, 0], k=k, p=[0.0] * 12)
    camera = camera_info_to_model(msg)
    assert (camera.fx, camera.cy, camera.frame_id) == (500.0, 240.0, "cam_optical")
    for bad in (dict(k=[0.0] * 9), dict(width=0), dict(k=[1.0] * 4)):
        with pytest.raises(InputError):
            camera_info_to_model(SimpleNamespace(**{**vars(msg), **bad}))
    with pytest.raises(InputError, match="unsupported distortion model 'double_sphere'"):
        camera_info_to_model(SimpleNamespace(**{**vars(msg), "distortion_model": "double_sphere"}))
    fisheye = camera_info_to_model(SimpleNamespace(**{**vars(msg), "distortion_model": "equidistant",
                                                      "d": [0.02, -0.01, 0.003, -0.001]}))
    assert fisheye.is_fisheye and fisheye.D.tolist() == [0.02, -0.01, 0.003, -0.001]


# ------------------------------------------------------------------------------- builders (rclpy)


@pytest.mark.ros
def test_stamp_round_trip(messages):
    for ns in (0, 1, STAMP_NS, -1_500_000_000):
        stamp = messages.ns_to_stamp(ns)
        assert 0 <= stamp.nanosec < 10**9 and stamp_to_ns(stamp) == ns


@pytest.mark.ros
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_image_round_trip(encoding, messages):
    expected = random_image(encoding, seed=7)
    msg = messages.numpy_to_image(expected, encoding, stamp_ns=STAMP_NS, frame_id="cam")
    assert msg.step == msg.width * expected.itemsize * (1 if expected.ndim == 2 else expected.shape[2])
    assert (stamp_to_ns(msg.header.stamp), msg.header.frame_id) == (STAMP_NS, "cam")
    np.testing.assert_array_equal(image_to_numpy(msg).array, expected)


@pytest.mark.ros
def test_numpy_to_image_rejects_mismatched_arrays(messages):
    with pytest.raises(InputError, match="channel"):
        messages.numpy_to_image(np.zeros((4, 4, 3), np.uint8), "mono8")
    with pytest.raises(InputError, match="dtype"):
        messages.numpy_to_image(np.zeros((4, 4), np.float32), "16UC1")


@pytest.mark.ros
def test_cloud_round_trip_keeps_layout_and_organization(messages):
    points = random_points(XYZI_PADDED, 6)
    points["z"][2] = np.nan
    header = messages.make_header(stamp_ns=STAMP_NS, frame_id="lidar")
    msg = messages.array_to_pointcloud2(points.reshape(2, 3), header)
    assert (msg.height, msg.width, msg.point_step, msg.row_step, msg.is_dense) == (2, 3, 32, 96, False)
    assert_points_equal(pointcloud2_to_array(msg), points)
    cloud = pointcloud2_to_cloud(messages.cloud_to_pointcloud2(
        PointCloud(points_xyz(points), points["intensity"], "lidar"), stamp_ns=STAMP_NS))
    np.testing.assert_array_equal(cloud.xyz, points_xyz(points))
    assert cloud.frame_id == "lidar"


def points_xyz(points):
    return np.stack([points["x"], points["y"], points["z"]], axis=1)


@pytest.mark.ros
@pytest.mark.parametrize("time_format", ["offset_ns", "float_seconds"])
def test_events_round_trip(time_format, messages):
    events = EventArray(X.astype(np.int32), Y.astype(np.int32), STAMP_NS + OFFSETS,
                        np.array([1, -1, -1, 1], np.int8), 640, 480)
    msg = messages.events_to_pointcloud2(events, frame_id="events", time_format=time_format)
    assert stamp_to_ns(msg.header.stamp) == STAMP_NS
    decoded = pointcloud2_to_events(msg, 640, 480)
    atol = 0 if time_format == "offset_ns" else 1_000
    np.testing.assert_allclose(decoded.t_ns, events.t_ns, rtol=0, atol=atol)
    for name in ("x", "y", "polarity"):
        np.testing.assert_array_equal(getattr(decoded, name), getattr(events, name))


@pytest.mark.ros
def test_empty_event_batch_round_trip(messages):
    msg = messages.events_to_pointcloud2(EventArray.empty(640, 480), stamp_ns=STAMP_NS)
    assert msg.width == 0 and len(pointcloud2_to_events(msg, 640, 480)) == 0


@pytest.mark.ros
def test_events_too_long_for_offset_format_raise(messages):
    events = EventArray(X, Y, STAMP_NS + OFFSETS * 2, np.ones(4, np.int8), 640, 480)
    with pytest.raises(InputError, match="offset_ns"):
        messages.events_to_pointcloud2(events)
    messages.events_to_pointcloud2(events, time_format="float_seconds")


@pytest.mark.ros
def test_camera_info_round_trip(messages):
    camera = CameraModel(640, 480, np.array([[500.0, 0, 319.5], [0, 505, 239.5], [0, 0, 1]]),
                         np.array([0.1, -0.2, 0.001, 0.002, 0.05, 0.01, 0.0, 0.0]),
                         "rational_polynomial", "cam_optical")
    msg = messages.camera_model_to_camera_info(camera, stamp_ns=STAMP_NS)
    assert msg.header.frame_id == "cam_optical"
    decoded = camera_info_to_model(msg)
    np.testing.assert_array_equal(decoded.K, camera.K)
    np.testing.assert_array_equal(decoded.D, camera.D)
    assert (decoded.width, decoded.height, decoded.distortion_model) == (640, 480, "rational_polynomial")


# ------------------------------------------------------------ rosbags objects decode identically


def rosbags_store():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(getattr(Stores, "ROS2_KILTED", Stores.LATEST))


def test_rosbags_messages_built_in_python_decode_identically():
    store = rosbags_store()
    t = store.types
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="f")
    expected_image = random_image("rgb16", seed=9)
    fake = fake_image(expected_image, "rgb16", step=7 * 6 + 4, bigendian=True)
    image = t["sensor_msgs/msg/Image"](header=header, height=fake.height, width=fake.width,
                                       encoding="rgb16", is_bigendian=1, step=fake.step,
                                       data=np.frombuffer(fake.data, np.uint8))
    points = random_points(XYZI_PADDED, 6)
    fake_pc = fake_cloud(points, XYZI_FIELDS, height=2)
    cloud = t["sensor_msgs/msg/PointCloud2"](
        header=header, height=2, width=3,
        fields=[t["sensor_msgs/msg/PointField"](name=f.name, offset=f.offset, datatype=f.datatype,
                                                count=f.count) for f in XYZI_FIELDS],
        is_bigendian=False, point_step=32, row_step=96, data=np.frombuffer(fake_pc.data, np.uint8),
        is_dense=False)
    for typename, msg in (("sensor_msgs/msg/Image", image), ("sensor_msgs/msg/PointCloud2", cloud)):
        msg_back = store.deserialize_cdr(store.serialize_cdr(msg, typename), typename)
        assert isinstance(msg_back.data, np.ndarray)
        if typename.endswith("Image"):
            np.testing.assert_array_equal(image_to_numpy(msg_back).array, expected_image)
        else:
            assert_points_equal(pointcloud2_to_array(msg_back), points)
            assert pointcloud2_to_cloud(msg_back).frame_id == "f"


@pytest.mark.ros
def test_rclpy_messages_read_back_by_rosbags_decode_identically(messages):
    """What `ros2 bag record` stores (rclpy's CDR) and what offline evaluation reads (rosbags)."""
    from rclpy.serialization import serialize_message

    store = rosbags_store()
    image = messages.numpy_to_image(random_image("32FC1", 6, 8), "32FC1", stamp_ns=STAMP_NS, frame_id="d")
    points = random_points(XYZI_PADDED, 6)
    cloud = messages.array_to_pointcloud2(points.reshape(2, 3), stamp_ns=STAMP_NS, frame_id="lidar")
    bag_image = store.deserialize_cdr(serialize_message(image), "sensor_msgs/msg/Image")
    bag_cloud = store.deserialize_cdr(serialize_message(cloud), "sensor_msgs/msg/PointCloud2")
    np.testing.assert_array_equal(image_to_numpy(bag_image).array,
                                  image_to_numpy(image).array)
    assert_points_equal(pointcloud2_to_array(bag_cloud), pointcloud2_to_array(cloud))
    assert stamp_to_ns(bag_cloud.header.stamp) == STAMP_NS


# ------------------------------------------- reference implementations, when they are importable


@pytest.mark.ros
def test_matches_sensor_msgs_py_read_points(messages):
    point_cloud2 = pytest.importorskip("sensor_msgs_py.point_cloud2")
    points = random_points(XYZI_PADDED, 6)
    for bigendian in (False, True):
        fake = fake_cloud(points, XYZI_FIELDS, bigendian=bigendian)
        msg = messages.array_to_pointcloud2(points)
        msg.is_bigendian, msg.data = bigendian, fake.data
        ours = pointcloud2_to_array(msg)
        reference = point_cloud2.read_points(msg)  # byteswaps msg.data in place: read it last
        for name in XYZI_PADDED.names:
            np.testing.assert_array_equal(ours[name], reference[name])


@pytest.mark.ros
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_matches_cv_bridge(encoding, messages):
    cv_bridge = pytest.importorskip("cv_bridge")
    expected = random_image(encoding, seed=11)
    msg = messages.numpy_to_image(expected, encoding)
    reference = cv_bridge.CvBridge().imgmsg_to_cv2(msg, desired_encoding="passthrough")
    np.testing.assert_array_equal(image_to_numpy(msg).array, reference)
