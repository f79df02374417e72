"""FrameAssembler: nearest-in-tolerance matching, event windows, resets, bounded buffers, threads,
and the bounded wait for partners that arrive after the camera image."""

import threading
import time

import numpy as np
import pytest

from sam_mmseg_ros.contracts import EventArray, ImageData, PointCloud, Stamped
from sam_mmseg_ros.sensors.camera import CameraModel
from sam_mmseg_ros.sync import NEVER_RECEIVED, NEVER_SINCE_RESET, FrameAssembler, SyncConfig

MS = 1_000_000


def image(value: int = 0) -> ImageData:
    return ImageData(np.full((4, 6), value, np.uint16), "16UC1")


def cloud(n: int = 3) -> PointCloud:
    return PointCloud(np.zeros((n, 3), np.float32), frame_id="lidar")


def events(t_ms: list[float]) -> EventArray:
    t = (np.asarray(t_ms, np.float64) * MS).astype(np.int64)
    n = len(t)
    return EventArray(np.arange(n, dtype=np.int32) % 8, np.zeros(n, np.int32), t, np.ones(n, np.int8), 8, 4)


def at(ms: float, data, frame_id: str = "") -> Stamped:
    return Stamped(int(ms * MS), data, frame_id)


def camera_frame(ms: float) -> Stamped:
    return at(ms, ImageData(np.zeros((4, 6, 3), np.uint8), "rgb8"), "camera")


def test_nearest_within_tolerance_on_either_side():
    asm = FrameAssembler()
    for ms, value in [(80, 1), (95, 2), (108, 3)]:
        asm.add("depth", at(ms, image(value)))
    bundle = asm.assemble(camera_frame(100))
    assert bundle.depth.array[0, 0] == 2 and bundle.stamps["depth"] == 95 * MS  # 5 ms before
    bundle = asm.assemble(camera_frame(105))
    assert bundle.depth.array[0, 0] == 3 and bundle.stamps["depth"] == 108 * MS  # 3 ms after
    assert bundle.frame_id == "camera" and bundle.stamps["rgb"] == 105 * MS


def test_tie_prefers_the_older_message():
    asm = FrameAssembler()
    asm.add("depth", at(90, image(1)))
    asm.add("depth", at(110, image(2)))
    assert asm.assemble(camera_frame(100)).depth.array[0, 0] == 1


def test_out_of_order_arrival_is_kept_in_stamp_order():
    asm = FrameAssembler()
    for ms in (100, 60, 80, 120, 40):
        asm.add("lidar", at(ms, cloud(int(ms))))
    assert len(asm.assemble(camera_frame(83)).lidar) == 80
    assert len(asm.assemble(camera_frame(55)).lidar) == 60
    assert len(asm.assemble(camera_frame(41)).lidar) == 40


def test_stale_modality_reports_how_far_and_its_tolerance():
    asm = FrameAssembler()
    asm.add("depth", at(0, image()))
    bundle = asm.assemble(camera_frame(134))
    assert bundle.depth is None
    assert bundle.absent["depth"] == "stale: nearest depth is 134 ms from the camera stamp (tolerance 20 ms)"
    assert "depth" not in bundle.stamps


def test_never_received_disabled_and_camera_info():
    asm = FrameAssembler(SyncConfig(enabled={"lidar": False}))
    asm.add("lidar", at(100, cloud()))  # dropped: disabled
    assert asm.buffered()["lidar"] == 0
    bundle = asm.assemble(camera_frame(100))
    assert bundle.absent == {"depth": NEVER_RECEIVED, "event": NEVER_RECEIVED, "lidar": "disabled"}
    assert bundle.camera is None and bundle.present() == ("rgb",)
    camera = CameraModel.from_fov(6, 4, 90.0, "camera")
    asm.set_camera(camera)
    assert asm.assemble(camera_frame(133)).camera is camera


