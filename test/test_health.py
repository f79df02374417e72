"""HealthMonitor: every state, hysteresis, invalid clearing, frozen detection, rates, levels."""

import numpy as np
import pytest

from sam_mmseg_ros.contracts import MODALITIES, EventArray, FrameBundle, ImageData, PointCloud
from sam_mmseg_ros.health import ERROR, OK, WARN, HealthMonitor, HealthThresholds, diagnostic_level

MS = 1_000_000
rng = np.random.default_rng(0)

GOOD = {
    "rgb": {"saturated_fraction": 0.01, "dark_fraction": 0.05, "nonfinite_count": 0},
    "depth": {"valid_fraction": 0.9, "nonfinite_count": 0},
    "event": {"event_count": 5000, "event_rate_hz": 1e5},
    "lidar": {"points_total": 20000, "points_in_image": 4000, "in_image_fraction": 0.2, "nonfinite_count": 0},
}


def measurements(**changes) -> dict:
    out = {m: dict(v) for m, v in GOOD.items()}
    for m, values in changes.items():
        out[m].update(values)
    return out


def live_events(stamp_ns: int) -> EventArray:
    t = np.sort(rng.integers(stamp_ns - 50 * MS, stamp_ns, 100)).astype(np.int64)
    return EventArray(rng.integers(0, 8, 100), rng.integers(0, 4, 100), t, np.ones(100, np.int8), 8, 4)


def frame(i: int, depth=None, event=None, lidar=None, absent=None, **skip) -> FrameBundle:
    """Camera frame i at 10 Hz with fresh noisy content in every modality unless given or skipped."""
    stamp = i * 100 * MS
    bundle = FrameBundle(stamp_ns=stamp, frame_id="camera",
                         rgb=ImageData(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "rgb8"),
                         stamps={m: stamp for m in MODALITIES}, absent=dict(absent or {}))
    bundle.depth = depth if depth is not None else ImageData(rng.random((8, 8), np.float32), "32FC1")
    bundle.event = event if event is not None else live_events(stamp)
    bundle.lidar = lidar if lidar is not None else PointCloud(rng.random((50, 3)).astype(np.float32))
    for m in list(bundle.absent) + [m for m, drop in skip.items() if drop]:
        setattr(bundle, m, None)
        bundle.stamps.pop(m, None)
    return bundle


def run(monitor: HealthMonitor, i: int, meas=None, weights=None, **bundle_args):
    return monitor.update(frame(i, **bundle_args), meas or measurements(), now_ns=i * 100 * MS,
                          router_weights=weights)


def test_all_ok_with_router_weights_in_modality_order():
    health = run(HealthMonitor(), 0, weights=np.array([[0.4, 0.3, 0.2, 0.1]], np.float32))
    assert list(health) == list(MODALITIES)
    assert all(h.state == "ok" and h.reason == "" for h in health.values())
    assert [round(h.router_weight, 3) for h in health.values()] == [0.4, 0.3, 0.2, 0.1]
    assert health["depth"].valid_fraction == pytest.approx(0.9)
    assert health["rgb"].valid_fraction == pytest.approx(0.94)
    assert health["lidar"].measurements["points_in_image"] == 4000
    assert health["depth"].measurements["offset_ms"] == 0.0
    dict_weights = run(HealthMonitor(), 0, weights={"rgb": 1.0, "lidar": 0.0})
    assert dict_weights["rgb"].router_weight == 1.0 and np.isnan(dict_weights["depth"].router_weight)


def test_missing_disabled_and_never_received():
    monitor = HealthMonitor(enabled={"lidar": False})
    health = run(monitor, 0, absent={"depth": "never received", "lidar": "disabled"})
    assert (health["depth"].state, health["depth"].reason) == ("missing", "never received")
    assert (health["lidar"].state, health["lidar"].reason) == ("missing", "disabled")
    assert diagnostic_level(health["depth"], True) == WARN
    assert diagnostic_level(health["lidar"], False) == OK
    assert health["depth"].valid_fraction == 0.0


def test_stale_needs_hysteresis_then_holds():
    monitor = HealthMonitor(HealthThresholds(hysteresis_frames=3))
    run(monitor, 0)
    reason = "stale: nearest depth is 134 ms from the camera stamp (tolerance 20 ms)"
    states = [run(monitor, i, absent={"depth": reason})["depth"] for i in range(1, 5)]
    assert [h.state for h in states] == ["ok", "ok", "stale", "stale"]
    assert "now stale" in states[0].reason and "1/3 frames" in states[0].reason
    assert states[2].reason == reason


@pytest.mark.parametrize("modality, changes, expected", [
    ("rgb", {"saturated_fraction": 0.7}, "overexposed: 70% of pixels saturated (max 50%)"),
    ("rgb", {"dark_fraction": 0.8}, "underexposed: 80% of pixels dark (max 60%)"),
    ("rgb", {"nonfinite_count": 12}, "12 NaN/Inf pixels"),
    ("depth", {"valid_fraction": 0.1}, "only 10% of depth pixels valid (min 30%)"),
    ("lidar", {"points_in_image": 120}, "only 120 LiDAR points in the image (min 500)"),
    ("event", {"event_rate_hz": 200.0}, "event rate 200 Hz below 1e+03 Hz"),
    ("event", {"event_rate_hz": 1e8}, "event rate 1e+08 Hz above 5e+07 Hz"),
])
def test_degraded_reasons(modality, changes, expected):
    health = run(HealthMonitor(), 0, meas=measurements(**{modality: changes}))
    assert (health[modality].state, health[modality].reason) == ("degraded", expected)
    assert all(h.state == "ok" for m, h in health.items() if m != modality)
    assert diagnostic_level(health[modality], True) == (ERROR if modality == "rgb" else WARN)


