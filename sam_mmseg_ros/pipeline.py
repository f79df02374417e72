"""The per-frame stages shared by the live node and offline evaluation: encode → infer → postprocess.

Both call `SegmentationPipeline.run` on a `FrameBundle`, so a bag evaluated offline gives the same
labels as the node fed by a replay of that bag. Nothing here imports ROS.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from sam_mmseg_ros.contracts import MODALITIES, FrameBundle
from sam_mmseg_ros.labels import class_id
from sam_mmseg_ros.sensors.preprocess import PreprocessConfig, allocate_images, preprocess
from sam_mmseg_ros.sensors.rgb import bilinear, linear_taps

NO_SURFACE_CLASSES = (class_id("Sky"),)
"""Labels where depth has no value (nothing to measure): the depth image is NaN there."""


@dataclass
class FrameResult:
    """Everything the node publishes for one camera frame (all at camera resolution)."""

    stamp_ns: int
    frame_id: str
    labels: np.ndarray  # uint8 [H, W] class ids
    confidence: np.ndarray  # float32 [h, w] max softmax probability, at the model's resolution
    router_weights: np.ndarray  # float32 [M], MODALITIES order
    health: dict  # modality -> health.ModalityHealth
    painted: tuple[np.ndarray, np.ndarray] | None  # (xyz [K, 3] camera frame, labels [K]) or None
    timings_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # modality -> why it could not be encoded
    rgb: np.ndarray | None = None  # uint8 [H, W, 3], the camera image the labels belong to
    depth: np.ndarray | None = None  # float32 [H, W] metres, NaN where invalid (depth models, when asked)


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of the leading two axes by index gathering (pixel centres kept),
    so class ids are never blended."""
    h, w = array.shape[:2]
    if (h, w) == (height, width):
        return array
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.intp), w - 1)
    return array[rows[:, None], cols[None, :]]


def depth_image(depth: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The model's depth [h, w] (metres) at the camera resolution of `labels` [H, W]: float32,
    bilinear in log depth at pixel centres (as the model upsamples its own output, so a resized
    edge between a near and a far surface stays a ratio, not a midpoint), NaN where there is no
    surface to measure (NO_SURFACE_CLASSES) or the value is not a positive number."""
    height, width = labels.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        log_depth = np.log(np.asarray(depth, np.float32))
    if log_depth.shape != (height, width):
        log_depth = bilinear(log_depth, linear_taps(log_depth.shape[0], height), linear_taps(log_depth.shape[1], width))
    out = np.exp(log_depth, dtype=np.float32)
    out[~(np.isfinite(out) & (out > 0)) | np.isin(labels, NO_SURFACE_CLASSES)] = np.nan
    return out


class SegmentationPipeline:
    """Runs one camera frame through preprocessing, the backend and postprocessing."""

    def __init__(self, backend, preprocess_config: PreprocessConfig, health_monitor):
        self.backend = backend
        self.preprocess_config = preprocess_config
        self.health_monitor = health_monitor
        self._images: np.ndarray | None = None  # model input buffer, reused: infer is synchronous
        self._unmasked: np.ndarray | None = None  # copy of the last frame's input, for outputs_with_only
        self._mask: np.ndarray | None = None  # modality mask of the last frame run
        self._camera_size: tuple[int, int] = (0, 0)  # (height, width) of the last frame run

    def run(self, bundle: FrameBundle, now_ns: int, T_camera_lidar: np.ndarray | None = None,
            paint: bool = True, depth: bool = True) -> FrameResult:
        """Segment `bundle`. `T_camera_lidar`: LiDAR -> camera optical frame for this frame (tf2 or
        the parameters; None: identity). `paint=False` skips the painted LiDAR cloud, `depth=False`
        the depth image (nobody subscribes); a model without the depth task has none."""
        t0 = time.perf_counter()
        size = tuple(self.preprocess_config.input_size)
        if self._images is None or self._images.shape[-2:] != size:
            self._images = self._input_buffer(size)
        encoded = preprocess(bundle, self.preprocess_config, T_camera_lidar, out=self._images)
        self._unmasked = None
        errors = dict(encoded.errors)
        t1 = time.perf_counter()
        self._mask = encoded.model_input.modality_mask
        out = self.backend.infer(encoded.model_input.images, self._mask)
        t2 = time.perf_counter()

        rgb = encoded.rgb_uint8  # None when the camera image itself could not be encoded
        height, width = self._camera_size = (rgb if rgb is not None else bundle.rgb.array).shape[:2]
        labels = resize_nearest(np.asarray(out["labels"])[0], height, width).astype(np.uint8)
        confidence = np.asarray(out["confidence"], np.float32)[0]  # nothing publishes it: not resized
        router_weights = np.asarray(out["router_weights"], np.float32).reshape(-1)[: len(MODALITIES)]

        painted = None
        projected = encoded.projected_lidar
        if paint and projected is not None and bundle.lidar is not None:
            painted = (projected.camera_xyz(), labels[projected.row, projected.col])

        depth_m = depth_image(out["depth"][0], labels) if depth and "depth" in out else None

        for modality, reason in errors.items():
            self.health_monitor.mark_invalid(modality, reason, now_ns)
        health = self.health_monitor.update(bundle, encoded.measurements, now_ns, router_weights)
        t3 = time.perf_counter()
        timings = {"encode": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3,
                   "postprocess": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        return FrameResult(bundle.stamp_ns, bundle.frame_id, labels, confidence, router_weights, health,
                           painted, timings, errors, rgb, depth_m)

    def _input_buffer(self, size: tuple[int, int]) -> np.ndarray:
        """The backend's own input buffer when it offers one of this size (TensorRT: pinned or
        GPU-mapped memory, so preprocessing writes the frame where the engine reads it), else a
        new array."""
        offered = getattr(self.backend, "input_buffer", None)
        if offered is not None:
            buffer = offered()
            if buffer.shape == (1, len(MODALITIES), 3, *size) and buffer.dtype == np.float32:
                return buffer
        return allocate_images(size)

    def outputs_with_only(self, keep: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """(labels, depth or None) of the frame `run` just segmented, at camera resolution, as if
        only the `keep` modalities had been present (evaluation of sensor failures). The encoded
        input is reused with the other slots zeroed and masked: exactly what `preprocess` gives a
        modality that is absent. It is copied first: `infer` overwrites a backend-owned input
        buffer with what it is given."""
        if self._unmasked is None:
            self._unmasked = self._images.copy()
        mask = self._mask * np.array([[m in keep for m in MODALITIES]], np.float32)
        out = self.backend.infer(self._unmasked * mask[:, :, None, None, None], mask)
        labels = resize_nearest(np.asarray(out["labels"])[0], *self._camera_size).astype(np.uint8)
        return labels, (depth_image(out["depth"][0], labels) if "depth" in out else None)
