"""What the node does with each incoming message, without ROS: decode → health → assembler.

`FrameFeeder` is the body of the node's subscriber callbacks (camera_info, rgb, depth, event,
lidar). `OfflineNode` pairs it with the node's worker stages (`pipeline.SegmentationPipeline`),
both configured from the node's parameters, for offline evaluation: it feeds bag messages through
them in bag order, so the frames it scores are decoded, assembled, encoded and inferred by the
same code with the same settings as the frames the node publishes. The decoders are duck-typed
(`sam_mmseg_ros.decoders`): `rosbags` message objects work as is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sam_mmseg_ros.contracts import BAG_TOPICS, FrameBundle, ImageData, InputError, Stamped
from sam_mmseg_ros.decoders.camera_info import camera_info_to_model
from sam_mmseg_ros.decoders.common import stamp_to_ns
from sam_mmseg_ros.decoders.compressed import compressed_depth_to_numpy, compressed_image_to_numpy
from sam_mmseg_ros.decoders.event_packet import EventPacketDecoder
from sam_mmseg_ros.decoders.image import image_to_numpy
from sam_mmseg_ros.decoders.pointcloud import pointcloud2_to_cloud, pointcloud2_to_events
from sam_mmseg_ros.health import HealthMonitor
from sam_mmseg_ros.node_settings import NodeSettings
from sam_mmseg_ros.pipeline import FrameResult, SegmentationPipeline
from sam_mmseg_ros.reporting import ProblemLog
from sam_mmseg_ros.sensors.image_input import is_image_input
from sam_mmseg_ros.sync import SYNCED_MODALITIES, FrameAssembler

log = logging.getLogger(__name__)

KINDS = ("camera_info", "rgb", "depth", "event", "lidar")


def topic_kinds(topics: dict[str, str] = BAG_TOPICS) -> dict[str, str]:
    """Bag topic -> message kind fed to `FrameFeeder.feed`."""
    return {topic: kind for kind, topic in topics.items()}


def message_shape(msg) -> str:
    """Which sensor message `msg` is, by its fields (rclpy and rosbags messages alike): "image",
    "compressed" (CompressedImage), "packet" (EventPacket), "cloud" (PointCloud2)."""
    if hasattr(msg, "time_base") and hasattr(msg, "events"):
        return "packet"
    if hasattr(msg, "fields"):
        return "cloud"
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return "compressed"
    return "image"


_TYPE_NAMES = {"image": "sensor_msgs/Image", "cloud": "PointCloud2", "packet": "EventPacket",
               "compressed": "CompressedImage"}


@dataclass(frozen=True)
class UndecodableFrame:
    """A camera message that could not be decoded: it still gets a modality_health output (rgb
    `invalid`, with the reason) and the node's status says so."""

    stamp_ns: int
    frame_id: str
    reason: str


