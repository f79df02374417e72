"""End-to-end tests of the sam_mmseg node: its console script in a subprocess, this test as a
second ROS process on a random domain, both with the shipped Fast DDS large-data profile."""

from __future__ import annotations

import copy
import re
import time

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy")

from node_harness import (  # noqa: E402
    CAMERA_FRAME,
    HEIGHT,
    OUTPUT_TOPICS,
    PARAMS_FILE,
    TEST_INPUT_SIZE,
    WIDTH,
    Harness,
    checkpoint,  # noqa: F401 - fixture
    health_by_modality,
    node_status,
    stamp_ns,
    start_node,
)
from ros_helpers import PROFILE_VARIABLE, random_domain_id, ros_env  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402

from sam_mmseg_ros.labels import NUM_CLASSES  # noqa: E402
from sam_mmseg_ros.ros.messages import array_to_pointcloud2, numpy_to_image  # noqa: E402

pytestmark = pytest.mark.ros
PARAMS = yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]
MS = 1_000_000


@pytest.fixture
def running(monkeypatch, checkpoint):  # noqa: F811 - the imported fixture
    """The node fed with every modality at 10 Hz, already publishing labels."""
    domain_id = random_domain_id()
    for key in (PROFILE_VARIABLE, "RMW_IMPLEMENTATION"):
        monkeypatch.setenv(key, ros_env(domain_id)[key])
    proc = start_node(domain_id, checkpoint)
    harness = Harness(domain_id)
    harness.start_feeding()
    try:
        harness.wait_for_output(proc)
        yield harness, proc
    finally:
        harness.close()
        proc.stop(timeout=30)


def last_health(h: Harness, after_stamp: int = 0) -> dict | None:
    messages = [m for m in h.messages("modality_health") if stamp_ns(m) > after_stamp]
    return health_by_modality(messages[-1]) if messages else None


def test_all_modalities_give_every_output(running):
    h, proc = running
    since = time.monotonic()
    h.wait_until(lambda: all(len(h.messages(k, since)) >= 3 for k in OUTPUT_TOPICS), 30, "every output", proc)
    published = set(h.published)
    for key, encoding in (("labels", "mono8"), ("color", "rgb8"), ("overlay", "rgb8")):
        for msg in h.messages(key, since):
            assert stamp_ns(msg) in published and msg.header.frame_id == CAMERA_FRAME
            assert (msg.width, msg.height, msg.encoding) == (WIDTH, HEIGHT, encoding)
    labels = np.frombuffer(bytes(h.messages("labels", since)[-1].data), np.uint8)
    assert labels.size == WIDTH * HEIGHT and labels.max() < NUM_CLASSES

    cloud: PointCloud2 = h.messages("painted_points", since)[-1]
    assert stamp_ns(cloud) in published and cloud.header.frame_id == CAMERA_FRAME
    assert {"x", "y", "z", "rgb", "label"} <= {f.name for f in cloud.fields}
    assert cloud.width * cloud.height > 1000  # the LiDAR wall fills the view

    for msg in h.messages("modality_health", since):
        assert stamp_ns(msg) in published and msg.header.frame_id == CAMERA_FRAME
    health = last_health(h)
    assert set(health) == {"rgb", "depth", "event", "lidar"}
    assert {m: v["state"] for m, v in health.items()} == dict.fromkeys(health, "ok"), health
    weights = np.array([[float(v["router_weight"]) for v in health_by_modality(m).values()]
                        for m in h.messages("modality_health", since)])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-3)
    assert np.mean(np.all(weights > 0, axis=1)) >= 0.8  # a chunk arriving after its frame is possible

    node = next(s for s in map(node_status, h.messages("diagnostics", since)) if s)
    for key in ("backend", "precision", "input_size", "output_rate_hz", "latency_p50_ms", "latency_p95_ms",
                "dropped_frames"):
        assert key in node
    assert node["backend"] == "torch" and node["input_size"] == "64x64"
    assert node["trained"] == "False"  # the test model: the node must say its output is untrained
    assert node["level"] == 2 and "untrained" in node["message"]
    assert proc.stop(timeout=30) == 0
    assert "Traceback" not in proc.output