def test_a_modality_that_stops_never_stalls_and_memory_stays_bounded():
    config = SyncConfig(buffer_size={"depth": 32, "lidar": 32}, event_chunk_limit=64)
    asm = FrameAssembler(config)
    for i in range(10_000):
        asm.add("depth", at(i, image()))
        asm.add("lidar", at(i, cloud()))
        asm.add("event", at(i, events([i, i + 0.5])))
    counts = asm.buffered()
    assert counts == {"depth": 32, "event": 64, "lidar": 32}
    # depth and LiDAR stop; the camera keeps going and every frame still produces a bundle
    for k in range(1, 6):
        bundle = asm.assemble(camera_frame(9_999 + 100 * k))
        assert bundle.rgb is not None
        assert bundle.absent["depth"].startswith("stale: nearest depth is")
        assert bundle.absent["event"].startswith("stale: newest event is")
    assert asm.buffered() == counts


def test_event_chunks_are_bounded_by_time_span():
    asm = FrameAssembler(SyncConfig(event_history_ms=100))
    for i in range(100):
        asm.add("event", at(10 * i, events([10 * i + j for j in range(10)])))  # 10 ms chunks, 0..999 ms
    # chunks ending more than 100 ms before the newest event (999 ms) are gone
    assert asm.buffered()["event"] == 11


def test_event_window_is_cut_exactly_and_survives_out_of_order_chunks():
    asm = FrameAssembler(SyncConfig(event_window_ms=50))
    chunks = [events(np.arange(start, start + 10, 1.0)) for start in range(0, 200, 10)]  # one event per ms
    order = [3, 0, 1, 2, 5, 4, 7, 6] + list(range(8, 20))
    for i in order:
        asm.add("event", at(float(chunks[i].t_ns[0] / MS), chunks[i]))
    bundle = asm.assemble(camera_frame(100))
    t = np.sort(bundle.event.t_ns)
    assert len(bundle.event) == 50  # (50, 100] ms
    assert t[0] == 51 * MS and t[-1] == 100 * MS
    assert np.array_equal(t, np.arange(51, 101) * MS)
    assert bundle.stamps["event"] == 100 * MS
    assert (bundle.event.width, bundle.event.height) == (8, 4)


def test_event_gaps_are_stale_or_empty_windows():
    asm = FrameAssembler()
    asm.add("event", at(0, events([0, 1, 2])))
    bundle = asm.assemble(camera_frame(200))
    assert bundle.event is None
    assert bundle.absent["event"] == "stale: newest event is 198 ms before the camera stamp (50 ms window)"
    asm.add("event", at(300, events([])))  # an empty chunk: the stream is alive, the scene is static
    asm.add("event", at(400, events([400])))
    assert asm.assemble(camera_frame(330)).absent["event"] == "no events in the 50 ms window"


def test_event_frames_use_the_nearest_rule():
    asm = FrameAssembler()
    asm.add("event", at(100, ImageData(np.ones((4, 6, 3), np.uint8), "rgb8")))
    assert asm.assemble(camera_frame(120)).event.array.shape == (4, 6, 3)
    assert asm.assemble(camera_frame(140)).absent["event"] == (
        "stale: nearest event is 40 ms from the camera stamp (tolerance 30 ms)")


def test_backwards_jump_resets_every_buffer():
    reported = []
    asm = FrameAssembler(on_reset=reported.append)
    for ms in range(9_000, 10_001, 100):
        asm.add("depth", at(ms, image()))
        asm.add("lidar", at(ms, cloud()))
    assert asm.add("depth", at(9_500, image())) is None  # late by 0.5 s: kept, no reset
    assert asm.resets == 0
    reason = asm.add("depth", at(10, image()))  # the bag looped
    assert reason is not None and "depth stamp jumped back 9.990 s" in reason
    assert asm.resets == 1 and asm.last_reset_reason == reason
    assert asm.buffered() == {"depth": 1, "event": 0, "lidar": 0}
    bundle = asm.assemble(camera_frame(15))
    assert bundle.depth is not None and bundle.absent["lidar"] == NEVER_SINCE_RESET
    # the camera jumping back resets too
    asm.assemble(camera_frame(5_000))
    asm.assemble(camera_frame(1_000))
    assert asm.resets == 2 and asm.last_reset_reason.startswith("rgb stamp jumped back 4.000 s")
    assert asm.buffered() == {"depth": 0, "event": 0, "lidar": 0}
    assert reported == [reason, asm.last_reset_reason]  # once per reset, from add and from assemble