class FrameFeeder:
    """The node's subscriber callbacks, ROS-free: decode, count for health, buffer for assembly.

    `receive_camera` + `assemble` are the camera path split as the node splits it (callback,
    then worker, which waits briefly for late partners); `feed` runs one message of any kind,
    assembling camera frames at once without waiting, as offline evaluation does. Decode
    problems mark the modality invalid in the health monitor and go to `problems` (logged once
    per kind; `problems.current` holds what is wrong now).
    """

    def __init__(self, settings: NodeSettings, problems: ProblemLog | None = None):
        self.settings = settings
        self.problems = problems or ProblemLog(log.warning, log.info)
        self.assembler = FrameAssembler(
            settings.sync, on_reset=lambda reason: self.problems.report("sync", f"time went backwards: {reason}"))
        self.health = HealthMonitor(settings.thresholds, settings.enabled)
        self.camera_size: tuple[int, int] | None = None  # (width, height) of the last RGB image
        self.camera_info_error: str | None = None  # why the last camera_info was refused
        self.undecodable_camera_frames = 0
        self._event_packets = EventPacketDecoder()  # evt3 carries state from packet to packet

    def apply(self, settings: NodeSettings) -> None:
        """Run-time parameter changes: sync tolerances and health thresholds (the others are
        read-only after start-up)."""
        self.settings = settings
        self.assembler.set_tolerances(settings.sync.tolerance_ms)
        self.health.set_thresholds(settings.thresholds)

    def feed(self, kind: str, msg, now_ns: int) -> FrameBundle | None:
        """One message; returns the assembled bundle for a camera image, else None."""
        if kind == "rgb":
            stamped = self.receive_camera(msg, now_ns)
            return None if isinstance(stamped, UndecodableFrame) else self.assemble(stamped, wait=False)
        if kind == "camera_info":
            self.receive_camera_info(msg)
        elif kind not in SYNCED_MODALITIES:
            raise ValueError(f"unknown message kind '{kind}' (expected one of {KINDS})")
        elif not self.settings.enabled[kind]:
            pass  # the node does not subscribe to a disabled modality
        elif kind == "depth":
            decode = self._compressed_depth if message_shape(msg) == "compressed" else self._depth_image
            self._buffer("depth", self._decode("depth", msg, decode, now_ns))
        else:
            self.receive_stream(kind, msg, now_ns)
        return None

    def receive_camera(self, msg, now_ns: int) -> Stamped | UndecodableFrame:
        """Decode a camera message (Image or CompressedImage); the node queues the result, an
        undecodable one too (it still gets its health output)."""
        compressed = message_shape(msg) == "compressed"
        stamped = self._decode("rgb", msg, compressed_image_to_numpy if compressed else image_to_numpy, now_ns)
        if stamped is None:
            self.undecodable_camera_frames += 1
            return UndecodableFrame(stamp_to_ns(msg.header.stamp), str(msg.header.frame_id),
                                    self.problems.current.get("rgb", "camera image could not be decoded"))
        height, width = stamped.data.array.shape[:2] if compressed else (msg.height, msg.width)
        self.camera_size = (int(width), int(height))
        return stamped

    def assemble(self, camera: Stamped, wait: bool = True) -> FrameBundle:
        """The bundle for a camera frame. With `wait` (the node's worker) it first waits, at most
        `sync.max_wait_ms`, for partners with this stamp still on their way (a few ms behind the
        image on their own topics). `feed` does not wait: in bag order every partner recorded
        before the image is already buffered, and a wall-clock wait would change nothing."""
        if wait:
            self.assembler.wait_for_partners(camera.stamp_ns)
        bundle = self.assembler.assemble(camera)
        if bundle.camera is None and self.camera_info_error is not None:
            bundle.absent["camera_info"] = self.camera_info_error
        return bundle

    def receive_camera_info(self, msg) -> None:
        try:
            camera = camera_info_to_model(msg)
        except InputError as exc:
            self.camera_info_error = f"camera_info refused: {exc}"
            self.problems.report("camera_info", str(exc))
            return
        self.camera_info_error = None
        self.problems.resolve("camera_info", "decodes again")
        self.camera_size = self.camera_size or (camera.width, camera.height)
        self.assembler.set_camera(camera)

    def receive_stream(self, kind: str, msg, now_ns: int) -> None:
        """Events or LiDAR: a PointCloud2, a ready Image when `<kind>_input` is 'image', or for
        events an EventPacket when `event_input` is 'packet' (the node subscribes with that type;
        offline, a message of another type is reported)."""
        wanted = self.settings.inputs[kind]

        def decode(m):
            shape = message_shape(m)
            if shape != wanted:
                raise InputError(f"a {_TYPE_NAMES[shape]} arrived but {kind}_input is '{wanted}' "
                                 f"(set {kind}_input: {shape})")
            if shape == "image":
                return image_to_numpy(m)
            if shape == "packet":
                return self._event_packets.decode(m, self._event_size(required=False))
            return pointcloud2_to_events(m, *self._event_size()) if kind == "event" else pointcloud2_to_cloud(m)

        self._buffer(kind, self._decode(kind, msg, decode, now_ns))

    def _depth_image(self, msg) -> ImageData:
        """Metric depth, or a ready depth image when `depth_input` is 'image'."""
        image = image_to_numpy(msg)
        if is_image_input(image) and self.settings.inputs["depth"] == "depth":
            raise InputError(f"depth encoding '{image.encoding}' is a ready image, not metric depth (32FC1, 16UC1); "
                             "set depth_input: image if it already holds the model's depth encoding")
        if not is_image_input(image) and self.settings.inputs["depth"] == "image":
            raise InputError(f"depth_input is 'image' but a '{image.encoding}' depth image arrived "
                             "(set depth_input: depth for metric depth)")
        return image

    def _compressed_depth(self, msg) -> ImageData:
        """image_transport's compressedDepth: metric depth (16UC1 or 32FC1)."""
        if self.settings.inputs["depth"] == "image":
            raise InputError("depth_input is 'image' but a compressedDepth (metric) depth image arrived "
                             "(set depth_input: depth)")
        return compressed_depth_to_numpy(msg)

    def _decode(self, modality: str, msg, decode, now_ns: int) -> Stamped | None:
        try:
            data = decode(msg)
        except InputError as exc:
            self.health.mark_invalid(modality, str(exc), now_ns)
            self.problems.report(modality, str(exc))
            return None
        stamp = stamp_to_ns(msg.header.stamp)
        self.health.on_message(modality, stamp, now_ns)
        self.problems.resolve(modality, "decodes again")
        return Stamped(stamp, data, str(msg.header.frame_id))

    def _buffer(self, modality: str, stamped: Stamped | None) -> None:
        if stamped is not None:
            self.assembler.add(modality, stamped)

    def _event_size(self, required: bool = True) -> tuple[int, int] | None:
        """The event sensor's (width, height): the parameter, else the camera's. EventPackets carry
        their own and need it only when they leave it 0 (`required=False`)."""
        width, height = self.settings.event_sensor_size
        if width > 0 and height > 0:
            return width, height
        if self.camera_size is None and not required:
            return None
        if self.camera_size is None:
            raise InputError("events arrived before the first camera image: the event sensor size is "
                             "unknown (set event_sensor_size)")
        return self.camera_size


def model_source(backend) -> str:
    """How a loaded model is named in messages: its checkpoint (or ONNX) file, else its backend."""
    meta = getattr(backend, "metadata", {}) or {}
    path = meta.get("checkpoint") or getattr(backend, "onnx_path", None)
    return f"model {path}" if path else f"the {backend.name} model"


class OfflineNode:
    """The node's stages in one thread, for bags: messages in bag order in, one `FrameResult` per
    camera frame out, configured like a node started with the same parameters."""

    def __init__(self, backend, settings: NodeSettings):
        self.feeder = FrameFeeder(settings)
        self.pipeline = SegmentationPipeline(backend, settings.preprocess_config(
            backend.input_shape[-2:], backend.metadata.get("encodings"), model_source(backend)), self.feeder.health)
        self.T_camera_lidar = settings.T_camera_lidar

    def feed(self, kind: str, msg, now_ns: int) -> FrameBundle | None:
        """Decode and buffer one message; the assembled bundle when it is a camera image."""
        return self.feeder.feed(kind, msg, now_ns)

    def segment(self, bundle: FrameBundle, now_ns: int) -> FrameResult:
        return self.pipeline.run(bundle, now_ns, self.T_camera_lidar, paint=False)
