"""rosbag2 writing/reading (mcap and sqlite3), make-bag CLI, DELIVER conversion, DDS replay."""

import random
import sys
import textwrap

import numpy as np
import pytest

from sam_mmseg_ros.cli import main as cli_main
from sam_mmseg_ros.contracts import (
    BAG_TOPICS,
    CAMERA_RECORD_DELAY_NS,
    CONDITION_TOPIC,
    GROUND_TRUTH_DEPTH_TOPIC,
    GROUND_TRUTH_TOPIC,
)
from sam_mmseg_ros.data.bag_reader import bag_topics
from sam_mmseg_ros.data.bags import TF_STATIC_TOPIC, bag_image_encodings, read_bag, read_raw, write_bag
from sam_mmseg_ros.data.synthetic import SequenceConfig, generate_sequence
from sam_mmseg_ros.decoders.camera_info import camera_info_to_model
from sam_mmseg_ros.decoders.common import stamp_to_ns
from sam_mmseg_ros.decoders.image import image_to_numpy
from sam_mmseg_ros.decoders.pointcloud import pointcloud2_to_cloud, pointcloud2_to_events
from sam_mmseg_ros.node_settings import quaternion_matrix


@pytest.fixture(scope="module")
def frames():
    config = SequenceConfig(width=64, height=48, num_frames=3, lidar_columns=256, event_width=32,
                            event_height=24, seed=5)
    return list(generate_sequence(config))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_equals_frames(tmp_path, frames, storage):
    bag = tmp_path / "bag"
    count = write_bag(frames, bag, storage)
    assert count == 1 + 8 * len(frames)
    assert (bag / "metadata.yaml").is_file()
    messages = list(read_bag(bag))
    assert len(messages) == count
    by_topic: dict[str, list] = {}
    for topic, stamp, msgtype, msg in messages:
        by_topic.setdefault(topic, []).append((stamp, msgtype, msg))

    (_, msgtype, tf), = by_topic[TF_STATIC_TOPIC]
    transform = tf.transforms[0]
    assert (transform.header.frame_id, transform.child_frame_id) == ("camera_optical_frame", "lidar")
    q = transform.transform.rotation
    T = frames[0].T_camera_lidar
    assert np.allclose(quaternion_matrix([0, 0, 0], [q.x, q.y, q.z, q.w])[:3, :3], T[:3, :3], atol=1e-9)
    t = transform.transform.translation
    assert np.allclose([t.x, t.y, t.z], T[:3, 3])
    qos = bag_topics(bag)[TF_STATIC_TOPIC][1]
    assert qos and qos[0].durability.name == "TRANSIENT_LOCAL"

    for i, frame in enumerate(frames):
        rgb = by_topic[BAG_TOPICS["rgb"]][i]
        assert rgb[0] == frame.stamp_ns + CAMERA_RECORD_DELAY_NS  # recorded after its partner sensors
        assert stamp_to_ns(rgb[2].header.stamp) == frame.stamp_ns
        assert by_topic[CONDITION_TOPIC][i][2].data == frame.condition
        assert np.array_equal(image_to_numpy(rgb[2]).array, frame.rgb)
        depth = image_to_numpy(by_topic[BAG_TOPICS["depth"]][i][2])
        assert depth.encoding == "32FC1" and np.array_equal(depth.array, frame.depth)
        labels = image_to_numpy(by_topic[GROUND_TRUTH_TOPIC][i][2])
        assert labels.encoding == "mono8" and np.array_equal(labels.array, frame.labels)
        truth_stamp, _, truth_msg = by_topic[GROUND_TRUTH_DEPTH_TOPIC][i]
        truth = image_to_numpy(truth_msg)
        assert truth.encoding == "32FC1" and truth_stamp == rgb[0]  # recorded with the labels
        gt = frame.ground_truth_depth()  # the scene, not the depth camera's measurement
        np.testing.assert_array_equal(truth.array, np.where(gt > 0, gt, np.nan))
        camera = camera_info_to_model(by_topic[BAG_TOPICS["camera_info"]][i][2])
        assert np.array_equal(camera.K, frame.camera.K) and camera.frame_id == frame.camera.frame_id
        cloud = pointcloud2_to_cloud(by_topic[BAG_TOPICS["lidar"]][i][2])
        assert cloud.frame_id == "lidar"
        assert np.array_equal(cloud.xyz, frame.lidar.xyz)
        assert np.array_equal(cloud.intensity, frame.lidar.intensity)
        events = pointcloud2_to_events(by_topic[BAG_TOPICS["event"]][i][2], 32, 24)
        for name in ("x", "y", "t_ns", "polarity"):
            assert np.array_equal(getattr(events, name), getattr(frame.events, name)), name

    raw = list(read_raw(bag, topics=[BAG_TOPICS["rgb"]]))
    assert len(raw) == len(frames) and all(isinstance(r[3], bytes) for r in raw)