def test_diagnostics_run_on_the_wall_clock_under_sim_time_and_end_with_the_final_counters(
        monkeypatch, checkpoint):  # noqa: F811
    """With use_sim_time and no /clock, ROS time stands still: /diagnostics must still come (a
    steady-clock timer), say when the camera stops, and show every frame that was published."""
    domain_id = random_domain_id()
    for key in (PROFILE_VARIABLE, "RMW_IMPLEMENTATION"):
        monkeypatch.setenv(key, ros_env(domain_id)[key])
    proc = start_node(domain_id, checkpoint, "use_sim_time:=true")
    h = Harness(domain_id)
    try:
        h.wait_until(lambda: len(h.messages("diagnostics")) >= 2, 60, "/diagnostics without /clock", proc)
        h.start_feeding()
        h.wait_for_output(proc)
        time.sleep(1.0)
        h.stop_feeding()
        stopped = time.monotonic()
        h.wait_until(lambda: any("camera stopped" in (node_status(m) or {}).get("message", "")
                                 for m in h.messages("diagnostics", stopped)), 10, "camera stopped", proc)
        node = node_status(h.messages("diagnostics")[-1])
        assert int(node["published_frames"]) == len(h.messages("labels")) > 3
    finally:
        h.close()
        proc.stop(timeout=30)


def test_partners_arriving_after_the_camera_image_are_waited_for(monkeypatch, checkpoint):  # noqa: F811
    """Live sensors publish on separate topics, so a partner with the camera's stamp may arrive
    after the image. Here every partner comes 5 ms after it: the node waits for them (up to
    sync.max_wait_ms), so with the tight shipped tolerances every modality is still matched to
    its own stamp. Without the wait, depth and LiDAR would be stale in every frame (their newest
    message would be the previous frame's, 100 ms old)."""
    domain_id = random_domain_id()
    for key in (PROFILE_VARIABLE, "RMW_IMPLEMENTATION"):
        monkeypatch.setenv(key, ros_env(domain_id)[key])
    proc = start_node(domain_id, checkpoint)
    h = Harness(domain_id, partner_delay_s=0.005)
    h.start_feeding()
    try:
        h.wait_for_output(proc)
        since = time.monotonic()
        h.wait_until(lambda: len(h.messages("modality_health", since)) >= 15, 30, "health messages", proc)
        healths = [health_by_modality(m) for m in h.messages("modality_health", since)]
    finally:
        h.close()
        proc.stop(timeout=30)
    for m in ("depth", "event", "lidar"):  # a weight > 0: matched in that very frame (no hysteresis)
        matched = np.mean([float(health[m]["router_weight"]) > 0 for health in healths])
        assert matched >= 0.8, (m, [health[m]["reason"] for health in healths])
        assert healths[-1][m]["state"] == "ok", healths[-1][m]


def make_domain_checkpoint(path, favourite: str):
    """An untrained `tiny_moda` model at the test size whose selector always names `favourite`
    with probability ~0.9998 (zero classifier weights, a large bias for that domain)."""
    import torch

    from sam_mmseg_ros.model import build_model
    from sam_mmseg_ros.model.checkpoint import save_checkpoint

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("tiny_moda", img_size=TEST_INPUT_SIZE)
    classifier = model.domains.selector.classifier
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.copy_(torch.tensor([10.0 if d == favourite else 0.0 for d in model.config.domains]))
    return save_checkpoint(path, model, trained=False)


