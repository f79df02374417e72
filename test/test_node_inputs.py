"""The node over DDS with inputs as real drivers deliver them: a camera that cannot be decoded, a
compressed camera (image_transport's `compressed` transport), and a publisher whose QoS does not
match the node's subscription."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
cv2 = pytest.importorskip("cv2")

from node_harness import (  # noqa: E402
    HEIGHT,
    WIDTH,
    Harness,
    checkpoint,  # noqa: F401 - fixture
    health_by_modality,
    node_status,
    stamp_ns,
    start_node,
)
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from ros_helpers import PROFILE_VARIABLE, random_domain_id, ros_env  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402

from sam_mmseg_ros.contracts import BAG_TOPICS  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def _start(monkeypatch, checkpoint, *params):  # noqa: F811 - the imported fixture
    domain_id = random_domain_id()
    for key in (PROFILE_VARIABLE, "RMW_IMPLEMENTATION"):
        monkeypatch.setenv(key, ros_env(domain_id)[key])
    return start_node(domain_id, checkpoint, *params), Harness(domain_id)


def jpeg(harness: Harness, stamp: int) -> CompressedImage:
    """The rig's camera image as image_transport's compressed publisher sends it."""
    image = harness.rig.rgb(stamp)
    pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(image.height, image.width, 3)
    msg = CompressedImage(header=image.header, format="rgb8; jpeg compressed bgr8")
    msg.data = cv2.imencode(".jpg", pixels[..., ::-1])[1].tobytes()
    return msg


def test_an_undecodable_camera_is_an_error_within_a_second_with_health_for_every_message(monkeypatch, checkpoint):  # noqa: F811
    proc, h = _start(monkeypatch, checkpoint)
    h.start_feeding()
    try:
        h.wait_for_output(proc)
        bad = {}  # stamp -> wall time it was published

        def undecodable(stamp):
            msg = h.rig.rgb(stamp)
            msg.encoding = "yuv420"  # not a ROS encoding
            bad[stamp] = time.monotonic()
            return msg

        h.override["rgb"] = undecodable
        h.wait_until(lambda: len(bad) >= 12, 5, "bad camera messages", proc)
        del h.override["rgb"]
        first = min(bad.values())
        errors = [t for t, m in h.received["diagnostics"]
                  if t >= first and "cannot be decoded" in (node_status(m) or {}).get("message", "")]
        assert errors and errors[0] - first < 1.0, "no /diagnostics ERROR within 1 s"
        error = next(node_status(m) for t, m in h.received["diagnostics"] if t == errors[0])
        assert error["level"] == 2 and "yuv420" in error["message"]
        h.wait_until(lambda: {stamp_ns(m) for m in h.messages("modality_health")} >= set(list(bad)[:-1]), 5,
                     "modality_health for the undecodable camera messages", proc)
        for msg in h.messages("modality_health"):
            if stamp_ns(msg) in bad:
                rgb = health_by_modality(msg)["rgb"]
                assert rgb["state"] == "invalid" and "yuv420" in rgb["reason"] and rgb["level"] == 2
        assert not [m for m in h.messages("labels") if stamp_ns(m) in bad]
        resumed = time.time_ns()
        h.wait_until(lambda: any(stamp_ns(m) > resumed for m in h.messages("labels")), 10, "labels again", proc)
    finally:
        h.close()
        proc.stop(timeout=30)


def test_compressed_camera_and_an_incompatible_qos_named_in_diagnostics(monkeypatch, checkpoint):  # noqa: F811
    """With input_reliability reliable, a best-effort camera publisher delivers nothing; the node's
    status names the offered and requested policies. A compatible publisher of the compressed
    transport then gives labels at camera resolution."""
    proc, h = _start(monkeypatch, checkpoint, "rgb_transport:=compressed", "input_reliability:=reliable")
    topic = BAG_TOPICS["rgb"] + "/compressed"
    h.pubs["rgb"] = h.node.create_publisher(CompressedImage, topic, qos_profile_sensor_data)
    h.override["rgb"] = lambda stamp: jpeg(h, stamp)
    h.start_feeding()
    try:
        def incompatible():
            return [s for s in map(node_status, h.messages("diagnostics")) if s and "incompatible QoS" in s["message"]]

        h.wait_until(lambda: bool(incompatible()), 60, "the incompatible QoS in /diagnostics", proc)
        status = incompatible()[-1]
        assert status["level"] == 2 and topic in status["message"]
        assert "requests reliability RELIABLE" in status["message"] and "offers reliability BEST_EFFORT" in status["message"]
        h.stop_feeding()
        h.node.destroy_publisher(h.pubs["rgb"])
        h.pubs["rgb"] = h.node.create_publisher(CompressedImage, topic, QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE))
        h._feed_stop.clear()
        h.start_feeding()
        h.wait_for_output(proc)
        labels = h.messages("labels")[-1]
        assert (labels.height, labels.width) == (HEIGHT, WIDTH)
        health = health_by_modality(h.messages("modality_health")[-1])
        assert health["rgb"]["state"] == "ok"
        since = time.monotonic()
        h.wait_until(lambda: any("incompatible QoS" not in (node_status(m) or {"message": "incompatible QoS"})["message"]
                                 for m in h.messages("diagnostics", since)), 5, "the QoS problem to clear", proc)
    finally:
        h.close()
        proc.stop(timeout=30)
