"""`sam_mmseg` node: camera-triggered multi-modal segmentation that keeps going when sensors fail.

Callbacks only decode messages and hand them over; one worker thread assembles, infers and
publishes. The camera frame waiting for the worker sits in a latest-frame-wins slot of depth 1,
so when inference is slower than the camera, old frames are dropped (and counted) instead of
queueing up latency. Every other modality is optional: when one is missing, stale or broken the
output continues without it and the health topics say which one and why.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from sam_mmseg_ros.contracts import INPUT_TOPICS, MODALITIES, NODE_NAME, Stamped
from sam_mmseg_ros.ingest import (
    FrameFeeder,
    NodeSettings,
    health_thresholds,
    parameter_transform,
    preprocess_config,
    quaternion_matrix,
)
from sam_mmseg_ros.labels import colorize, overlay
from sam_mmseg_ros.pipeline import SegmentationPipeline
from sam_mmseg_ros.ros import diagnostics as diag
from sam_mmseg_ros.ros.convert import array_to_pointcloud2, numpy_to_image
from sam_mmseg_ros.ros.parameters import SPECS, check, descriptor, health_specs
from sam_mmseg_ros.sync import SYNCED_MODALITIES

OPTIONAL = SYNCED_MODALITIES
OUTPUTS = ("labels", "color", "overlay", "painted_points", "modality_health")


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


class SamMmsegNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.specs = {s.name: s for s in SPECS + health_specs()}
        self._declare_parameters()
        p = self.param
        # The callbacks' work (decode, health counts, buffering) is FrameFeeder's, the same code
        # offline evaluation runs on bags, so a replayed bag gives the node the same frames.
        self.feeder = FrameFeeder(NodeSettings.from_parameters(self._parameter_values()),
                                  warn=lambda text: self.get_logger().warning(text),
                                  info=lambda text: self.get_logger().info(text))
        self.enabled = self.feeder.settings.enabled
        # Both are thread-safe: callbacks on the executor thread fill them, the worker reads them.
        self.assembler = self.feeder.assembler
        self.health = self.feeder.health
        # Last problem logged per stage, so a bad stream is logged once, not every frame.
        self._encode_errors: dict[str, str] = {}  # encoding (worker)
        self._frame_errors: dict[str, str] = {}
        self._states: dict[str, str] = {}
        self._last_camera_monotonic: float | None = None
        self._last_health: dict = {}
        self._model_state = "loading model"
        self._model_error = ""
        self._backend = None
        self._pipeline: SegmentationPipeline | None = None
        self._stats = diag.RateStats()
        self._diag_lock = threading.Lock()
        self._last_diag_signature: tuple = ()
        self._slot = LatestSlot()
        self._stop = threading.Event()

        self.T_camera_lidar = parameter_transform(self._parameter_values())
        self._tf = self._make_tf_buffer() if p("use_tf") else None

        self._create_publishers()
        self._create_subscriptions()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self.create_timer(p("diagnostics_period_s"), lambda: self._publish_diagnostics(force=True))
        self._worker = threading.Thread(target=self._work, name="sam_mmseg_worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------------------ parameters

    def param(self, name: str):
        """A parameter's value; None for an optional one left unset (T_camera_lidar.matrix)."""
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    def _parameter_values(self) -> dict:
        return {name: self.param(name) for name in self.specs}

    def _declare_parameters(self) -> None:
        problems = []
        for spec in self.specs.values():
            value = self.declare_parameter(spec.name, spec.default, descriptor(spec)).value
            problem = check(spec, value)
            if problem:
                problems.append(problem)
        if problems:
            raise ValueError("invalid parameters:\n  " + "\n  ".join(problems))

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            spec = self.specs.get(param.name)
            problem = check(spec, param.value) if spec else None
            if problem:
                return SetParametersResult(successful=False, reason=problem)
        if any(p.name.startswith("health.") for p in params):
            try:  # the thresholds check their own consistency (e.g. min < max)
                health_thresholds({**self._parameter_values(), **{p.name: p.value for p in params}})
            except (TypeError, ValueError) as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params: list[Parameter]) -> None:
        names = {p.name for p in params}
        for m in OPTIONAL:  # a plain dict the assembler reads per frame: one item assignment each
            self.assembler.config.tolerance_ms[m] = float(self.param(f"sync.tolerance_ms.{m}"))
        if any(n.startswith("health.") for n in names):
            self.health.thresholds = health_thresholds(self._parameter_values())
        self.get_logger().info(f"parameters changed: {', '.join(sorted(names))}")

    def _make_tf_buffer(self):
        """tf2 is optional: without tf2_ros the parameters are the only source of T_camera_lidar."""
        try:
            from tf2_ros import Buffer, TransformListener
        except ImportError:
            self.get_logger().info("tf2_ros is not installed: T_camera_lidar comes from parameters")
            return None
        buffer = Buffer()
        self._tf_listener = TransformListener(buffer, self)
        return buffer

    def _lookup_transform(self, camera_frame: str, lidar_frame: str) -> np.ndarray:
        if self._tf is None or not camera_frame or not lidar_frame:
            return self.T_camera_lidar
        try:
            t = self._tf.lookup_transform(camera_frame, lidar_frame, rclpy.time.Time()).transform
        except Exception:  # noqa: BLE001 - tf2 raises several types; the parameters are the fallback
            return self.T_camera_lidar
        return quaternion_matrix([t.translation.x, t.translation.y, t.translation.z],
                                 [t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w])

    # ------------------------------------------------------------------------------ topics

    def _create_publishers(self) -> None:
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = {
            "labels": self.create_publisher(Image, "~/output/labels", reliable),
            "color": self.create_publisher(Image, "~/output/color", reliable),
            "overlay": self.create_publisher(Image, "~/output/overlay", reliable),
            "painted_points": self.create_publisher(PointCloud2, "~/output/painted_points", reliable),
            "modality_health": self.create_publisher(DiagnosticArray, "~/output/modality_health", reliable),
        }
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)

    def _create_subscriptions(self) -> None:
        qos = QoSProfile(depth=int(self.param("input_queue_depth")),
                         reliability=(ReliabilityPolicy.BEST_EFFORT if self.param("input_reliability")
                                      == "best_effort" else ReliabilityPolicy.RELIABLE),
                         history=qos_profile_sensor_data.history,
                         durability=qos_profile_sensor_data.durability)
        self.create_subscription(CameraInfo, INPUT_TOPICS["camera_info"], self._on_camera_info, qos)
        if self.enabled["depth"]:
            self.create_subscription(Image, INPUT_TOPICS["depth"], self._on_depth, qos)
        if self.enabled["event"]:
            event_type = PointCloud2 if self.param("event_input") == "cloud" else Image
            self.create_subscription(event_type, INPUT_TOPICS["event"], self._on_event, qos)
        if self.enabled["lidar"]:
            self.create_subscription(PointCloud2, INPUT_TOPICS["lidar"], self._on_lidar, qos)
        # Last: the executor serves ready subscriptions in creation order, so messages that arrive
        # together with a camera image are buffered before that image triggers assembly.
        self.create_subscription(Image, INPUT_TOPICS["rgb"], self._on_rgb, qos)

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _log_problem(self, seen: dict[str, str], key: str, reason: str) -> None:
        """Log `reason` for `key` only when it differs from the last one logged."""
        if seen.get(key) != reason:
            seen[key] = reason
            self.get_logger().warning(f"{key}: {reason}")

    def _on_rgb(self, msg: Image) -> None:
        self._last_camera_monotonic = time.monotonic()
        stamped = self.feeder.receive_camera(msg, self._now_ns())
        if stamped is not None and self._slot.put((stamped, msg.header)):
            self._stats.dropped += 1

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.feeder.receive_camera_info(msg)

    def _on_depth(self, msg: Image) -> None:
        self.feeder.feed("depth", msg, self._now_ns())

    def _on_event(self, msg) -> None:
        self.feeder.receive_events(msg, self._now_ns())

    def _on_lidar(self, msg: PointCloud2) -> None:
        self.feeder.feed("lidar", msg, self._now_ns())

    # ------------------------------------------------------------------------------ worker

    def _load_model(self) -> bool:
        from sam_mmseg_ros.engine import create_backend

        p = self.param
        height, width = p("input_size")
        if p("cpu_threads") > 0:
            import torch

            torch.set_num_threads(int(p("cpu_threads")))
        try:
            backend = create_backend(
                p("backend"), checkpoint=p("checkpoint") or None, onnx_path=p("onnx_path") or None,
                engine_path=p("engine_path") or None, precision=p("precision"), device=p("device") or None,
                input_size=(int(height), int(width)) if height and width else None,
                allow_build=bool(p("allow_engine_build")), cache_dir=p("engine_cache_dir") or None,
                logger=logging.getLogger("sam_mmseg_ros.engine"))
            backend.warmup()
        except Exception as exc:  # noqa: BLE001 - any load failure is reported, the node stays up
            self._model_state, self._model_error = "failed", f"model failed to load: {exc}"
            self.get_logger().error(self._model_error)
            self._publish_diagnostics(force=True)
            return False
        config = preprocess_config(self._parameter_values(), backend.input_shape[-2:])
        self._backend = backend
        self._pipeline = SegmentationPipeline(backend, config, self.health)
        self._model_state = "ready"
        self.get_logger().info(f"model ready: backend={backend.name} precision={backend.precision} "
                               f"input={tuple(backend.input_shape)} trained={self._trained()}")
        if not self._trained():
            self.get_logger().error(self._untrained_message())
        self._publish_diagnostics(force=True)
        return True

    def _trained(self) -> bool:
        return bool(self._backend is not None and self._backend.metadata.get("trained", False))

    @staticmethod
    def _untrained_message() -> str:
        return "output is untrained: no trained weights were found (random model); set checkpoint"

    def _work(self) -> None:
        self._publish_diagnostics(force=True)
        if not self._load_model():
            return
        while not self._stop.is_set():
            item = self._slot.take(timeout=0.2)
            if item is None:
                continue
            try:
                self._process(*item)
                self._frame_errors.clear()
            except Exception as exc:  # noqa: BLE001 - one bad frame must not end the node
                self._log_problem(self._frame_errors, "frame", f"processing failed: {type(exc).__name__}: {exc}")

    def _process(self, rgb: Stamped, header) -> None:
        bundle = self.feeder.assemble(rgb)
        lidar_frame = bundle.lidar.frame_id if bundle.lidar is not None else ""
        T = self._lookup_transform(header.frame_id, lidar_frame)
        if not np.array_equal(T, self._pipeline.preprocess_config.T_camera_lidar):
            self._pipeline.preprocess_config = dataclasses.replace(self._pipeline.preprocess_config,
                                                                   T_camera_lidar=T)
        wanted = {name: bool(self.param(f"publish.{name}")) and self.pub[name].get_subscription_count() > 0
                  for name in OUTPUTS}
        result = self._pipeline.run(bundle, self._now_ns(), paint=wanted["painted_points"])
        for modality in set(self._encode_errors) - set(result.errors):
            del self._encode_errors[modality]
        for modality, reason in result.errors.items():
            self._log_problem(self._encode_errors, modality, reason)
        self._publish(result, header, wanted)
        self._stats.record((self._now_ns() - rgb.stamp_ns) / 1e6, time.monotonic())
        self._last_health = result.health
        self._log_state_changes(result.health)
        self._publish_diagnostics(force=False)

    def _publish(self, result, header, wanted: dict[str, bool]) -> None:
        if wanted["labels"]:
            self.pub["labels"].publish(numpy_to_image(result.labels, "mono8", header))
        if wanted["color"]:
            self.pub["color"].publish(numpy_to_image(colorize(result.labels), "rgb8", header))
        if wanted["overlay"]:
            blend = overlay(result.rgb, result.labels, float(self.param("overlay_alpha")))
            self.pub["overlay"].publish(numpy_to_image(blend, "rgb8", header))
        if wanted["painted_points"]:
            xyz, labels = result.painted if result.painted is not None else (np.zeros((0, 3)), np.zeros(0, int))
            self.pub["painted_points"].publish(array_to_pointcloud2(painted_cloud(xyz, labels), header))
        if wanted["modality_health"]:
            statuses = [diag.modality_status(self.get_name(), result.health[m], self.enabled[m])
                        for m in MODALITIES]
            msg = diag.diagnostic_array(header.stamp, statuses)
            msg.header = header
            self.pub["modality_health"].publish(msg)

    def _log_state_changes(self, health: dict) -> None:
        """One log line per state change; an invalid decode was already logged with its reason."""
        for modality, h in health.items():
            previous = self._states.get(modality, "ok")
            if h.state == previous:
                continue
            self._states[modality] = h.state
            if h.state == "ok":
                self.get_logger().info(f"{modality}: {previous} -> ok")
            elif h.state == "invalid" or not self.enabled.get(modality, True):
                self.get_logger().warning(f"{modality}: {previous} -> {h.state}")
            else:
                self.get_logger().warning(f"{modality}: {previous} -> {h.state} ({h.reason})")

    # ------------------------------------------------------------------------------ diagnostics

    def _camera_silence_s(self) -> float | None:
        if self._last_camera_monotonic is None:
            return None
        return time.monotonic() - self._last_camera_monotonic

    def _node_status(self):
        problems: list[tuple[int, str]] = []
        if self._model_state == "loading model":
            problems.append((diag.WARN, f"loading model (backend={self.param('backend')})"))
        elif self._model_state == "failed":
            problems.append((diag.ERROR, self._model_error))
        elif not self._trained():
            problems.append((diag.ERROR, self._untrained_message()))
        silence = self._camera_silence_s()
        if silence is None:
            problems.append((diag.WARN, "waiting for the first camera image"))
        elif silence > float(self.param("camera_timeout_s")):
            problems.append((diag.ERROR, f"camera stopped: no image for {silence:.1f} s, no output"))
        level = max((lvl for lvl, _ in problems), default=diag.OK)
        message = "; ".join(text for _, text in problems) or "running"
        backend = self._backend
        values = {"backend": backend.name if backend else self.param("backend"),
                  "precision": backend.precision if backend else self.param("precision"),
                  "input_size": "x".join(str(v) for v in backend.input_shape[-2:]) if backend else "",
                  "model_state": self._model_state, "trained": self._trained(),
                  "output_rate_hz": self._stats.rate_hz(time.monotonic()),
                  **self._stats.latency_percentiles(),
                  "published_frames": self._stats.published, "dropped_frames": self._stats.dropped,
                  "sync_resets": self.assembler.resets}
        return diag.node_status(self.get_name(), level, message, values)

    def _modality_statuses(self) -> list:
        silence = self._camera_silence_s()
        statuses = []
        for m in MODALITIES:
            health = self._last_health.get(m)
            if health is None:
                continue
            if m == "rgb" and silence is not None and silence > float(self.param("camera_timeout_s")):
                health = dataclasses.replace(health, state="stale", reason=f"no image for {silence:.1f} s",
                                             age_ms=silence * 1e3, router_weight=0.0)
            statuses.append(diag.modality_status(self.get_name(), health, self.enabled[m]))
        return statuses

    def _publish_diagnostics(self, force: bool) -> None:
        """Publish /diagnostics when forced (timer) or when a level or message changed."""
        with self._diag_lock:
            statuses = [self._node_status(), *self._modality_statuses()]
            signature = diag.status_signature(statuses)
            if not force and signature == self._last_diag_signature:
                return
            self._last_diag_signature = signature
            self.diagnostics_pub.publish(diag.diagnostic_array(self.get_clock().now().to_msg(), statuses))

    def shutdown(self) -> None:
        self._stop.set()
        self._worker.join(timeout=5.0)


def main(args=None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")
    # Our own signal handling: on Ctrl-C / SIGTERM the worker stops before the context goes away,
    # so no frame is half-published into a shut-down middleware.
    # A flag, not an exception: an exception can land inside rclpy's own bookkeeping.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        node = SamMmsegNode()
    except (ValueError, ParameterException) as exc:
        logging.getLogger(NODE_NAME).error(str(exc))
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok() and not stop.is_set():
            executor.spin_once(timeout_sec=0.2)
    except ExternalShutdownException:
        pass
    finally:
        node.shutdown()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