def test_bad_storage_is_rejected(tmp_path, frames):
    with pytest.raises(ValueError, match="storage"):
        write_bag(frames, tmp_path / "bag", "rosbag1")


def test_make_bag_cli(tmp_path):
    out = tmp_path / "cli_bag"
    rc = cli_main(["make-bag", str(out), "--frames", "2", "--size", "48x32", "--conditions", "sun,night",
                   "--failures", "low_res_events", "--storage", "sqlite3"])
    assert rc == 0
    messages = list(read_bag(out))
    assert len(messages) == 1 + 2 * 2 * 8  # per frame: 5 sensor topics, labels and depth truth, condition
    stamps = [s for topic, s, _, _ in messages if topic == BAG_TOPICS["rgb"]]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4  # the two sequences follow each other
    assert cli_main(["make-bag", str(out), "--frames", "1"]) == 1  # never overwrites

    def depth_images(bag):
        return [image_to_numpy(msg).array for topic, _, _, msg in read_bag(bag) if topic == BAG_TOPICS["depth"]]

    plain, holed = tmp_path / "plain_bag", tmp_path / "holed_bag"
    assert cli_main(["make-bag", str(plain), "--frames", "2", "--size", "48x32"]) == 0
    assert cli_main(["make-bag", str(holed), "--frames", "2", "--size", "48x32", "--depth-holes"]) == 0
    for camera, sensor in zip(depth_images(plain), depth_images(holed), strict=True):
        assert ((camera > 0) & (sensor == 0)).any()  # holes where the depth camera itself had a value
        np.testing.assert_array_equal(sensor[sensor > 0], camera[sensor > 0])  # the rest untouched


def test_make_bag_from_deliver(tmp_path):
    from sam_mmseg_ros.data.deliver import write_deliver_fixture

    root = write_deliver_fixture(tmp_path / "DELIVER", frames_per_condition=1, size=(32, 48), splits=("val",),
                                 conditions=("fog", "night", "sun"))
    out = tmp_path / "deliver_bag"
    assert cli_main(["make-bag", str(out), "--deliver", str(root), "--split", "val",
                     "--conditions", "fog,night"]) == 0
    messages = list(read_bag(out))
    assert len(messages) == 2 * 2 * 8  # per condition a normal and an eventlowres frame, with depth truth
    topics = {topic: msgtype for topic, _, msgtype, _ in messages}
    assert topics[BAG_TOPICS["lidar"]] == "sensor_msgs/msg/Image"  # DELIVER has only renderings
    first = {topic: msg for topic, _, _, msg in reversed(messages)}
    assert first[BAG_TOPICS["depth"]].encoding == "32FC1" and first[BAG_TOPICS["lidar"]].encoding == "mono8"
    assert bag_image_encodings(out) == {"event": "carla-dvs-v1", "lidar": "deliver-lidar-v1"}
    label = next(image_to_numpy(m).array for t, _, _, m in messages if t == GROUND_TRUTH_TOPIC)
    assert label.shape == (32, 48) and label.dtype == np.uint8
    conditions = [m.data for t, _, _, m in messages if t == CONDITION_TOPIC]
    assert conditions == ["fog", "fog/eventlowres", "night", "night/eventlowres"]

    hha_bag = tmp_path / "hha_bag"
    assert cli_main(["make-bag", str(hha_bag), "--deliver", str(root), "--conditions", "sun", "--cases", "normal",
                     "--deliver-hha"]) == 0
    depth = next(m for t, _, _, m in read_bag(hha_bag) if t == BAG_TOPICS["depth"])
    assert depth.encoding == "rgb8" and bag_image_encodings(hha_bag)["depth"] == "deliver-hha-v1"
    assert GROUND_TRUTH_DEPTH_TOPIC not in {t for t, _, _, _ in read_bag(hha_bag)}  # no metric depth read
    depth = next(image_to_numpy(m).array for t, _, _, m in messages if t == GROUND_TRUTH_DEPTH_TOPIC)
    assert depth.shape == (32, 48) and np.isnan(depth[0]).all() and np.nanmin(depth) > 4.4  # far plane: NaN


