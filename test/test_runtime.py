"""The node's ROS-free core: run-time settings, the worker's frame path, model and camera status,
and logging a problem once per kind."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from sam_mmseg_ros.contracts import MODALITIES
from sam_mmseg_ros.health import ERROR, OK, WARN
from sam_mmseg_ros.node_settings import NodeSettings
from sam_mmseg_ros.reporting import ProblemLog, problem_kind
from sam_mmseg_ros.runtime import SegmentationCore
from sam_mmseg_ros.status import UNTRAINED, CameraWatchdog, ModelState, node_status

WIDTH, HEIGHT = 32, 24
STAMP = 1_700_000_000_000_000_000


class FakeBackend:
    name, precision = "fake", "fp32"
    input_shape = (1, len(MODALITIES), 3, 16, 16)

    def __init__(self, trained=True):
        self.metadata = {"trained": trained}
        self.calls = 0

    def warmup(self):
        pass

    def infer(self, images, modality_mask):
        self.calls += 1
        labels = np.zeros((1, 16, 16), np.int32)
        labels[:, :, 8:] = 2
        weights = modality_mask / modality_mask.sum()
        return {"labels": labels, "confidence": np.ones((1, 16, 16), np.float32), "router_weights": weights}


def header(stamp_ns=STAMP, frame_id="cam"):
    return SimpleNamespace(stamp=SimpleNamespace(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)


def image_msg(stamp_ns=STAMP, encoding="rgb8", seed=0):
    pixels = np.random.default_rng(seed).integers(20, 230, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return SimpleNamespace(header=header(stamp_ns), height=HEIGHT, width=WIDTH, encoding=encoding, is_bigendian=0,
                           step=WIDTH * 3, data=pixels.tobytes())


def make_core(monkeypatch, backend=None, **values) -> SegmentationCore:
    import sam_mmseg_ros.engine as engine

    backend = backend or FakeBackend()
    monkeypatch.setattr(engine, "create_backend", lambda kind, **options: backend)
    settings = NodeSettings.from_values({"enable.depth": False, "enable.event": False, "enable.lidar": False,
                                         "cpu_threads": 0, **values})
    now = {"ns": STAMP}
    core = SegmentationCore(settings, lambda: now["ns"])
    return core


def test_a_run_time_change_rebuilds_the_settings_and_is_applied_with_one_call(monkeypatch):
    core = make_core(monkeypatch)
    changed = NodeSettings.from_values({**core.settings.values, "sync.tolerance_ms.depth": 5.0,
                                        "health.hysteresis_frames": 4, "camera_timeout_s": 0.5,
                                        "overlay_alpha": 0.9})
    core.apply(changed)
    assert core.feeder.assembler.config.tolerance_ms["depth"] == 5.0
    assert core.feeder.health.thresholds.hysteresis_frames == 4
    assert core.camera.timeout_s == 0.5
    assert core.settings.overlay_alpha == 0.9


def test_worker_segments_camera_frames_and_renders_only_wanted_outputs(monkeypatch):
    core = make_core(monkeypatch)
    assert core.load_model() and core.model.state == "ready"
    core.on_camera(image_msg())
    camera = core.slot.take(0.1)
    out = core.process(camera, lambda camera_frame, lidar_frame: np.eye(4), {"labels", "modality_health"})
    assert (out.stamp_ns, out.frame_id) == (STAMP, "cam")
    assert out.labels.shape == (HEIGHT, WIDTH) and set(np.unique(out.labels)) == {0, 2}
    assert out.color is None and out.overlay is None and out.painted_points is None
    assert out.modality_health["rgb"].state == "ok" and out.modality_health["lidar"].state == "missing"
    everything = core.process(camera, lambda *_: np.eye(4), {"labels", "color", "overlay", "painted_points"})
    assert everything.color.shape == everything.overlay.shape == (HEIGHT, WIDTH, 3)
    assert everything.painted_points.dtype.names == ("x", "y", "z", "rgb", "label")
    assert core.stats.published == 2


def test_frames_the_worker_never_took_are_dropped_and_counted(monkeypatch):
    core = make_core(monkeypatch)
    for i in range(3):
        core.on_camera(image_msg(STAMP + i * 100_000_000))
    assert core.stats.dropped == 2 and core.slot.take(0.1).stamp_ns == STAMP + 200_000_000


def test_serve_loads_the_model_publishes_and_stops(monkeypatch):
    core = make_core(monkeypatch)
    published, stop = [], threading.Event()
    worker = threading.Thread(target=core.serve, kwargs=dict(
        stop=stop, lookup_transform=lambda *_: np.eye(4), wanted=lambda: {"labels"}, publish=published.append))
    worker.start()
    core.on_camera(image_msg())
    deadline = time.monotonic() + 10
    while not published and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    worker.join(5)
    assert not worker.is_alive() and published[0].labels is not None


def test_model_failure_is_reported_not_raised(monkeypatch):
    import sam_mmseg_ros.engine as engine

    core = make_core(monkeypatch)

    def broken(kind, **options):
        raise RuntimeError("no such file")

    monkeypatch.setattr(engine, "create_backend", broken)
    assert not core.load_model()
    report = core.report()
    assert report.node.level == ERROR and "model failed to load: no such file" in report.node.message
    assert report.node.values["model_state"] == "failed"


def test_model_state_rules():
    model = ModelState("auto")
    assert model.problem() == (WARN, "loading model (backend=auto)")
    model.ready(FakeBackend(trained=False))
    assert model.problem() == (ERROR, UNTRAINED)
    model.ready(FakeBackend(trained=True))
    assert model.problem() is None and model.values("fp16")["backend"] == "fake"
    model.failed("model failed to load: x")
    assert model.problem() == (ERROR, "model failed to load: x") and not model.trained


def test_why_better_backends_were_skipped_reaches_diagnostics(monkeypatch):
    backend = FakeBackend()
    backend.fallback_reasons = ("tensorrt: GpuResourceError: out of memory", "onnxruntime-gpu: no CUDA provider")
    core = make_core(monkeypatch, backend)
    assert core.load_model()
    assert core.report().node.values["fallbacks"] == ("tensorrt: GpuResourceError: out of memory | "
                                                      "onnxruntime-gpu: no CUDA provider")


def test_engine_parameters_reach_create_backend(monkeypatch):
    import sam_mmseg_ros.engine as engine

    core = make_core(monkeypatch, use_cuda_graph=True, engine_workspace_mib=512, precision="fp32")
    asked = {}
    monkeypatch.setattr(engine, "create_backend", lambda kind, **options: asked.update(options) or FakeBackend())
    assert core.load_model()
    assert asked["use_cuda_graph"] is True and asked["workspace_mib"] == 512 and asked["precision"] == "fp32"
    assert NodeSettings.from_values({}).model.backend_options()["workspace_mib"] is None  # 0: sized to the GPU


def test_camera_silence_is_an_error_and_makes_rgb_stale_with_weight_zero(monkeypatch):
    clock = {"t": 100.0}
    camera = CameraWatchdog(timeout_s=1.0, clock=lambda: clock["t"])
    model = ModelState("torch")
    model.ready(FakeBackend())
    assert node_status(model, camera, {}).level == WARN  # no image yet
    camera.seen()
    clock["t"] += 0.5
    assert node_status(model, camera, {}).message == "running"
    core = make_core(monkeypatch)
    core.load_model()
    core.on_camera(image_msg())
    core.process(core.slot.take(0.1), lambda *_: np.eye(4), set())
    core.camera.clock = lambda: clock["t"]
    core.camera.seen()
    assert core.report().node.level == OK
    clock["t"] += 2.5
    report = core.report()
    assert report.node.level == ERROR and "camera stopped: no image for 2.5 s" in report.node.message
    rgb = next(h for h, _ in report.modalities if h.name == "rgb")
    assert rgb.state == "stale" and rgb.router_weight == 0.0


def test_a_problem_is_logged_once_per_kind_not_per_text():
    lines, clock = [], {"t": 0.0}
    log = ProblemLog(lines.append, lines.append, quiet_s=10.0, clock=lambda: clock["t"])
    for n in range(14):
        log.report("event", f"{n} of 200 events lie outside the 64x48 event sensor")
    assert len(lines) == 1 and problem_kind(lines[0]) == problem_kind("event: 1 of 2 events lie outside the 6x4 event sensor")
    log.report("event", "events arrived before the first camera image")  # another kind: logged at once
    log.report("depth", "image buffer truncated")  # another source
    assert len(lines) == 3
    clock["t"] = 5.0
    log.report("event", "events arrived before the first camera image")
    assert len(lines) == 3
    clock["t"] = 20.0  # quiet for longer than quiet_s: logged again
    log.report("event", "events arrived before the first camera image")
    assert len(lines) == 4
    log.resolve("event", "decodes again")
    log.resolve("event", "decodes again")  # only once
    assert lines[-1] == "event: decodes again" and len(lines) == 5 and "event" not in log.current
    assert log.current == {"depth": "image buffer truncated"}


def test_undecodable_camera_is_marked_invalid_and_logged_once(monkeypatch):
    core = make_core(monkeypatch)
    warnings = []
    core.problems = core.feeder.problems = ProblemLog(warnings.append)
    for i in range(5):
        core.on_camera(image_msg(STAMP + i, encoding="yuv999"))
    assert len(warnings) == 1 and "unsupported image encoding 'yuv999'" in warnings[0]
    assert core.camera.silence_s() is not None  # the camera is alive even when it cannot be decoded


@pytest.mark.parametrize("bad", [{"health.max_saturated_fraction": 5.0}, {"backend": "x"}])
def test_settings_a_node_would_refuse_at_start_up_are_refused_at_run_time(bad):
    from sam_mmseg_ros.settings import SettingsError

    with pytest.raises(SettingsError):
        NodeSettings.from_values({**NodeSettings.from_values({}).values, **bad})


# ------------------------------------------------------------------ inputs real drivers publish


def test_an_undecodable_camera_gives_health_outputs_and_an_error_at_once(monkeypatch):
    """Unknown encoding, truncated data, step too small, zero size: rgb is `invalid` with the reason,
    /diagnostics says ERROR before the worker even gets the frame, and every such camera message
    still gets its modality_health."""
    core = make_core(monkeypatch)
    assert core.load_model()
    good = image_msg()
    broken = [SimpleNamespace(**{**vars(good), **change}) for change in (
        dict(encoding="yuv420"), dict(data=good.data[:100]), dict(step=WIDTH), dict(width=0, height=0))]
    for i, msg in enumerate(broken):
        msg.header = header(STAMP + (i + 1) * 100_000_000)
        assert core.on_camera(msg) is False
        report = core.report()
        assert report.node.level == ERROR and "cannot be decoded" in report.node.message
        rgb = dict((h.name, h) for h, _ in report.modalities)["rgb"]
        assert rgb.state == "invalid" and rgb.reason and rgb.reason in report.node.message
        out = core.health_only(core.slot.take(0.1), {"modality_health", "labels"})
        assert out.stamp_ns == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        assert out.labels is None and out.modality_health["rgb"].state == "invalid"
    for i in range(2):  # leaving `invalid` takes health.hysteresis_frames good frames
        assert core.on_camera(image_msg(STAMP + (10 + i) * 10**8)) is True
        out = core.process(core.slot.take(0.1), lambda *_: np.eye(4), {"modality_health"})
    assert out.modality_health["rgb"].state == "ok" and core.report().node.level == OK


def test_compressed_camera_and_event_packets_reach_the_model(monkeypatch):
    """The live callbacks take CompressedImage and EventPacket-shaped messages (the fields rclpy's
    event_camera_msgs type has), the same code offline evaluation feeds from bags."""
    cv2 = pytest.importorskip("cv2")
    from event_packets import evt3_words, random_events

    core = make_core(monkeypatch, **{"enable.event": True, "event_input": "packet", "rgb_transport": "compressed"})
    assert core.load_model()
    events = random_events(2000, 64, 48, t0_us=1_000_000, span_us=40_000, seed=0)
    packet = SimpleNamespace(header=header(STAMP - 45_000_000, "events"), height=48, width=64, seq=0, time_base=0,
                             encoding="evt3", is_bigendian=False, events=evt3_words(events).tobytes())
    core.on_message("event", packet)
    pixels = np.random.default_rng(1).integers(20, 230, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    jpeg = SimpleNamespace(header=header(), format="rgb8; jpeg compressed bgr8",
                           data=cv2.imencode(".jpg", pixels[..., ::-1])[1].tobytes())
    assert core.on_camera(jpeg) is True
    out = core.process(core.slot.take(0.1), lambda *_: np.eye(4), {"modality_health", "overlay"})
    health = {m: (h.state, h.reason) for m, h in out.modality_health.items()}
    assert health["rgb"][0] == "ok" and health["event"][0] != "invalid", health
    assert out.overlay.shape == (HEIGHT, WIDTH, 3)
    bundle = core.feeder.assemble(core.feeder.receive_camera(jpeg, STAMP), wait=False)
    assert bundle.event is not None and len(bundle.event) > 0 and bundle.event.width == 64


def test_a_refused_camera_info_is_named_in_depth_lidar_health_and_the_status(monkeypatch):
    core = make_core(monkeypatch, **{"enable.lidar": True})
    assert core.load_model()
    info = SimpleNamespace(header=header(), width=WIDTH, height=HEIGHT, distortion_model="double_sphere",
                           d=[0.1, 0.2, 0.3], k=[20.0, 0, 16, 0, 20, 12, 0, 0, 1], p=[0.0] * 12)
    core.on_message("camera_info", info)
    cloud = SimpleNamespace(header=header(frame_id="lidar"), height=1, width=1, is_bigendian=False, point_step=12,
                            row_step=12, is_dense=True, data=np.array([[0.0, 0.0, 5.0]], np.float32).tobytes(),
                            fields=[SimpleNamespace(name=n, offset=4 * i, datatype=7, count=1)
                                    for i, n in enumerate("xyz")])
    core.on_message("lidar", cloud)
    core.on_camera(image_msg())
    out = core.process(core.slot.take(0.1), lambda *_: np.eye(4), {"modality_health"})
    lidar = out.modality_health["lidar"]
    assert lidar.state == "invalid" and "unsupported distortion model 'double_sphere'" in lidar.reason
    report = core.report()
    assert report.node.level == WARN and "unsupported distortion model 'double_sphere'" in report.node.message


class DepthBackend(FakeBackend):
    output_names = ("labels", "confidence", "router_weights", "depth")

    def infer(self, images, modality_mask):
        return {**super().infer(images, modality_mask), "depth": np.full((1, 16, 16), 7.5, np.float32)}


def test_depth_is_rendered_only_when_wanted_and_the_task_can_be_turned_off(monkeypatch):
    core = make_core(monkeypatch, DepthBackend())
    assert core.load_model()
    core.on_camera(image_msg())
    camera = core.slot.take(0.1)
    out = core.process(camera, lambda *_: np.eye(4), {"labels", "depth"})
    assert out.depth.shape == (HEIGHT, WIDTH) and out.depth.dtype == np.float32
    np.testing.assert_allclose(out.depth, 7.5, rtol=1e-6)  # labels 0 and 2: no sky, every pixel valid
    assert core.process(camera, lambda *_: np.eye(4), {"labels"}).depth is None
    assert make_core(monkeypatch).settings.model.backend_options()["tasks"] is None
    off = make_core(monkeypatch, DepthBackend(), depth_task=False).settings.model.backend_options()
    assert off["tasks"] == ("semantic",)
