"""The node without ROS: callbacks in, frames out, state for diagnostics.

`SegmentationCore` is everything the `sam_mmseg` node does except talking to ROS: callbacks hand
it messages (decoded by `ingest.FrameFeeder`, the code offline evaluation runs too), one worker
thread (`serve`) loads the model, then assembles, segments and renders each camera frame, and
`report` says how the node is doing. The camera frame waiting for the worker sits in a
latest-frame-wins slot of depth 1, so when inference is slower than the camera, old frames are
dropped (and counted) instead of queueing up latency. The node only wires topics, parameters and
timers to it, so all of this is unit-tested without DDS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sam_mmseg_ros.contracts import MODALITIES, Stamped
from sam_mmseg_ros.health import ERROR, WARN, ModalityHealth
from sam_mmseg_ros.ingest import FrameFeeder, UndecodableFrame, model_source
from sam_mmseg_ros.labels import colorize, overlay
from sam_mmseg_ros.node_settings import NodeSettings
from sam_mmseg_ros.pipeline import SegmentationPipeline
from sam_mmseg_ros.reporting import ProblemLog, RateStats
from sam_mmseg_ros.status import CameraWatchdog, ModelState, NodeStatus, node_status

MODEL_READY = "model ready"
"""Start of the log line once the backend is loaded and warmed up (replay_eval.launch.py waits
for it before replaying)."""


class LatestSlot:
    """A queue of depth 1 where a newer item replaces the waiting one (latest frame wins)."""

    def __init__(self):
        self._item = None
        self._cond = threading.Condition()

    def put(self, item) -> bool:
        """Store `item`; True when it replaced one the worker never took (a dropped frame)."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float):
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item


