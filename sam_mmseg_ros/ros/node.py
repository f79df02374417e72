"""`sam_mmseg` node: camera-triggered multi-modal segmentation that keeps going when sensors fail.

The node only wires ROS to `runtime.SegmentationCore`: parameters (declared from the settings
table), subscriptions (callbacks hand messages to the core), publishers (the core's outputs become
messages here), tf2 for the LiDAR extrinsic when installed, and a wall-clock timer for
/diagnostics. What happens to a frame, and what the health and status rules are, is the core's.
"""

from __future__ import annotations

import logging
import signal
import threading

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

try:  # rclpy >= Iron; Humble has the same class in qos_event
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # pragma: no cover - Humble
    from rclpy.qos_event import SubscriptionEventCallbacks
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from sam_mmseg_ros.contracts import MODALITIES, NODE_NAME
from sam_mmseg_ros.health import ERROR, WARN
from sam_mmseg_ros.node_settings import OUTPUTS, NodeSettings, quaternion_matrix
from sam_mmseg_ros.ros import diagnostics as diag
from sam_mmseg_ros.ros.messages import array_to_pointcloud2, make_header, numpy_to_image
from sam_mmseg_ros.ros.parameters import declared_default, descriptor
from sam_mmseg_ros.runtime import FrameOutputs, SegmentationCore
from sam_mmseg_ros.settings import SETTINGS, TABLE, SettingsError


class SamMmsegNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        for setting in SETTINGS:
            self.declare_parameter(setting.name, declared_default(setting), descriptor(setting))
        settings = NodeSettings.from_values(self._values())  # raises SettingsError: exit code 2
        self.core = SegmentationCore(settings, self._now_ns, self.get_logger())
        self._tf = self._make_tf_buffer() if settings.use_tf else None

        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = {"labels": self.create_publisher(Image, "~/output/labels", reliable),
                    "color": self.create_publisher(Image, "~/output/color", reliable),
                    "overlay": self.create_publisher(Image, "~/output/overlay", reliable),
                    "painted_points": self.create_publisher(PointCloud2, "~/output/painted_points", reliable),
                    "modality_health": self.create_publisher(DiagnosticArray, "~/output/modality_health", reliable),
                    "depth": self.create_publisher(Image, "~/output/depth", reliable)}
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)
        self._subscribe(settings)

        self.add_on_set_parameters_callback(self._check_new_values)
        self.add_post_set_parameters_callback(self._apply_new_values)
        self._diag_lock = threading.Lock()
        self._last_signature: tuple = ()
        # The wall clock: under use_sim_time without /clock a ROS-time timer never fires, and that
        # is exactly when "camera stopped" must be reported.
        self.create_timer(settings.diagnostics_period_s, lambda: self._publish_diagnostics(force=True),
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self.core.serve, name="sam_mmseg_worker", daemon=True, kwargs=dict(
            stop=self._stop, lookup_transform=self._lookup_transform, wanted=self._wanted,
            publish=self._publish, on_state=lambda: self._publish_diagnostics(force=False)))
        self._worker.start()

    # ------------------------------------------------------------------------------ parameters

    def _values(self, changed: list[Parameter] = ()) -> dict:
        """Every parameter's value (None for an optional one left unset), with `changed` applied."""
        values = {}
        for name in TABLE:
            try:
                values[name] = self.get_parameter(name).value
            except ParameterUninitializedException:
                values[name] = None
        values.update({p.name: p.value for p in changed})
        return values

    def _check_new_values(self, params: list[Parameter]) -> SetParametersResult:
        """A run-time change is accepted only if the settings it gives build like at start-up."""
        try:
            NodeSettings.from_values(self._values(params))
        except SettingsError as exc:
            return SetParametersResult(successful=False, reason="; ".join(exc.problems))
        return SetParametersResult(successful=True)

    def _apply_new_values(self, params: list[Parameter]) -> None:
        self.core.apply(NodeSettings.from_values(self._values()))
        self.get_logger().info(f"parameters changed: {', '.join(sorted(p.name for p in params))}")

    # ------------------------------------------------------------------------------ tf2

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
        fallback = self.core.settings.T_camera_lidar
        if self._tf is None or not camera_frame or not lidar_frame:
            return fallback
        try:
            t = self._tf.lookup_transform(camera_frame, lidar_frame, rclpy.time.Time()).transform
        except Exception:  # noqa: BLE001 - tf2 raises several types; the parameters are the fallback
            return fallback
        return quaternion_matrix([t.translation.x, t.translation.y, t.translation.z],
                                 [t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w])

    # ------------------------------------------------------------------------------ topics

    def _subscribe(self, settings: NodeSettings) -> None:
        """One subscription per enabled input, on the topic map's topic (else ~/input/<kind>) with
        the transport's type and suffix, each reporting an incompatible QoS to /diagnostics."""
        qos = QoSProfile(depth=settings.input_queue_depth,
                         reliability=(ReliabilityPolicy.BEST_EFFORT if settings.input_reliability == "best_effort"
                                      else ReliabilityPolicy.RELIABLE),
                         history=qos_profile_sensor_data.history, durability=qos_profile_sensor_data.durability)
        core = self.core
        stream_types = {"cloud": PointCloud2, "image": Image, "packet": self._event_packet_type()}
        types = {"camera_info": CameraInfo,
                 "depth": CompressedImage if settings.depth_transport == "compressedDepth" else Image,
                 "event": stream_types[settings.inputs["event"]], "lidar": stream_types[settings.inputs["lidar"]]}
        self.subscriptions_by_kind = {}
        for kind, msg_type in types.items():
            if kind != "camera_info" and not settings.enabled[kind]:
                continue
            if msg_type is None:
                core.input_problem(kind, "event_input is 'packet' but event_camera_msgs is not installed (build it "
                                   "into the ROS 2 workspace): no event subscription")
                continue
            self._input(kind, msg_type, lambda msg, kind=kind: core.on_message(kind, msg), qos, settings)
        # Last: the executor serves ready subscriptions in creation order, so messages that arrive
        # together with a camera image are buffered before that image triggers assembly.
        self._input("rgb", CompressedImage if settings.rgb_transport == "compressed" else Image, self._on_camera,
                    qos, settings)

    def _input(self, kind: str, msg_type, callback, qos: QoSProfile, settings: NodeSettings) -> None:
        subscription = None

        def incompatible(info) -> None:
            self._report_incompatible_qos(kind, subscription, qos, info)

        subscription = self.create_subscription(
            msg_type, settings.input_topic(kind), callback, qos,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=incompatible))
        self.subscriptions_by_kind[kind] = subscription

    @staticmethod
    def _event_packet_type():
        """event_camera_msgs/EventPacket when it is installed (a ROS 2 workspace), else None."""
        try:
            from event_camera_msgs.msg import EventPacket
        except ImportError:
            return None
        return EventPacket

    def _on_camera(self, msg) -> None:
        if not self.core.on_camera(msg):  # undecodable: say so now, not at the next timer tick
            self._publish_diagnostics(force=False)

    def _report_incompatible_qos(self, kind: str, subscription, requested: QoSProfile, info) -> None:
        """An incompatible publisher: nothing arrives on that input. Names both sides' policies."""
        topic = subscription.topic_name
        policy = getattr(info.last_policy_kind, "name", str(info.last_policy_kind))
        offered = "; ".join(
            f"{endpoint.node_namespace.rstrip('/')}/{endpoint.node_name} offers {describe_qos(endpoint.qos_profile)}"
            for endpoint in self.get_publishers_info_by_topic(topic)) or "publisher gone"
        text = (f"incompatible QoS on {topic} ({policy}): this node requests {describe_qos(requested)}; "
                f"{offered}; no {kind} messages arrive")
        self.core.input_problem(f"qos {kind}", text, ERROR if kind == "rgb" else WARN)
        self._publish_diagnostics(force=False)

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _wanted(self) -> set[str]:
        """Outputs switched on and subscribed to: nothing else is computed."""
        on = self.core.settings.outputs
        return {name for name in OUTPUTS if on[name] and self.pub[name].get_subscription_count() > 0}

    def _publish(self, out: FrameOutputs) -> None:
        header = make_header(stamp_ns=out.stamp_ns, frame_id=out.frame_id)
        if out.labels is not None:
            self.pub["labels"].publish(numpy_to_image(out.labels, "mono8", header))
        if out.color is not None:
            self.pub["color"].publish(numpy_to_image(out.color, "rgb8", header))
        if out.overlay is not None:
            self.pub["overlay"].publish(numpy_to_image(out.overlay, "rgb8", header))
        if out.painted_points is not None:
            self.pub["painted_points"].publish(array_to_pointcloud2(out.painted_points, header))
        if out.depth is not None:
            self.pub["depth"].publish(numpy_to_image(out.depth, "32FC1", header))
        if out.modality_health is not None:
            enabled = self.core.settings.enabled
            statuses = [diag.modality_status(self.get_name(), out.modality_health[m], enabled[m])
                        for m in MODALITIES]
            msg = diag.diagnostic_array(header.stamp, statuses)
            msg.header = header
            self.pub["modality_health"].publish(msg)

    def _publish_diagnostics(self, force: bool) -> None:
        """Publish /diagnostics when forced (the timer) or when a level, state or message changed."""
        with self._diag_lock:
            report = self.core.report()
            if not force and report.signature() == self._last_signature:
                return
            self._last_signature = report.signature()
            name = self.get_name()
            statuses = [diag.node_status(name, report.node.level, report.node.message, report.node.values),
                        *(diag.modality_status(name, health, enabled) for health, enabled in report.modalities)]
            self.diagnostics_pub.publish(diag.diagnostic_array(self.get_clock().now().to_msg(), statuses))

    def shutdown(self) -> None:
        """Stop the worker, then publish the final counters once."""
        self._stop.set()
        self._worker.join(timeout=2.0)  # a worker busy loading a model must not hold up a shutdown
        self._publish_diagnostics(force=True)


def describe_qos(profile) -> str:
    """The QoS policies that can make endpoints incompatible, as `ros2 topic info -v` names them."""
    return (f"reliability {profile.reliability.name}, durability {profile.durability.name}, "
            f"deadline {profile.deadline.nanoseconds / 1e9:g} s, liveliness {profile.liveliness.name}")


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
    except (SettingsError, ParameterException) as exc:
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