@pytest.mark.parametrize("pin", ["", "night"])
def test_domain_adapter_model_reports_its_domain_in_health_and_diagnostics(monkeypatch, tmp_path, pin):
    """The selector's choice (fog) or the pinned domain (night), with the selector's confidence
    in it, in every frame's modality_health and in /diagnostics."""
    domain_id = random_domain_id()
    for key in (PROFILE_VARIABLE, "RMW_IMPLEMENTATION"):
        monkeypatch.setenv(key, ros_env(domain_id)[key])
    proc = start_node(domain_id, make_domain_checkpoint(tmp_path / "moda.pt", "fog"),
                      *([f"domain:={pin}"] if pin else []))
    h = Harness(domain_id)
    h.start_feeding()
    try:
        h.wait_for_output(proc)
        since = time.monotonic()
        h.wait_until(lambda: len(h.messages("modality_health", since)) >= 3 and any(
            "domain" in health_by_modality(m) for m in h.messages("diagnostics", since)), 30, "domain status", proc)
        healths = [health_by_modality(m) for m in h.messages("modality_health", since)]
        diagnostics = next(health_by_modality(m) for m in h.messages("diagnostics", since)
                           if "domain" in health_by_modality(m))
    finally:
        h.close()
        proc.stop(timeout=30)
    expected, confidence = (pin, 0.2) if pin else ("fog", 1.0)  # the selector gives night 1/(4 + e^10)
    for health in [*healths, diagnostics]:
        domain = health["domain"]
        assert domain["domain"] == expected and domain["pinned"] == str(bool(pin)), domain
        assert float(domain["confidence"]) == pytest.approx(confidence, abs=0.2)
        assert domain["level"] == (1 if pin else 0) and domain["message"].startswith(expected)
    assert diagnostics["node"]["domain"] == expected


def test_stopped_modality_goes_stale_and_recovers(running):
    h, proc = running
    tolerance_ns = int(PARAMS["sync"]["tolerance_ms"]["depth"] * MS)
    last_depth = h.set_active("depth", False)
    deadline = last_depth + tolerance_ns + 200 * MS
    h.wait_until(lambda: len([m for m in h.messages("modality_health") if stamp_ns(m) > deadline + 500 * MS]) >= 3,
                 15, "health after the depth stopped", proc)
    after = [health_by_modality(m) for m in h.messages("modality_health") if stamp_ns(m) >= deadline]
    assert after, "no output while depth was stopped"
    for health in after:  # stale within tolerance + 200 ms, weight 0, the rest unaffected
        assert health["depth"]["state"] == "stale", health["depth"]
        assert float(health["depth"]["router_weight"]) == 0.0
        assert health["rgb"]["state"] == "ok"
    assert len([m for m in h.messages("labels") if stamp_ns(m) > last_depth]) >= 5

    h.set_active("depth", True)
    resumed = time.time_ns()
    h.wait_until(lambda: (last_health(h, resumed) or {}).get("depth", {}).get("state") == "ok", 15,
                 "depth to recover", proc)


def test_camera_stop_stops_output_and_reports_error(running):
    h, proc = running
    timeout_s = PARAMS["camera_timeout_s"]
    last_rgb = h.set_active("rgb", False)
    stopped = time.monotonic()
    h.wait_until(lambda: any("camera stopped" in (node_status(m) or {}).get("message", "")
                             for m in h.messages("diagnostics", stopped)), timeout_s + 5, "camera ERROR", proc)
    error = next(s for s in map(node_status, h.messages("diagnostics", stopped)) if "camera stopped" in s["message"])
    assert error["level"] == 2
    assert all(stamp_ns(m) <= last_rgb for m in h.messages("labels", stopped + 0.5))
    assert proc.proc.poll() is None

    h.set_active("rgb", True)
    resumed = time.time_ns()
    h.wait_until(lambda: any(stamp_ns(m) > resumed for m in h.messages("labels")), 15, "output to resume", proc)
    since = time.monotonic()
    h.wait_until(lambda: any("camera stopped" not in (node_status(m) or {"message": "camera stopped"})["message"]
                             for m in h.messages("diagnostics", since)), 5, "camera ERROR to clear", proc)


def _image_with(msg, **changes):
    out = copy.deepcopy(msg)
    for key, value in changes.items():
        setattr(out, key, value)
    return out


