"""What the node does with each incoming message, without ROS: decode → health → assembler.

`FrameFeeder` is the body of the node's subscriber callbacks (camera_info, rgb, depth, event,
lidar) and `build_offline_pipeline` pairs it with the node's worker stages
(`pipeline.SegmentationPipeline`), both configured from the node's parameter file. Offline
evaluation feeds bag messages through them in bag order, so the frames it scores are decoded,
assembled, encoded and inferred by the same code with the same settings as the frames the node
publishes. The decoders are duck-typed (`ros/convert.py`): `rosbags` message objects work as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam_mmseg_ros.contracts import BAG_TOPICS, FrameBundle, InputError, Stamped
from sam_mmseg_ros.health import HealthMonitor, HealthThresholds
from sam_mmseg_ros.pipeline import SegmentationPipeline
from sam_mmseg_ros.resources import config_file
from sam_mmseg_ros.ros.convert import (
    camera_info_to_model,
    image_to_numpy,
    pointcloud2_to_cloud,
    pointcloud2_to_events,
    stamp_to_ns,
)
from sam_mmseg_ros.sensors.preprocess import PreprocessConfig
from sam_mmseg_ros.sync import SYNCED_MODALITIES, FrameAssembler, SyncConfig

log = logging.getLogger(__name__)

KINDS = ("camera_info", "rgb", "depth", "event", "lidar")
PARAMS_NAME = "sam_mmseg.yaml"


def flatten_parameters(tree: dict, prefix: str = "") -> dict:
    """Nested ros__parameters mapping -> {'sync.tolerance_ms.depth': 100.0, ...} (the node's names)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_parameters(value, name + "."))
        else:
            flat[name] = value
    return flat


def load_parameters(params_file: str | Path | None = None, overrides: dict | None = None) -> dict:
    """The node's parameters as it would see them: the shipped config/sam_mmseg.yaml (which lists
    every parameter, like the node's declared defaults), then `params_file`, then `overrides` (like
    `-p name:=value`). Only the wildcard `/**` and `sam_mmseg` sections apply, as for the node."""
    import yaml

    shipped = config_file(PARAMS_NAME)
    params: dict = {}
    for path in dict.fromkeys([shipped, Path(params_file) if params_file is not None else shipped]):
        document = yaml.safe_load(Path(path).read_text()) or {}
        for section in ("/**", "sam_mmseg", "/sam_mmseg"):
            params.update(flatten_parameters((document.get(section) or {}).get("ros__parameters", {})))
    params.update(overrides or {})
    return params


def topic_kinds(topics: dict[str, str] = BAG_TOPICS) -> dict[str, str]:
    """Bag topic -> message kind fed to `FrameFeeder.feed`."""
    return {topic: kind for kind, topic in topics.items()}


@dataclass
class NodeSettings:
    """The parts of the node's parameters that decide what its callbacks and worker do."""

    enabled: dict[str, bool]
    event_input: str  # "cloud" (PointCloud2 events) or "image" (event frames)
    event_sensor_size: tuple[int, int]  # (width, height); (0, 0): the camera's
    sync: SyncConfig
    thresholds: HealthThresholds

    @classmethod
    def from_parameters(cls, p: dict) -> NodeSettings:
        """`p` maps the node's parameter names to values (`load_parameters`, or the node's own)."""
        optional = SYNCED_MODALITIES
        enabled = {"rgb": True, **{m: bool(p[f"enable.{m}"]) for m in optional}}
        sync = SyncConfig(tolerance_ms={m: float(p[f"sync.tolerance_ms.{m}"]) for m in optional},
                          event_window_ms=float(p["event_window_ms"]),
                          buffer_size=dict.fromkeys(optional, int(p["sync.buffer_size"])),
                          enabled={m: enabled[m] for m in optional},
                          reset_on_backwards_s=float(p["sync.reset_on_backwards_s"]),
                          max_wait_ms=float(p["sync.max_wait_ms"]))
        thresholds = health_thresholds(p)
        width, height = (int(v) for v in p["event_sensor_size"])
        return cls(enabled, str(p["event_input"]), (width, height), sync, thresholds)


def health_thresholds(p: dict) -> HealthThresholds:
    """HealthThresholds from the `health.*` parameters (raises on inconsistent values)."""
    return HealthThresholds(**{n[len("health."):]: v for n, v in p.items() if n.startswith("health.")})


def preprocess_config(p: dict, input_size) -> PreprocessConfig:
    """The encoders' settings, as the node builds them once the backend's input size is known."""
    return PreprocessConfig(input_size=tuple(int(v) for v in input_size),
                            event_window_ms=float(p["event_window_ms"]),
                            lidar_max_range_m=float(p["lidar_max_range_m"]),
                            T_camera_lidar=parameter_transform(p))


def quaternion_matrix(translation, xyzw) -> np.ndarray:
    """4x4 transform from a translation and a (normalized here) x, y, z, w quaternion."""
    x, y, z, w = np.asarray(xyzw, np.float64) / np.linalg.norm(xyzw)
    T = np.eye(4)
    T[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                 [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                 [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    T[:3, 3] = translation
    return T


def parameter_transform(p: dict) -> np.ndarray:
    """T_camera_lidar from the parameters, as the node computes it when tf2 has no transform."""
    matrix = p.get("T_camera_lidar.matrix")
    if matrix:
        return np.asarray(matrix, np.float64).reshape(4, 4)
    return quaternion_matrix(p["T_camera_lidar.translation"], p["T_camera_lidar.rotation_xyzw"])


class FrameFeeder:
    """The node's subscriber callbacks, ROS-free: decode, count for health, buffer for assembly.

    `receive_camera` + `assemble` are the camera path split as the node splits it (callback,
    then worker, which waits briefly for late partners); `feed` runs one message of any kind,
    assembling camera frames at once without waiting, as offline evaluation does. Decode
    problems mark the modality invalid in the health monitor, are kept in `input_errors` and
    reported through `warn` once per distinct problem.
    """

    def __init__(self, settings: NodeSettings, health: HealthMonitor | None = None,
                 warn: Callable[[str], None] | None = None, info: Callable[[str], None] | None = None):
        self.settings = settings
        self.assembler = FrameAssembler(settings.sync,
                                        on_reset=lambda reason: self.warn(f"time went backwards: {reason}"))
        self.health = health or HealthMonitor(settings.thresholds, settings.enabled)
        self.warn = warn or log.warning
        self.info = info or log.info
        self.camera_size: tuple[int, int] | None = None  # (width, height) of the last RGB image
        self.input_errors: dict[str, str] = {}  # kind -> last decode problem

    def feed(self, kind: str, msg, now_ns: int) -> FrameBundle | None:
        """One message; returns the assembled bundle for a camera image, else None."""
        if kind == "rgb":
            stamped = self.receive_camera(msg, now_ns)
            return None if stamped is None else self.assemble(stamped, wait=False)
        if kind == "camera_info":
            self.receive_camera_info(msg)
        elif kind not in SYNCED_MODALITIES:
            raise ValueError(f"unknown message kind '{kind}' (expected one of {KINDS})")
        elif not self.settings.enabled[kind]:
            pass  # the node does not subscribe to a disabled modality
        elif kind == "event":
            self.receive_events(msg, now_ns)
        elif kind == "depth":
            self._buffer("depth", self._decode("depth", msg, image_to_numpy, now_ns))
        else:
            self._buffer("lidar", self._decode("lidar", msg, pointcloud2_to_cloud, now_ns))
        return None

    def receive_camera(self, msg, now_ns: int) -> Stamped | None:
        """Decode an RGB image (None when it cannot be used); the node queues the result."""
        stamped = self._decode("rgb", msg, image_to_numpy, now_ns)
        if stamped is not None:
            self.camera_size = (int(msg.width), int(msg.height))
        return stamped

    def assemble(self, camera: Stamped, wait: bool = True) -> FrameBundle:
        """The bundle for a camera frame. With `wait` (the node's worker) it first waits, at most
        `sync.max_wait_ms`, for partners with this stamp still on their way (a few ms behind the
        image on their own topics). `feed` does not wait: in bag order every partner recorded
        before the image is already buffered, and a wall-clock wait would change nothing."""
        if wait:
            self.assembler.wait_for_partners(camera.stamp_ns)
        return self.assembler.assemble(camera)

    def receive_camera_info(self, msg) -> None:
        try:
            camera = camera_info_to_model(msg)
        except InputError as exc:
            self._note_problem("camera_info", str(exc))
            return
        self.input_errors.pop("camera_info", None)
        self.camera_size = self.camera_size or (camera.width, camera.height)
        self.assembler.set_camera(camera)

    def receive_events(self, msg, now_ns: int) -> None:
        """PointCloud2 events or an event-frame Image, whichever `event_input` subscribes to."""
        is_image = hasattr(msg, "encoding")
        if is_image != (self.settings.event_input == "image"):
            return  # the node subscribes with the other message type
        if is_image:
            stamped = self._decode("event", msg, image_to_numpy, now_ns)
        else:
            stamped = self._decode("event", msg, lambda m: pointcloud2_to_events(m, *self._event_size()), now_ns)
        self._buffer("event", stamped)

    def _decode(self, modality: str, msg, decode, now_ns: int) -> Stamped | None:
        try:
            data = decode(msg)
        except InputError as exc:
            self.health.mark_invalid(modality, str(exc), now_ns)
            self._note_problem(modality, str(exc))
            return None
        stamp = stamp_to_ns(msg.header.stamp)
        self.health.on_message(modality, stamp, now_ns)
        if self.input_errors.pop(modality, None) is not None:
            self.info(f"{modality}: decodes again")
        return Stamped(stamp, data, str(msg.header.frame_id))

    def _note_problem(self, kind: str, reason: str) -> None:
        if self.input_errors.get(kind) != reason:
            self.warn(f"{kind}: {reason}")
        self.input_errors[kind] = reason

    def _buffer(self, modality: str, stamped: Stamped | None) -> None:
        if stamped is not None:
            self.assembler.add(modality, stamped)

    def _event_size(self) -> tuple[int, int]:
        width, height = self.settings.event_sensor_size
        if width > 0 and height > 0:
            return width, height
        if self.camera_size is None:
            raise InputError("events arrived before the first camera image: the event sensor size is "
                             "unknown (set event_sensor_size)")
        return self.camera_size


def build_offline_pipeline(backend, params_file: str | Path | None = None,
                           overrides: dict | None = None) -> tuple[FrameFeeder, SegmentationPipeline]:
    """A (feeder, pipeline) pair configured like the node started with `params_file` and
    `-p` `overrides`, sharing one health monitor as the node does."""
    params = load_parameters(params_file, overrides)
    feeder = FrameFeeder(NodeSettings.from_parameters(params))
    config = preprocess_config(params, backend.input_shape[-2:])
    return feeder, SegmentationPipeline(backend, config, feeder.health)

