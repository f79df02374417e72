"""One FrameBundle -> the engine's ModelInput: every present modality encoded into its slot.

A modality that fails (contracts.InputError: bad encoding, no camera_info, ...) becomes an
absent slot (zeros, mask 0) with its error recorded; the others are unaffected, because the
model is trained with random modality drop-out and handles absence, while a wrongly encoded
slot would mislead it. For the same reason depth without camera_info is absent rather than
silently encoded as inverse depth when the model expects HHA.

The modalities are encoded one after another in the calling thread: on a 2-thread pool they
measured slower (median wall 14-20 ms in sequence, 17-33 ms on 2 threads, at 512x512) on the
2-core machine shared with a training job, where the second thread mostly waits for a core
and the GIL.

What each slot holds is `config.encodings` (sensors/encodings.py), the record of the checkpoint
the node runs, so a model trained on DELIVER gets DELIVER-style inputs. A modality may also
arrive as a ready image (a DELIVER bag, an upstream event-frame node): depth as rgb8/bgr8/mono8
instead of 32FC1/16UC1, events or LiDAR as an Image instead of an event array or a cloud. Such an
image is taken to be in the slot's encoding and only brought to the input size, the way the
encoding says (`image_input.encode_image_input`), as DELIVER files are when training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sam_mmseg_ros.contracts import MODALITIES, MODALITY_INDEX, FrameBundle, InputError, ModelInput
from sam_mmseg_ros.sensors.depth import encode_depth
from sam_mmseg_ros.sensors.encodings import ENCODINGS, NATIVE, known
from sam_mmseg_ros.sensors.events import encode_events
from sam_mmseg_ros.sensors.image_input import encode_image_input, is_image_input, pool_sparse, sparse_to_unit
from sam_mmseg_ros.sensors.lidar import (
    ProjectedPoints,
    deliver_lidar_ranges,
    encode_lidar,
    project_points,
    projection_stats,
    rasterize,
)
from sam_mmseg_ros.sensors.rgb import encode_rgb
from sam_mmseg_ros.settings import default

NO_CAMERA_LIDAR = "no camera_info received: LiDAR cannot be projected"
_DEPTH_METHODS = {"hha-v1": "hha", "inverse-depth-v1": "inverse"}


@dataclass
class PreprocessConfig:
    input_size: tuple[int, int] = (512, 512)  # (H, W) of the model input
    encodings: dict[str, str] = field(default_factory=lambda: dict(NATIVE))  # modality -> encoding name
    event_window_ms: float = default("event_window_ms")
    lidar_max_range_m: float = default("lidar_max_range_m")
    rgb_resize: str = "area"  # "area" | "nearest" (integer factors; see sensors.rgb)
    depth_max_m: float = 80.0  # range of the "inverse" depth encoding
    lidar_intensity_scale: float | None = None  # None: fixed by the intensity field's datatype
    camera_height_m: float | None = None  # HHA ground level; None: estimated per frame


@dataclass
class EncodedFrame:
    model_input: ModelInput
    measurements: dict[str, dict[str, float]]  # modality -> stats of its encoder
    projected_lidar: ProjectedPoints | None  # for painting the cloud with labels
    errors: dict[str, str]  # modality -> InputError text
    rgb_uint8: np.ndarray | None  # [H, W, 3] RGB at camera resolution, for overlays (read-only)


def allocate_images(size: tuple[int, int]) -> np.ndarray:
    """A zeroed [1, M, 3, H, W] float32 buffer for `preprocess(..., out=...)`."""
    return np.zeros((1, len(MODALITIES), 3, *size), np.float32)


def preprocess(bundle: FrameBundle, config: PreprocessConfig | None = None,
               T_camera_lidar: np.ndarray | None = None, out: np.ndarray | None = None) -> EncodedFrame:
    """Encode every modality of `bundle` into ModelInput.

    `T_camera_lidar` maps LiDAR points into the camera optical frame (None: identity, the cloud
    is already in it). It is an argument, not configuration, because tf2 may update it any frame.

    `out` is an optional [1, M, 3, H, W] float32 buffer filled in place (saves allocating and
    page-faulting ~12 MB per frame); only pass one whose previous ModelInput is no longer
    used, e.g. once the backend has consumed it.
    """
    config = config or PreprocessConfig()
    _check_config(config)
    size = tuple(config.input_size)
    shape = (1, len(MODALITIES), 3, *size)
    if out is None:
        images = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"output buffer must be {list(shape)} float32, got {list(out.shape)} {out.dtype}")
    else:
        images = out
    mask = np.zeros((1, len(MODALITIES)), np.float32)
    measurements: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    rgb8 = None
    projected = None

    for modality in MODALITIES:
        slot = images[0, MODALITY_INDEX[modality]]
        data = bundle.get(modality)
        if data is None:
            slot.fill(0.0)
            continue
        encoding = config.encodings[modality]
        try:
            needs_camera = not is_image_input(data) if modality == "lidar" else (
                modality == "depth" and not is_image_input(data) and _DEPTH_METHODS.get(encoding) == "hha")
            if needs_camera and bundle.camera is None and "camera_info" in bundle.absent:
                raise InputError(bundle.absent["camera_info"])  # e.g. an unsupported distortion model
            if modality == "rgb":
                _, stats, rgb8 = encode_rgb(data, size, config.rgb_resize, out=slot)
            elif modality == "depth" and is_image_input(data):
                _, active = encode_image_input(data, size, ENCODINGS[encoding].image_resample, slot)
                stats = {"valid_fraction": active / float(data.array.shape[0] * data.array.shape[1])}
            elif modality == "depth":
                if encoding not in _DEPTH_METHODS:
                    raise InputError(f"the model's depth encoding '{encoding}' cannot be computed from a depth "
                                     "image; it needs ready depth images (depth_input: image)")
                _, stats = encode_depth(data, bundle.camera, size, _DEPTH_METHODS[encoding],
                                        config.depth_max_m, out=slot, camera_height_m=config.camera_height_m)
            elif modality == "event":
                _, stats = encode_events(data, size, config.event_window_ms / 1000.0, encoding, out=slot)
            elif is_image_input(data):
                _, active = encode_image_input(data, size, ENCODINGS[encoding].image_resample, slot)
                stats = {"points_in_image": float(active)}
            else:
                if bundle.camera is None:
                    raise InputError(NO_CAMERA_LIDAR)
                projected = project_points(data, np.eye(4) if T_camera_lidar is None else T_camera_lidar,
                                           bundle.camera)
                stats = _encode_cloud(data, projected, bundle.camera, size, encoding, config, slot)
        except InputError as error:
            slot.fill(0.0)
            errors[modality] = str(error)
            projected = None if modality == "lidar" else projected
            continue
        measurements[modality] = stats
        mask[0, MODALITY_INDEX[modality]] = 1.0

    return EncodedFrame(
        model_input=ModelInput(images=images, modality_mask=mask),
        measurements=measurements,
        projected_lidar=projected,
        errors=errors,
        rgb_uint8=rgb8,
    )


def _encode_cloud(cloud, projected: ProjectedPoints, camera, size: tuple[int, int], encoding: str,
                  config: PreprocessConfig, slot: np.ndarray) -> dict[str, float]:
    """A projected LiDAR cloud in `encoding`, into `slot`; the stats health needs."""
    if encoding == "deliver-lidar-v1":
        rows, cols, ranges = deliver_lidar_ranges(cloud, projected)
        pooled = pool_sparse(rows, cols, 0, ranges, (camera.height, camera.width), size,
                             ENCODINGS[encoding].image_resample, 1)
        sparse_to_unit(pooled, slot)
        return projection_stats(projected.points_total, len(projected), projected.nonfinite_count)
    raster = rasterize(projected, camera, size)
    _, stats = encode_lidar(raster, config.lidar_max_range_m, config.lidar_intensity_scale, out=slot)
    return stats


def _check_config(config: PreprocessConfig) -> None:
    for modality in MODALITIES:
        name = config.encodings.get(modality)
        if name not in ENCODINGS or ENCODINGS[name].modality != modality:
            raise ValueError(f"{modality} encoding {name!r} is not one of {known(modality)}")
