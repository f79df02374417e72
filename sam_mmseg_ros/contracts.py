"""Contracts that several parts rely on (DESIGN.md §3): modality order, tensor names, the plain
data types that flow from message conversion through assembly to the model.

Nothing here imports ROS or torch, so every stage can be used and tested on numpy alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MODALITIES: tuple[str, ...] = ("rgb", "depth", "event", "lidar")
"""Fixed order everywhere: tensor axis, modality mask, router weights, health."""

MODALITY_INDEX: dict[str, int] = {name: i for i, name in enumerate(MODALITIES)}

ENGINE_INPUTS: tuple[str, ...] = ("images", "modality_mask")
ENGINE_OUTPUTS: tuple[str, ...] = ("labels", "confidence", "router_weights")
TASK_OUTPUTS: dict[str, tuple[str, ...]] = {"semantic": ENGINE_OUTPUTS, "depth": ("depth",)}
"""Engine outputs per model task (model.config.TASKS); every model has the semantic task. A model
with more tasks has their outputs after ENGINE_OUTPUTS, in this order: depth float32 [1, H, W],
metres along the camera's optical axis."""
OPTIONAL_ENGINE_OUTPUTS: tuple[str, ...] = ("depth", "domain", "domain_confidence")
"""Outputs a model has only with the part that makes them, after ENGINE_OUTPUTS in this order:
depth (the depth task), domain int32 [1] and domain_confidence float32 [1] (domain-adapter
models, DESIGN.md §3)."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

HEALTH_STATES: tuple[str, ...] = ("ok", "missing", "stale", "frozen", "degraded", "invalid")

IGNORE_LABEL = 255

NODE_NAME = "sam_mmseg"
INPUT_TOPICS: dict[str, str] = {
    "rgb": "~/input/rgb",
    "camera_info": "~/input/camera_info",
    "depth": "~/input/depth",
    "event": "~/input/events",
    "lidar": "~/input/lidar",
}
"""Node-relative input topics (remappable). Bags written by the package use the resolved names
below, so a replay feeds a node started with defaults."""

BAG_TOPICS: dict[str, str] = {k: f"/{NODE_NAME}/{v[2:]}" for k, v in INPUT_TOPICS.items()}
GROUND_TRUTH_TOPIC = f"/{NODE_NAME}/ground_truth/labels"  # mono8 class ids, camera header
GROUND_TRUTH_DEPTH_TOPIC = f"/{NODE_NAME}/ground_truth/depth"  # 32FC1 metres, NaN where unknown (sky)
CONDITION_TOPIC = f"/{NODE_NAME}/ground_truth/condition"  # std_msgs/String: weather of each frame
CAMERA_RECORD_DELAY_NS = 10_000_000
"""Bags record a frame's camera image (and ground truth) this long after its depth, events and
LiDAR, header stamps unchanged, as a camera-triggered rig delivers them: when the node assembles a
camera frame its partners have arrived at any replay speed, so a replay gives the node the same
bundles that offline evaluation assembles."""


class BadFileError(ValueError):
    """A file from outside (checkpoint, ONNX model, bag) that cannot be used as it is: damaged,
    foreign, absurd or hostile. The message names the file and what is wrong with it, and never
    suggests loading it in a less safe way."""


class InputError(ValueError):
    """Sensor data that cannot be used (bad encoding, truncated buffer, size mismatch...).

    The message is written for the person reading the log and diagnostics.
    """


@dataclass
class ImageData:
    """A decoded image in its own encoding: `array` is [H, W] or [H, W, C], often a view of the
    message buffer, so treat it as read-only."""

    array: np.ndarray
    encoding: str


@dataclass
class EventArray:
    """Events of an event camera, one entry per event, sorted or not."""

    x: np.ndarray  # int, column on the event sensor
    y: np.ndarray  # int, row on the event sensor
    t_ns: np.ndarray  # int64, absolute time in nanoseconds
    polarity: np.ndarray  # int8, +1 (brighter) or -1 (darker)
    width: int  # event sensor resolution, may differ from the RGB camera
    height: int

    def __len__(self) -> int:
        return int(self.t_ns.shape[0])

    def select(self, keep: np.ndarray) -> EventArray:
        return EventArray(self.x[keep], self.y[keep], self.t_ns[keep], self.polarity[keep],
                          self.width, self.height)

    def window(self, start_ns: int, end_ns: int) -> EventArray:
        """Events with start_ns < t <= end_ns."""
        return self.select((self.t_ns > start_ns) & (self.t_ns <= end_ns))

    @staticmethod
    def concatenate(parts: list[EventArray], width: int, height: int) -> EventArray:
        if not parts:
            return EventArray.empty(width, height)
        return EventArray(
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.y for p in parts]),
            np.concatenate([p.t_ns for p in parts]),
            np.concatenate([p.polarity for p in parts]),
            width,
            height,
        )

    @staticmethod
    def empty(width: int, height: int) -> EventArray:
        return EventArray(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64),
                          np.zeros(0, np.int8), width, height)


@dataclass
class PointCloud:
    """LiDAR points in their own frame (`frame_id`)."""

    xyz: np.ndarray  # [N, 3] float32 or float64; may contain NaN (organized clouds)
    intensity: np.ndarray | None = None  # [N] or None
    frame_id: str = ""

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


@dataclass(frozen=True)
class Stamped:
    """One converted message as it waits in a buffer."""

    stamp_ns: int
    data: object
    frame_id: str = ""


@dataclass
class FrameBundle:
    """What the assembler hands to the encoders for one camera frame.

    A modality attribute is None when absent; `absent[name]` then says why (never received,
    disabled, stale by how much, invalid...). `stamps[name]` is the stamp of the message used.
    """

    stamp_ns: int
    frame_id: str
    rgb: ImageData | None = None
    depth: ImageData | None = None
    event: EventArray | ImageData | None = None
    lidar: PointCloud | None = None
    camera: object | None = None  # sensors.camera.CameraModel of the latest camera_info
    stamps: dict[str, int] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)

    def get(self, modality: str):
        return getattr(self, modality)

    def present(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if getattr(self, m) is not None)


@dataclass
class ModelInput:
    """Engine input per the contract: `images` float32 [1, M, 3, H, W], `modality_mask`
    float32 [1, M] (1 present, 0 absent; an absent slot holds zeros)."""

    images: np.ndarray
    modality_mask: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])