def test_empty_event_window_is_degraded_and_missing_keys_are_tolerated():
    health = run(HealthMonitor(), 0, meas={"rgb": {}}, absent={"event": "no events in the 50 ms window"})
    assert (health["event"].state, health["event"].reason) == ("degraded", "no events in the 50 ms window")
    assert health["rgb"].state == health["depth"].state == health["lidar"].state == "ok"


def test_depth_nan_marks_no_return_not_a_fault():
    health = run(HealthMonitor(), 0, meas=measurements(depth={"nonfinite_count": 40, "valid_fraction": 0.5}))
    assert health["depth"].state == "ok" and health["depth"].measurements["nonfinite_count"] == 40


def test_alternating_inputs_do_not_flicker():
    monitor = HealthMonitor(HealthThresholds(hysteresis_frames=3))
    bad = measurements(depth={"valid_fraction": 0.1}, rgb={"dark_fraction": 0.9})
    states = [run(monitor, i, meas=bad if i % 2 else None) for i in range(21)]
    assert {h["depth"].state for h in states} == {"ok"} and {h["rgb"].state for h in states} == {"ok"}
    # once the problem persists it is reported, and recovery takes as long
    seq = [run(monitor, 21 + i, meas=bad)["depth"].state for i in range(3)]
    seq += [run(monitor, 24 + i)["depth"].state for i in range(3)]
    assert seq == ["ok", "ok", "degraded", "degraded", "degraded", "ok"]


def test_invalid_is_immediate_and_cleared_only_by_a_good_message():
    monitor = HealthMonitor(HealthThresholds(hysteresis_frames=2))
    run(monitor, 0)
    monitor.mark_invalid("lidar", "PointCloud2 has no float32 x/y/z fields", now_ns=50 * MS)
    h = run(monitor, 1)["lidar"]
    assert (h.state, h.reason) == ("invalid", "PointCloud2 has no float32 x/y/z fields")
    assert diagnostic_level(h, True) == ERROR
    assert run(monitor, 2)["lidar"].state == "invalid"  # still, no good message yet
    monitor.on_message("lidar", 250 * MS, 255 * MS)
    states = [run(monitor, i)["lidar"].state for i in (3, 4, 5)]
    assert states == ["invalid", "ok", "ok"]  # hysteresis on the way out


def test_frozen_after_n_identical_messages_but_not_for_a_reused_one():
    thresholds = HealthThresholds(frozen_frames=5)
    stuck = ImageData(np.arange(64, dtype=np.float32).reshape(8, 8), "32FC1")
    monitor = HealthMonitor(thresholds)
    states = [run(monitor, i, depth=ImageData(stuck.array.copy(), "32FC1"))["depth"] for i in range(6)]
    assert [h.state for h in states] == ["ok"] * 4 + ["frozen"] * 2
    assert states[4].reason == "content identical over the last 5 messages"
    assert diagnostic_level(states[4], True) == WARN
    # a 10 Hz depth image reused by several camera frames (same stamp) is one message
    monitor = HealthMonitor(thresholds)
    for i in range(10):
        bundle = frame(i, depth=stuck)
        bundle.stamps["depth"] = 0
        assert monitor.update(bundle, measurements(), i * 100 * MS)["depth"].state == "ok"


def test_frozen_lidar_and_blank_event_frames():
    cloud = PointCloud(rng.random((10_000, 3)).astype(np.float32))
    monitor = HealthMonitor()
    assert [run(monitor, i, lidar=cloud)["lidar"].state for i in range(5)][-1] == "frozen"
    blank = ImageData(np.zeros((4, 4, 3), np.uint8), "rgb8")  # a static scene gives blank event frames
    monitor = HealthMonitor()
    assert {run(monitor, i, event=blank)["event"].state for i in range(8)} == {"ok"}


def test_rate_and_age_from_received_messages():
    monitor = HealthMonitor(HealthThresholds(rate_window_s=1.0))
    for k in range(31):  # 20 Hz over 1.5 s
        monitor.on_message("depth", k * 50 * MS, k * 50 * MS + 2 * MS)
    h = monitor.update(frame(15), measurements(), now_ns=1_520 * MS)["depth"]
    assert h.rate_hz == pytest.approx(20.0)
    assert h.age_ms == pytest.approx(20.0)
    assert monitor.update(frame(40), measurements(), now_ns=4_000 * MS)["depth"].rate_hz == 0.0  # went quiet
    assert np.isnan(h.router_weight)
    offline = monitor.update(frame(1, absent={"lidar": "never received"}), {}, now_ns=130 * MS)
    assert offline["event"].age_ms == pytest.approx(30.0)  # no on_message: age of the message used
    assert np.isnan(offline["lidar"].age_ms)


def test_summary_and_levels():
    monitor = HealthMonitor(enabled={"event": False})
    assert monitor.summary()[0] == WARN
    run(monitor, 0, absent={"event": "disabled"})
    assert monitor.summary() == (OK, "all enabled modalities ok")
    run(monitor, 1, meas=measurements(rgb={"saturated_fraction": 0.9}), absent={"event": "disabled"})
    run(monitor, 2, meas=measurements(rgb={"saturated_fraction": 0.9}), absent={"event": "disabled"})
    run(monitor, 3, meas=measurements(rgb={"saturated_fraction": 0.9}), absent={"event": "disabled"})
    assert monitor.summary() == (ERROR, "rgb degraded")


def test_threshold_validation():
    with pytest.raises(ValueError):
        HealthThresholds(min_event_rate_hz=10, max_event_rate_hz=1)
    with pytest.raises(ValueError):
        HealthThresholds(frozen_frames=1)