def test_concurrent_adds_and_assembly():
    asm = FrameAssembler()
    errors = []

    def feed(modality, make):
        try:
            for i in range(2_000):
                asm.add(modality, at(i, make(i)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=feed, args=args) for args in
               [("depth", lambda i: image()), ("lidar", lambda i: cloud()),
                ("event", lambda i: events([i, i + 0.5]))]]
    for t in threads:
        t.start()
    bundles = [asm.assemble(camera_frame(i)) for i in range(0, 2_000, 4)]
    for t in threads:
        t.join()
    assert not errors and len(bundles) == 500 and asm.resets == 0
    final = asm.assemble(camera_frame(1_999))
    assert final.present() == ("rgb", "depth", "event", "lidar")
    assert asm.buffered()["depth"] == asm.buffered()["lidar"] == asm.config.buffer_size["depth"]


def test_bad_calls_and_config():
    asm = FrameAssembler()
    with pytest.raises(ValueError, match="unknown modality"):
        asm.add("radar", at(0, image()))
    with pytest.raises(TypeError, match="lidar expects PointCloud or ImageData"):
        asm.add("lidar", at(0, EventArray.empty(4, 4)))
    config = SyncConfig(tolerance_ms={"depth": 10})
    assert config.tolerance_ms == {"depth": 10, "event": 30.0, "lidar": 60.0}
    with pytest.raises(ValueError, match="unknown modalities"):
        SyncConfig(enabled={"rgb": False})
    with pytest.raises(ValueError):
        SyncConfig(event_window_ms=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        SyncConfig(max_wait_ms=-1)


# ------------------------------------------------------------------ waiting for late partners


def periodic(asm: FrameAssembler, modality: str, last_ms: float, period_ms: float = 100, count: int = 5):
    """`count` messages every `period_ms` up to `last_ms` (a live 10 Hz stream by default)."""
    for k in range(count - 1, -1, -1):
        ms = last_ms - k * period_ms
        asm.add(modality, at(ms, cloud() if modality == "lidar" else image()))


def test_a_partner_behind_the_camera_is_awaited_until_it_arrives():
    asm = FrameAssembler()
    periodic(asm, "depth", 400)
    periodic(asm, "lidar", 400)
    assert asm.awaited(500 * MS) == {"depth", "lidar"}  # their 500 ms messages are still on the way
    asm.add("depth", at(500, image(5)))
    assert asm.awaited(500 * MS) == {"lidar"}
    asm.add("lidar", at(497, cloud(7)))  # within tolerance, before the camera: nearest could still change
    assert asm.awaited(500 * MS) == set()  # ...but the next one is expected 100 ms later, not nearer
    bundle = asm.assemble(camera_frame(500))
    assert bundle.stamps["depth"] == 500 * MS and len(bundle.lidar) == 7


def test_a_stopped_sensor_is_not_waited_for():
    asm = FrameAssembler()
    periodic(asm, "depth", 400)
    assert asm.awaited(600 * MS) == {"depth"}  # one message missing: maybe dropped, still alive
    assert asm.awaited(700 * MS) == set()  # two missing: stopped (2.5 periods + max_wait = 280 ms)
    started = time.monotonic()
    assert asm.wait_for_partners(700 * MS, timeout_s=2.0) == set()
    assert time.monotonic() - started < 0.1
    assert asm.assemble(camera_frame(700)).absent["depth"].startswith("stale")


def test_nothing_to_wait_for_without_a_known_rate_or_when_disabled():
    asm = FrameAssembler(SyncConfig(enabled={"lidar": False}))
    assert asm.awaited(500 * MS) == set()  # never received
    asm.add("depth", at(400, image()))
    assert asm.awaited(500 * MS) == set()  # one message: no period yet
    asm.add("lidar", at(400, cloud()))
    asm.add("lidar", at(300, cloud()))
    assert asm.awaited(500 * MS) == set()


def test_only_a_message_that_would_change_the_match_is_awaited():
    asm = FrameAssembler()
    periodic(asm, "depth", 430)  # 10 Hz, 70 ms off the camera: its next one (530) is out of tolerance too
    assert asm.awaited(500 * MS) == set()
    asm = FrameAssembler()
    periodic(asm, "depth", 484, period_ms=33.3)  # 30 Hz: 16 ms before; the next, 17 ms after, is farther
    assert asm.awaited(500 * MS) == set()
    periodic(asm, "lidar", 490, period_ms=20)  # 50 Hz: the next (510) is only as near, and ties go older
    assert asm.awaited(500 * MS) == set()
    asm = FrameAssembler()
    periodic(asm, "depth", 485, period_ms=20)  # the next (505) is nearer than the buffered 485
    assert asm.awaited(500 * MS) == {"depth"}


def test_wait_is_bounded_and_a_late_partner_within_the_bound_is_used():
    asm = FrameAssembler(SyncConfig(max_wait_ms=200))
    periodic(asm, "depth", 400)
    started = time.monotonic()
    assert asm.wait_for_partners(500 * MS, timeout_s=0.05) == {"depth"}
    assert 0.05 <= time.monotonic() - started < 0.5

    def late_depth():
        time.sleep(0.03)
        asm.add("lidar", at(450, cloud()))  # unrelated arrivals wake the waiter, which waits on
        time.sleep(0.02)
        asm.add("depth", at(500, image(9)))

    sender = threading.Thread(target=late_depth)
    started = time.monotonic()
    sender.start()
    assert asm.wait_for_partners(500 * MS) == set()  # the configured bound: 200 ms
    waited = time.monotonic() - started
    sender.join()
    assert 0.05 <= waited < 0.19
    bundle = asm.assemble(camera_frame(500))
    assert bundle.depth.array[0, 0] == 9 and bundle.stamps["depth"] == 500 * MS


def test_max_wait_zero_never_waits():
    asm = FrameAssembler(SyncConfig(max_wait_ms=0))
    periodic(asm, "depth", 400)
    started = time.monotonic()
    assert asm.wait_for_partners(500 * MS) == {"depth"}
    assert time.monotonic() - started < 0.05


def test_event_window_is_awaited_until_the_stream_reaches_the_camera_stamp():
    asm = FrameAssembler()
    for start in range(300, 500, 10):  # 10 ms chunks, events up to 499.5 ms
        asm.add("event", at(start, events(np.arange(start, start + 10, 0.5))))
    assert asm.awaited(500 * MS) == set()  # within event_complete_slack_ms (1 ms) of the camera stamp
    assert asm.awaited(520 * MS) == {"event"}  # the chunks reaching 520 ms are on their way
    asm.add("event", at(500, events(np.arange(500, 520, 0.5))))
    assert asm.awaited(520 * MS) == set()
    assert asm.awaited(600 * MS) == set()  # 80 ms behind a 10 ms chunk stream: stopped
    asm = FrameAssembler()
    for start in range(300, 550, 50):  # 50 ms chunks up to 549.5 ms
        asm.add("event", at(start, events(np.arange(start, start + 50, 0.5))))
    assert asm.awaited(560 * MS) == set()  # the chunk reaching 560 ends at 599.5: past max_wait


def test_a_reset_ends_the_wait():
    asm = FrameAssembler(SyncConfig(max_wait_ms=200))
    periodic(asm, "depth", 10_400)
    threading.Timer(0.03, lambda: asm.add("depth", at(5, image()))).start()  # the bag looped
    started = time.monotonic()
    assert asm.wait_for_partners(10_500 * MS) == set()
    assert time.monotonic() - started < 0.15 and asm.resets == 1