def painted_cloud(xyz: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Structured points x, y, z, rgb (RViz's packed float), label for a PointCloud2."""
    points = np.zeros(len(labels), dtype=[("x", np.float32), ("y", np.float32), ("z", np.float32),
                                          ("rgb", np.float32), ("label", np.uint8)])
    points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    color = colorize(labels[None]).astype(np.uint32)[0]
    packed = (color[:, 0] << 16) | (color[:, 1] << 8) | color[:, 2]
    points["rgb"] = packed.astype(np.uint32).view(np.float32)
    points["label"] = labels
    return points


@dataclass
class FrameOutputs:
    """One camera frame's outputs, each None when not wanted; all carry the camera's stamp and
    frame_id."""

    stamp_ns: int
    frame_id: str
    labels: np.ndarray | None = None  # uint8 [H, W] class ids
    color: np.ndarray | None = None  # uint8 [H, W, 3]
    overlay: np.ndarray | None = None  # uint8 [H, W, 3]
    painted_points: np.ndarray | None = None  # painted_cloud() structured points
    modality_health: dict[str, ModalityHealth] | None = None
    depth: np.ndarray | None = None  # float32 [H, W] metres, NaN where invalid (depth models)


@dataclass(frozen=True)
class Report:
    """What /diagnostics shows: the node's status and each modality's health (with enabled flag)."""

    node: NodeStatus
    modalities: list[tuple[ModalityHealth, bool]]

    def signature(self) -> tuple:
        """What 'changed' means for publishing on change: levels, states and messages, not numbers."""
        return (self.node.level, self.node.message,
                *((h.name, h.state, h.reason, enabled) for h, enabled in self.modalities))


class SegmentationCore:
    def __init__(self, settings: NodeSettings, now_ns: Callable[[], int],
                 log: logging.Logger | logging.LoggerAdapter | None = None):
        self.settings = settings
        self.log = log or logging.getLogger("sam_mmseg")
        self.now_ns = now_ns
        self.problems = ProblemLog(self.log.warning, self.log.info)
        self.feeder = FrameFeeder(settings, self.problems)
        self.model = ModelState(settings.model.backend)
        self.camera = CameraWatchdog(settings.camera_timeout_s)
        self.stats = RateStats()
        self.slot = LatestSlot()
        self.pipeline: SegmentationPipeline | None = None
        self._last_health: dict[str, ModalityHealth] = {}
        self._states: dict[str, str] = {}
        self._input_problems: dict[str, tuple[int, str]] = {}

    # ------------------------------------------------------------------------ callbacks, settings

    def on_camera(self, msg) -> bool:
        """A camera message: decode it and hand it to the worker (replacing one it never took). An
        undecodable one goes to the worker too, for its modality_health output; returns False for
        it, so the node can publish /diagnostics at once."""
        self._input_problems.pop("qos rgb", None)  # messages arrive: whatever blocked them is gone
        frame = self.feeder.receive_camera(msg, self.now_ns())
        undecodable = isinstance(frame, UndecodableFrame)
        self.camera.seen(frame.reason if undecodable else None)
        if self.slot.put(frame):
            self.stats.dropped += 1
        return not undecodable

    def input_problem(self, key: str, text: str | None, level: int = WARN) -> None:
        """Record (or with None clear) a problem of the inputs for the node's status, e.g. an
        incompatible QoS; an ERROR when nothing can be segmented because of it."""
        if text is None:
            self._input_problems.pop(key, None)
        elif self._input_problems.get(key) != (level, text):
            self._input_problems[key] = (level, text)
            (self.log.error if level >= ERROR else self.log.warning)(text)

    def on_message(self, kind: str, msg) -> None:
        """Any other input (camera_info, depth, event, lidar)."""
        self._input_problems.pop(f"qos {kind}", None)
        self.feeder.feed(kind, msg, self.now_ns())

    def apply(self, settings: NodeSettings) -> None:
        """Settings rebuilt after a run-time parameter change (only `runtime` ones can differ)."""
        self.settings = settings
        self.feeder.apply(settings)
        self.camera.timeout_s = settings.camera_timeout_s

    # ------------------------------------------------------------------------ worker

    def load_model(self) -> bool:
        """Create and warm up the backend; a failure is reported, never raised."""
        from sam_mmseg_ros.engine import create_backend

        model = self.settings.model
        if model.cpu_threads > 0:
            import torch

            torch.set_num_threads(model.cpu_threads)
        try:
            backend = create_backend(model.backend, **model.backend_options(),
                                     logger=logging.getLogger("sam_mmseg_ros.engine"))
            # The model's own encodings, checked before any frame: a model trained on inputs this
            # node cannot produce is refused, not fed differently encoded ones.
            config = self.settings.preprocess_config(backend.input_shape[-2:], backend.metadata.get("encodings"),
                                                     model_source(backend))
            backend.warmup()
        except Exception as exc:  # noqa: BLE001 - any load failure is reported, the node stays up
            self.model.failed(f"model failed to load: {exc}")
            self.log.error(self.model.error)
            return False
        self.pipeline = SegmentationPipeline(backend, config, self.feeder.health)
        self.model.ready(backend)
        self.log.info(f"{MODEL_READY}: backend={backend.name} precision={backend.precision} "
                      f"input={tuple(backend.input_shape)} trained={self.model.trained} "
                      f"encodings={','.join(config.encodings.values())}")
        if (problem := self.model.problem()) is not None:
            self.log.error(problem[1])
        return True

    def serve(self, stop: threading.Event, lookup_transform: Callable[[str, str], np.ndarray],
              wanted: Callable[[], set[str]], publish: Callable[[FrameOutputs], None],
              on_state: Callable[[], None] = lambda: None) -> None:
        """The worker: load the model, then process camera frames until `stop`. `on_state` is
        called when the model state changed (and after each frame) for diagnostics on change."""
        loaded = self.load_model()
        on_state()
        if not loaded:
            return
        while not stop.is_set():
            camera = self.slot.take(timeout=0.2)
            if camera is None:
                continue
            try:
                if isinstance(camera, UndecodableFrame):
                    publish(self.health_only(camera, wanted()))
                else:
                    publish(self.process(camera, lookup_transform, wanted()))
                self.problems.resolve("frame")
            except Exception as exc:  # noqa: BLE001 - one bad frame must not end the node
                self.problems.report("frame", f"processing failed: {type(exc).__name__}: {exc}")
            on_state()

    def process(self, camera: Stamped, lookup_transform: Callable[[str, str], np.ndarray],
                wanted: set[str]) -> FrameOutputs:
        """Assemble, segment and render one camera frame (only the `wanted` outputs)."""
        bundle = self.feeder.assemble(camera)
        lidar_frame = getattr(bundle.lidar, "frame_id", "")  # a ready LiDAR image needs no transform
        T = lookup_transform(camera.frame_id, lidar_frame)
        result = self.pipeline.run(bundle, self.now_ns(), T, paint="painted_points" in wanted,
                                   depth="depth" in wanted)
        for modality in MODALITIES:
            if modality in result.errors:
                self.problems.report(f"{modality} encoding", result.errors[modality])
            else:
                self.problems.resolve(f"{modality} encoding")
        self._log_state_changes(result.health)
        self._last_health = result.health
        out = FrameOutputs(camera.stamp_ns, camera.frame_id)
        if "labels" in wanted:
            out.labels = result.labels
        if "color" in wanted:
            out.color = colorize(result.labels)
        if "overlay" in wanted:
            out.overlay = overlay(result.rgb, result.labels, self.settings.overlay_alpha)
        if "painted_points" in wanted:
            xyz, labels = result.painted if result.painted is not None else (np.zeros((0, 3)), np.zeros(0, int))
            out.painted_points = painted_cloud(xyz, labels)
        if "modality_health" in wanted:
            out.modality_health = result.health
        out.depth = result.depth
        self.stats.record((self.now_ns() - camera.stamp_ns) / 1e6, time.monotonic())
        return out

    def health_only(self, frame: UndecodableFrame, wanted: set[str]) -> FrameOutputs:
        """The outputs of a camera message that could not be decoded: no labels, but its
        modality_health (rgb `invalid` with the reason, the other modalities as of its stamp)."""
        bundle = self.feeder.assemble(Stamped(frame.stamp_ns, None, frame.frame_id), wait=False)
        health = self.feeder.health.update(bundle, {}, self.now_ns())
        self._log_state_changes(health)
        self._last_health = health
        out = FrameOutputs(frame.stamp_ns, frame.frame_id)
        if "modality_health" in wanted:
            out.modality_health = health
        return out

    def _log_state_changes(self, health: dict[str, ModalityHealth]) -> None:
        """One log line per state change; an invalid decode was already logged with its reason."""
        for modality, h in health.items():
            previous = self._states.get(modality, "ok")
            if h.state == previous:
                continue
            self._states[modality] = h.state
            if h.state == "ok":
                self.log.info(f"{modality}: {previous} -> ok")
            elif h.state == "invalid" or not self.settings.enabled.get(modality, True):
                self.log.warning(f"{modality}: {previous} -> {h.state}")
            else:
                self.log.warning(f"{modality}: {previous} -> {h.state} ({h.reason})")

    # ------------------------------------------------------------------------ diagnostics

    def report(self) -> Report:
        values = {**self.model.values(self.settings.model.precision),
                  "output_rate_hz": self.stats.rate_hz(time.monotonic()), **self.stats.latency_percentiles(),
                  "published_frames": self.stats.published, "dropped_frames": self.stats.dropped,
                  "sync_resets": self.feeder.assembler.resets}
        modalities = []
        for m in MODALITIES:
            health = self._last_health.get(m)
            health = self.camera.rgb_health(health) if m == "rgb" else health
            if health is not None:
                modalities.append((health, self.settings.enabled[m]))
        inputs = list(self._input_problems.values())
        if self.feeder.camera_info_error is not None:
            inputs.append((WARN, f"{self.feeder.camera_info_error}; depth HHA and LiDAR projection are off"))
        return Report(node_status(self.model, self.camera, values, inputs), modalities)