def _cloud(points) -> PointCloud2:
    return array_to_pointcloud2(points, frame_id="lidar")


def bad_inputs(h: Harness) -> list[tuple[str, str, object, set[str]]]:
    """(what, modality, stamp -> message, acceptable states)."""
    rig = h.rig
    empty = np.zeros(0, dtype=[("x", np.float32), ("y", np.float32), ("z", np.float32)])
    return [
        ("unknown encoding", "depth", lambda s: _image_with(rig.depth_image(s), encoding="weird16"), {"invalid"}),
        ("truncated image", "depth", lambda s: _image_with(rig.depth_image(s), data=bytes(100)), {"invalid"}),
        ("size mismatch", "depth", lambda s: _depth(rig, s, (HEIGHT, HEIGHT)), {"invalid", "degraded"}),
        ("NaN depth", "depth", lambda s: _depth(rig, s, (HEIGHT, WIDTH), nan_fraction=0.9),
         {"invalid", "degraded"}),
        ("empty cloud", "lidar", lambda s: _stamped(_cloud(empty), s), {"degraded", "invalid"}),
        ("malformed cloud", "lidar", lambda s: _image_with(rig.lidar_cloud(s), data=bytes(24)), {"invalid"}),
        ("malformed events", "event", lambda s: _image_with(rig.events(s), fields=rig.events(s).fields[:2]),
         {"invalid"}),
        ("time going backwards", "depth", lambda s: rig.depth_image(s - 5_000_000_000),
         {"stale", "invalid", "degraded"}),
    ]


def _digits(text: str) -> str:
    """Text with numbers blanked: a measured reason ('9% of pixels valid') varies by frame."""
    return re.sub(r"\d+", "#", text)


def _depth(rig, stamp: int, shape: tuple[int, int], nan_fraction: float = 0.0):
    """A changing depth image (so it is never `frozen`) of `shape`, partly NaN."""
    depth = rig.rng.uniform(2.0, 30.0, shape).astype(np.float32)
    depth[rig.rng.random(shape) < nan_fraction] = np.nan
    return numpy_to_image(depth, "32FC1", stamp_ns=stamp, frame_id=CAMERA_FRAME)


def _stamped(msg, stamp: int):
    from sam_mmseg_ros.ros.messages import ns_to_stamp

    msg.header.stamp = ns_to_stamp(stamp)
    return msg


def test_bad_inputs_keep_the_node_up(running):
    h, proc = running
    reasons = {}
    for what, modality, make, states in bad_inputs(h):
        h.override[modality] = make
        started = time.time_ns()
        h.wait_until(lambda m=modality, s=states, t=started: (last_health(h, t + 250 * MS) or {})
                     .get(m, {}).get("state") in s, 15, f"{modality} flagged for {what}", proc)
        health = last_health(h, started + 250 * MS)[modality]
        assert health["reason"], f"{what}: no reason given"
        assert health["state"] == "invalid" or "(now" not in health["reason"]
        reasons[what] = health["reason"]
        h.wait_until(lambda t=started: len([m for m in h.messages("labels") if stamp_ns(m) > t]) >= 2, 5,
                     f"output during {what}", proc)
        del h.override[modality]
        cleared = time.time_ns()
        h.wait_until(lambda m=modality, t=cleared: (last_health(h, t) or {}).get(m, {}).get("state") == "ok", 15,
                     f"{modality} to recover after {what}", proc)
    assert proc.proc.poll() is None
    for what, reason in reasons.items():
        if what == "time going backwards":
            continue  # its health reason is 'stale'; the log line names the jump instead
        logged = [line for line in proc.lines if _digits(reason) in _digits(line)]
        assert len(logged) == 1, f"{what}: '{reason}' logged {len(logged)} times:\n" + "\n".join(logged)
    jumps = [line for line in proc.lines if "jumped back" in line]
    assert len(jumps) == 1, "\n".join(jumps)