SUBSCRIBER = textwrap.dedent("""
    import sys, time
    import rclpy
    from rclpy.qos import QoSProfile, DurabilityPolicy, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image, PointCloud2
    rclpy.init()
    node = rclpy.create_node("replay_probe")
    got = {"rgb": [], "lidar": 0, "clock": []}
    node.create_subscription(Image, "/sam_mmseg/input/rgb",
                             lambda m: got["rgb"].append(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec), 10)
    node.create_subscription(PointCloud2, "/sam_mmseg/input/lidar",
                             lambda m: got.__setitem__("lidar", got["lidar"] + 1), 10)
    node.create_subscription(Clock, "/clock",
                             lambda m: got["clock"].append(m.clock.sec * 10**9 + m.clock.nanosec), 10)
    print("ready", flush=True)
    deadline = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < deadline and min(len(got["rgb"]), got["lidar"]) < int(sys.argv[2]):
        rclpy.spin_once(node, timeout_sec=0.05)
    print(len(got["rgb"]), got["lidar"], len(got["clock"]), min(got["clock"] or [0]), max(got["clock"] or [0]),
          ",".join(map(str, got["rgb"])), flush=True)
""")


@pytest.mark.ros
def test_replay_of_a_missing_bag_says_so(tmp_path, monkeypatch, caplog):
    from ros_helpers import random_domain_id

    monkeypatch.setenv("ROS_DOMAIN_ID", str(random_domain_id()))
    assert cli_main(["replay", str(tmp_path / "no_bag"), "--discovery-wait", "0"]) == 1
    assert "cannot replay" in caplog.text and "no_bag" in caplog.text


@pytest.mark.ros
def test_replay_over_dds(tmp_path, frames, monkeypatch):
    from ros_helpers import RosProcess, random_domain_id, ros_env

    from sam_mmseg_ros.ros.replay import replay_bag

    bag = tmp_path / "bag"
    write_bag(frames, bag, "mcap")
    domain = random_domain_id()
    with RosProcess([sys.executable, "-c", SUBSCRIBER, "20", str(len(frames))], ros_env(domain)) as probe:
        probe.wait_for("^ready$", timeout=60)
        monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
        # waits (up to 10 s) until the probe's subscriptions are discovered, then plays
        published = replay_bag(bag, rate=1.0, clock=True, discovery_wait_s=10.0,
                                topics=[BAG_TOPICS["rgb"], BAG_TOPICS["lidar"]])
        probe.wait(timeout=30)
        out = probe.lines[-1]
    assert published == 2 * len(frames)
    n_rgb, n_lidar, n_clock, clock_min, clock_max, stamps = out.split()
    assert int(n_rgb) == len(frames) and int(n_lidar) == len(frames)
    assert [int(s) for s in stamps.split(",")] == [f.stamp_ns for f in frames]
    assert int(n_clock) >= 5  # 100 Hz while 0.2 s of bag time plays
    assert frames[0].stamp_ns <= int(clock_min) and int(clock_max) <= frames[-1].stamp_ns + CAMERA_RECORD_DELAY_NS


@pytest.mark.ros
def test_replay_timing_loop_and_latched_qos(tmp_path, frames, monkeypatch):
    import threading
    import time

    from rclpy.qos import DurabilityPolicy

    from sam_mmseg_ros.ros.replay import _qos, message_class, replay_bag

    assert _qos(TF_STATIC_TOPIC, [], reliable=True).durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert _qos(BAG_TOPICS["rgb"], [], reliable=True).durability != DurabilityPolicy.TRANSIENT_LOCAL
    with pytest.raises(ImportError):
        message_class("sensor_msgs/msg/NoSuchMessage")

    bag = tmp_path / "bag"
    write_bag(frames, bag, "sqlite3")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(100 + random.randrange(100)))
    rgb_only = [BAG_TOPICS["rgb"]]
    start = time.monotonic()
    assert replay_bag(bag, rate=0.5, clock=False, topics=rgb_only, discovery_wait_s=0) == len(frames)
    assert time.monotonic() - start >= 0.2 * 2 * 0.99  # 0.2 s of bag time at half speed

    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    count = replay_bag(bag, rate=4.0, loop=True, topics=rgb_only, stop_event=stop, discovery_wait_s=0)
    assert stop.is_set() and count > 2 * len(frames)  # went round more than twice, then stopped
