"""Named, versioned encodings of every modality: one name for what a model was trained on and what
the node must feed it.

A model only works on inputs encoded the way it was trained. Every checkpoint therefore records
the encoding of each slot (`encodings` in the checkpoint, carried into ONNX and engine metadata),
the node builds its encoders from that record (`PreprocessConfig.encodings`), and a record the
node cannot honour is refused with both sides named (`check_encodings`), never run with a
differently encoded input. A name never changes meaning: an encoder whose output changes gets a
new version (`hha-v2`), and a checkpoint asking for a version this package does not know is
refused rather than fed the nearest one.

Two families:
- NATIVE, the package's own encoders of raw sensor data (what the shipped model and synthetic
  training use);
- DELIVER, what the DELIVER dataset's files hold (Zhang et al., CVPR 2023), reproduced from raw
  sensor data so a model trained on DELIVER sees the same kind of input on the car. Its depth is
  the package's own HHA computed from DELIVER's metric `depth/` folder, so training and the node
  agree by construction; `deliver-hha-v1` (DELIVER's precomputed `hha/` images, made with
  Depth2HHA and parameters DELIVER does not publish) is readable for comparison with papers but
  cannot be computed live.

Nothing here imports ROS or torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sam_mmseg_ros.contracts import MODALITIES


class EncodingError(ValueError):
    """A model's encodings that an input source cannot produce; the message names both sides."""


@dataclass(frozen=True)
class Encoding:
    name: str
    modality: str
    summary: str
    live: bool  # the node computes it from the raw sensor stream (else it only passes images through)
    image_resample: str  # how a ready image of it is brought to the model input (sensors.image_input)


ENCODINGS: dict[str, Encoding] = {e.name: e for e in (
    Encoding("rgb-imagenet-v1", "rgb", "camera image, area-resized, ImageNet mean/std", True, "area"),
    Encoding("hha-v1", "depth", "the package's HHA of metric depth (sensors/depth.py): min(1, 2 m / z), "
             "height above the 1st-percentile ground / 10 m, normal angle / 180 deg; 0 where invalid",
             True, "area"),
    Encoding("inverse-depth-v1", "depth", "1 - min(z, 80 m) / 80 m in all three channels; 0 where invalid",
             True, "area"),
    Encoding("deliver-hha-v1", "depth", "DELIVER's precomputed hha/ images (Depth2HHA conventions with "
             "DELIVER's unpublished camera and depth inputs)", False, "area"),
    Encoding("event-count-v1", "event", "events per pixel per polarity at the model input, min(count, 4) / 4 "
             "(ch0 darker, ch2 brighter)", True, "max"),
    Encoding("event-voxel-v1", "event", "3-bin polarity voxel grid, 0.5 + 0.5 clip(sum / 4, -1, 1)", True, "area"),
    Encoding("carla-dvs-v1", "event", "CARLA DVS image as in DELIVER: any event sets its polarity channel to "
             "full intensity (red darker, blue brighter) at the event sensor's resolution", True, "max"),
    Encoding("lidar-projection-v1", "lidar", "nearest point per model-input pixel: nearness, intensity, "
             "validity", True, "max"),
    Encoding("deliver-lidar-v1", "lidar", "DELIVER-style front-view LiDAR image at the camera resolution: "
             "range of the nearest point in metres (1-100), grey (sensors/lidar.py says what is assumed)",
             True, "nearest_point"),
)}

NATIVE: dict[str, str] = {"rgb": "rgb-imagenet-v1", "depth": "hha-v1", "event": "event-count-v1",
                          "lidar": "lidar-projection-v1"}
"""The package's own encoders: the shipped model, synthetic training, and checkpoints written
before encodings were recorded."""
DELIVER: dict[str, str] = {"rgb": "rgb-imagenet-v1", "depth": "hha-v1", "event": "carla-dvs-v1",
                           "lidar": "deliver-lidar-v1"}
"""A model trained on DELIVER, deployable on a car (depth through the package's HHA)."""
PRESETS: dict[str, dict[str, str]] = {"native": NATIVE, "deliver": DELIVER,
                                      "deliver-hha": {**DELIVER, "depth": "deliver-hha-v1"}}

DELIVER_FILES_PROVIDE: dict[str, tuple[str, ...]] = {
    "rgb": ("rgb-imagenet-v1",), "depth": ("hha-v1", "deliver-hha-v1"), "event": ("carla-dvs-v1",),
    "lidar": ("deliver-lidar-v1",)}
"""What a DELIVER folder can feed each slot (depth/ through the package's HHA, or hha/ as is)."""


def known(modality: str) -> tuple[str, ...]:
    return tuple(name for name, e in ENCODINGS.items() if e.modality == modality)


def resolve(record: Mapping | None, source: str = "the model") -> dict[str, str]:
    """The full encoding of every slot from a checkpoint's (or ONNX file's) record.

    No record (files written before encodings were recorded) means NATIVE: those models were all
    trained through the node's own encoders. A partial record is completed with NATIVE. A name
    this package does not know, or one of another modality, raises EncodingError."""
    if record is None:
        return dict(NATIVE)
    if not isinstance(record, Mapping):
        raise EncodingError(f"{source} has an unreadable encodings record ({type(record).__name__})")
    unknown_slots = sorted(str(k) for k in record if k not in MODALITIES)
    if unknown_slots:
        raise EncodingError(f"{source} records encodings for unknown modalities {unknown_slots}")
    out = dict(NATIVE)
    for modality, name in record.items():
        encoding = ENCODINGS.get(name)
        if encoding is None or encoding.modality != modality:
            raise EncodingError(f"{source} was trained on {modality} encoding {name!r}, which this version of "
                                f"sam_mmseg_ros does not know (it knows {', '.join(known(modality))}): update the "
                                "package or retrain")
        out[modality] = name
    return out


def check_encodings(model: Mapping[str, str], provides: Mapping[str, tuple[str, ...] | None], model_source: str,
                    provider: str) -> None:
    """Raise EncodingError naming both sides unless `provides` can feed every slot of `model`.

    `provides[modality]` lists the encodings the input side produces for that slot; None means it
    passes ready images through (it cannot tell their encoding); a modality missing from
    `provides` is not used (disabled) and not checked."""
    problems = []
    for modality, name in model.items():
        if modality not in provides or provides[modality] is None or name in provides[modality]:
            continue
        offered = provides[modality]
        problems.append(f"{modality}: the model expects {name!r} ({ENCODINGS[name].summary}) but {provider} "
                        f"produces {' or '.join(repr(o) for o in offered)}")
    if problems:
        raise EncodingError(f"{model_source} cannot run on {provider}: " + "; ".join(problems))


def live_encodings(modality: str) -> tuple[str, ...]:
    """Encodings the node computes from a raw sensor stream of `modality`."""
    return tuple(name for name, e in ENCODINGS.items() if e.modality == modality and e.live)
