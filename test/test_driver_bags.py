"""Other people's bags: a recording on the drivers' own topic names, with a CompressedImage camera,
compressedDepth depth and EventPacket events, evaluated through `sam-mmseg eval` with a topic
map (command line or the node's parameter file); unknown types are skipped with one warning and a
bag without camera frames is an error that lists the topics."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import yaml
from driver_bags import TOPIC_ARGS, TOPICS, VENDOR_TOPIC, VENDOR_TYPE, write_driver_bag

from sam_mmseg_ros.cli import main as cli
from sam_mmseg_ros.data.bag_reader import bag_topics
from sam_mmseg_ros.data.bags import bag_typestore, read_bag
from sam_mmseg_ros.data.synthetic import SequenceConfig, generate_sequence
from sam_mmseg_ros.eval.results import FULL
from sam_mmseg_ros.node_settings import NodeSettings
from sam_mmseg_ros.topic_map import find_bag_topics

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FRAMES = 3


@pytest.fixture(scope="module")
def frames():
    return list(generate_sequence(SequenceConfig(width=64, height=48, num_frames=FRAMES, seed=3)))


@pytest.fixture(scope="module")
def driver_bag(tmp_path_factory, frames):
    path = tmp_path_factory.mktemp("drivers") / "bag"
    write_driver_bag(frames, path)
    return path




def test_the_bag_embeds_eventpacket_and_reads_it_back_with_a_fresh_typestore(driver_bag, frames):
    store, unknown = bag_typestore(driver_bag)
    assert unknown == {VENDOR_TOPIC: VENDOR_TYPE}
    packets = [msg for _, _, _, msg in read_bag(driver_bag, [TOPICS["event"]], store=store)]
    assert len(packets) == FRAMES and packets[0].encoding == "evt3"
    from sam_mmseg_ros.decoders.event_packet import EventPacketDecoder

    decoder = EventPacketDecoder()
    for packet, frame in zip(packets, frames, strict=True):
        events = decoder.decode(packet)
        assert len(events) > 0 and (events.width, events.height) == (frame.events.width, frame.events.height)
        # Every decoded event is one the camera produced, on the ROS clock to the microsecond.
        produced = set(zip(frame.events.x.tolist(), frame.events.y.tolist(), (frame.events.t_ns // 1000).tolist(),
                           strict=True))
        decoded = set(zip(events.x.tolist(), events.y.tolist(), (events.t_ns // 1000).tolist(), strict=True))
        assert decoded <= produced and len(decoded) >= 0.95 * len(produced)


def test_topic_map_finds_the_transports_the_recorded_types_need(driver_bag):
    recorded = {t: m for t, (m, _) in bag_topics(driver_bag).items()}
    settings = NodeSettings.from_values({})
    found = find_bag_topics(recorded, settings, dict(TOPICS))
    assert found.topics == {"rgb": "/camera/image_raw/compressed", "camera_info": "/camera/camera_info",
                            "depth": "/camera/depth/image_raw/compressedDepth", "event": "/event_camera/events",
                            "lidar": "/ouster/points"}
    assert found.overrides == {"rgb_transport": "compressed", "depth_transport": "compressedDepth",
                               "event_input": "packet"}
    assert find_bag_topics(recorded, settings, {}).topics == {}


def _summary(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_eval_with_a_topic_map_on_the_command_line(driver_bag, tmp_path, caplog):
    out = tmp_path / "report"
    with caplog.at_level(logging.WARNING):
        assert cli(["eval", str(driver_bag), "--out", str(out), "--subsets", FULL, "--no-progress",
                    "--params-file", _params(tmp_path, {"event_sensor_size": [64, 48]}), *TOPIC_ARGS]) == 0
    summary = _summary(out)
    assert summary["frames"] == summary["camera_frames"] == FRAMES
    assert summary["miou"][FULL] is not None
    for modality in ("rgb", "depth", "event", "lidar"):
        assert summary["health_counts"][modality]["invalid"] == 0, (modality, summary["notes"])
        assert summary["health_counts"][modality]["missing"] == 0, (modality, summary["notes"])
    skipped = [r for r in caplog.records if VENDOR_TOPIC in r.getMessage()]
    assert len(skipped) == 1 and VENDOR_TYPE in skipped[0].getMessage()


def _params(tmp_path, values: dict) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}))
    return str(path)


def test_eval_with_the_topic_map_in_the_nodes_parameter_file(driver_bag, tmp_path):
    params = _params(tmp_path, {"topics": dict(TOPICS), "event_sensor_size": [64, 48]})
    out = tmp_path / "report"
    assert cli(["eval", str(driver_bag), "--out", str(out), "--subsets", FULL, "--no-progress",
                "--params-file", params]) == 0
    assert _summary(out)["frames"] == FRAMES


def test_a_bag_without_camera_frames_is_an_error_that_lists_the_topics(driver_bag, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert cli(["eval", str(driver_bag), "--out", str(tmp_path / "r"), "--no-progress"]) != 0
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert "no camera frames" in message and "/camera/image_raw/compressed" in message
    assert "sensor_msgs/msg/CompressedImage" in message and "--topic rgb=" in message
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_the_drivers_camera_and_depth_decode_to_the_scene_through_the_feeder(driver_bag, frames):
    """The bag's JPEG camera and compressedDepth depth, fed as eval feeds them, decode to the scene
    the synthetic frames rendered (JPEG noise; depth within the publisher's quantization, NaN beyond
    its 10 m depth_max)."""
    from sam_mmseg_ros.ingest import FrameFeeder

    store, _ = bag_typestore(driver_bag)
    feeder = FrameFeeder(NodeSettings.from_values({"event_sensor_size": [64, 48]}))
    by_stamp = {f.stamp_ns: f for f in frames}
    cameras = depths = 0
    for topic, _, _, msg in read_bag(driver_bag, [TOPICS["rgb"] + "/compressed", TOPICS["depth"] + "/compressedDepth"],
                                     store=store):
        frame = by_stamp[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec]
        if topic.endswith("/compressed"):
            image = feeder.receive_camera(msg, 0).data
            error = np.abs(image.array[..., ::-1].astype(int) - frame.rgb).mean()
            swapped = np.abs(image.array.astype(int) - frame.rgb).mean()  # what a wrong channel order gives
            assert image.encoding == "bgr8" and error < 6 and error < swapped / 2
            cameras += 1
        else:
            feeder.feed("depth", msg, 0)
            depth = feeder.assembler.assemble(feeder.receive_camera(_raw_camera(frame), 0)).depth.array
            near = (frame.depth > 0) & (frame.depth < 9.0)
            assert np.allclose(depth[near], frame.depth[near], rtol=0.012) and np.isnan(depth[frame.depth >= 10.0]).all()
            depths += 1
    assert cameras == depths == FRAMES


def _raw_camera(frame):
    from types import SimpleNamespace

    sec, nanosec = divmod(frame.stamp_ns, 10**9)
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id="c"),
                           height=frame.rgb.shape[0], width=frame.rgb.shape[1], encoding="rgb8", is_bigendian=0,
                           step=frame.rgb.shape[1] * 3, data=np.ascontiguousarray(frame.rgb).tobytes())


@pytest.mark.ros
@pytest.mark.slow
def test_replay_with_the_topic_map_into_the_node(driver_bag, frames, tmp_path, monkeypatch, caplog):
    """`sam-mmseg replay` publishes the drivers' topics where the node listens (its ~/input topics
    with the transports' suffixes); the node, started with the transports the bag needs, segments
    every camera frame. The EventPacket topic reaches it where event_camera_msgs is installed and
    is otherwise skipped with one warning (the node then reports that it cannot subscribe)."""
    import importlib.util
    import time

    pytest.importorskip("rclpy")
    from node_harness import (  # noqa: F401
        Harness,
        checkpoint,
        health_by_modality,
        make_test_checkpoint,
        node_status,
        stamp_ns,
        start_node,
    )
    from ros_helpers import PROFILE_VARIABLE, random_domain_id, ros_env

    model = make_test_checkpoint(tmp_path / "tiny.pt")
    values = {"rgb_transport": "compressed", "depth_transport": "compressedDepth", "event_input": "packet",
              "event_sensor_size": [64, 48]}
    params = _params(tmp_path, values)
    domain = random_domain_id()
    for key, value in ros_env(domain).items():
        if key in (PROFILE_VARIABLE, "RMW_IMPLEMENTATION", "ROS_DOMAIN_ID"):
            monkeypatch.setenv(key, value)
    proc = start_node(domain, model, "rgb_transport:=compressed", "depth_transport:=compressedDepth",
                      "event_input:=packet", "event_sensor_size:=[64,48]")
    h = Harness(domain)
    try:
        h.wait_until(lambda: any("model ready" in line for line in proc.lines), 120, "the model", proc)
        # The node computes labels only for a subscriber it has discovered: wait for the match.
        h.wait_until(lambda: h.node.count_publishers("/sam_mmseg/output/labels") >= 1, 30, "discovery", proc)
        time.sleep(1.0)
        with caplog.at_level(logging.INFO):
            assert cli(["replay", str(driver_bag), "--rate", "0.1", "--discovery-wait", "10", "--params-file", params,
                        *TOPIC_ARGS]) == 0
        h.wait_until(lambda: len(h.messages("labels")) >= FRAMES, 60, "labels for every frame", proc)
        assert sorted(stamp_ns(m) for m in h.messages("labels")) == [f.stamp_ns for f in frames]
        health = health_by_modality(h.messages("modality_health")[-1])
        assert health["rgb"]["state"] == "ok" and health["depth"]["state"] in ("ok", "degraded")
        log = [r.getMessage() for r in caplog.records]
        assert any("/camera/image_raw/compressed on /sam_mmseg/input/rgb/compressed" in m for m in log)
        if importlib.util.find_spec("event_camera_msgs") is None:
            skipped = [m for m in log if "/event_camera/events" in m and "not installed" in m]
            assert len(skipped) == 1
            h.wait_until(lambda: any("event_camera_msgs is not installed" in (node_status(m) or {}).get("message", "")
                                     for m in h.messages("diagnostics")), 5, "the missing event type reported", proc)
        else:
            assert health["event"]["state"] in ("ok", "degraded"), health["event"]
    finally:
        h.close()
        proc.stop(timeout=30)
