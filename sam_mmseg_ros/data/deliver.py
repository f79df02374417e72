"""DELIVER reader (Zhang et al., CVPR 2023), in the dataset's own folder layout and label encoding.

    <root>/{img,depth,hha,event,lidar,semantic}/{cloud,fog,night,rain,sun}/{train,val,test}/<sequence>/
        <frame>_rgb_front.png       img/       RGB
        <frame>_depth_front.png     depth/     metric depth, CARLA's 24-bit encoding (see below)
        <frame>_depth_front.png     hha/       depth as HHA (Depth2HHA), 3 channels
        <frame>_event_front.png     event/     CARLA DVS image, at the event sensor's resolution
        <frame>_lidar_front.png     lidar/     front-view LiDAR image
        <frame>_semantic_front.png  semantic/  class id in channel 0: 1..25, 0 and 255 unlabeled

Paths of the other modalities are derived from the RGB path exactly as the reference loader
(DELIVER / CMNeXt `semseg/datasets/deliver.py`) does: folder `img` -> `depth|hha|event|lidar|
semantic`, `_rgb` -> `_depth|_event|_lidar|_semantic`. Sensor-failure cases are sequences whose
folder name ends in the case (`MAP_1_point2_lidarjitter`), selected as the reference loader's
`case` argument does; the others are `normal`. Labels follow the reference remap: 0 and 255 ->
ignore (255), 1..25 -> 0..24; raw ids above 25 are not in DELIVER's class table and are scored as
ignore too, but counted per id (`unknown_labels`) so evaluation reports them.

Every sample is encoded by the node's own `sensors.preprocess` from the images a DELIVER frame
gives each slot (`deliver_images`), the very images `sam-mmseg make-bag --deliver` publishes, so
a model trained here sees exactly what the node computes from a DELIVER bag, and what it computes
from live sensors in the same encodings (sensors/encodings.py, DELIVER preset):
- depth: metric depth from `depth/` through the package's HHA (`hha-v1`), the same function the
  node runs on a live depth camera; `hha/` (`deliver-hha-v1`, the papers' protocol) is readable
  but cannot be computed live;
- events (`carla-dvs-v1`) and LiDAR (`deliver-lidar-v1`): the files as they are, which the node's
  DELIVER-style encoders reproduce from raw event streams and clouds.

Depth files: known from CARLA, whose depth camera DELIVER used: 24-bit depth in R, G, B,
metres = 1000 (R + 256 G + 65536 B) / (2^24 - 1), the sky at the 1000 m far plane. Assumed: the
`depth/` PNGs hold that raw encoding (a grey image, e.g. CARLA's logarithmic visualisation, is
refused rather than guessed at), and the cameras have CARLA's default 90 degree horizontal field
of view (`deliver_camera`). The far plane is "no return", as the sky is for a real depth camera.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from sam_mmseg_ros.contracts import IGNORE_LABEL, MODALITIES, FrameBundle, ImageData, InputError
from sam_mmseg_ros.data.dataset import Sample, resize_depth, resize_label
from sam_mmseg_ros.sensors.camera import CameraModel
from sam_mmseg_ros.sensors.encodings import DELIVER_FILES_PROVIDE, PRESETS, check_encodings, resolve

log = logging.getLogger(__name__)

DELIVER_CONDITIONS: tuple[str, ...] = ("cloud", "fog", "night", "rain", "sun")
DELIVER_CASES: tuple[str, ...] = ("motionblur", "overexposure", "underexposure", "lidarjitter", "eventlowres")
NORMAL = "normal"
DELIVER_SPLITS: tuple[str, ...] = ("train", "val", "test")
DELIVER_NUM_CLASSES = 25
DELIVER_HFOV_DEG = 90.0
CARLA_FAR_M = 1000.0
NO_RETURN_M = 999.0
"""Depth at or beyond this is CARLA's far plane (sky): no measurement."""
_DEPTH_SCALE = CARLA_FAR_M / (2**24 - 1)

# file key -> (top-level folder, file-name tag)
DELIVER_FILES: dict[str, tuple[str, str]] = {
    "rgb": ("img", "rgb"),
    "depth": ("depth", "depth"),
    "hha": ("hha", "depth"),
    "event": ("event", "event"),
    "lidar": ("lidar", "lidar"),
    "label": ("semantic", "semantic"),
}


def case_of(sequence: str) -> str:
    """The sensor-failure case of a sequence folder (its name's suffix), else 'normal'."""
    suffix = sequence.rsplit("_", 1)[-1]
    return suffix if suffix in DELIVER_CASES else NORMAL


@dataclass(frozen=True)
class DeliverFrame:
    """One frame: where it is and its files, found from the RGB file's path."""

    root: Path
    condition: str
    split: str
    sequence: str
    frame: str

    @property
    def case(self) -> str:
        return case_of(self.sequence)

    def path(self, key: str) -> Path:
        folder, tag = DELIVER_FILES[key]
        return self.root / folder / self.condition / self.split / self.sequence / f"{self.frame}_{tag}_front.png"


def remap_label(raw: np.ndarray) -> np.ndarray:
    """DELIVER semantic PNG channel 0 -> uint8 ids 0..24, IGNORE_LABEL for 0, 255 and anything > 25."""
    raw = raw.astype(np.int16)
    return np.where((raw >= 1) & (raw <= DELIVER_NUM_CLASSES), raw - 1, IGNORE_LABEL).astype(np.uint8)


def unknown_labels(raw: np.ndarray) -> dict[int, int]:
    """Pixels per raw id above 25 (not a DELIVER class, not its 255 'unlabeled')."""
    ids, counts = np.unique(raw[(raw > DELIVER_NUM_CLASSES) & (raw != 255)], return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}


def find_deliver_frames(root: str | Path, split: str = "train", conditions: Sequence[str] | None = None,
                        cases: Sequence[str] | None = None) -> list[DeliverFrame]:
    """All frames of a split, sorted (condition, sequence, frame), from the RGB files present.
    `cases`: None for every frame, else the ones of these cases ('normal' and/or DELIVER_CASES)."""
    root = Path(root)
    if split not in DELIVER_SPLITS:
        raise ValueError(f"DELIVER split must be one of {DELIVER_SPLITS}, got '{split}'")
    conditions = tuple(conditions) if conditions else DELIVER_CONDITIONS
    unknown = sorted(set(conditions) - set(DELIVER_CONDITIONS))
    if unknown:
        raise ValueError(f"unknown DELIVER condition(s) {unknown}; known: {DELIVER_CONDITIONS}")
    unknown = sorted(set(cases or ()) - {NORMAL, *DELIVER_CASES})
    if unknown:
        raise ValueError(f"unknown DELIVER case(s) {unknown}; known: {(NORMAL, *DELIVER_CASES)}")
    if not (root / "img").is_dir():
        raise FileNotFoundError(f"{root} is not a DELIVER folder: {root / 'img'} does not exist")
    frames = []
    for condition in conditions:
        for rgb in sorted((root / "img" / condition / split).glob("*/*_rgb_front.png")):
            if cases is None or case_of(rgb.parent.name) in cases:
                frames.append(DeliverFrame(root, condition, split, rgb.parent.name,
                                           rgb.name[: -len("_rgb_front.png")]))
    if not frames:
        raise FileNotFoundError(f"no DELIVER frames for split '{split}', conditions {list(conditions)} and cases "
                                f"{list(cases) if cases else 'all'} under {root} "
                                f"(expected img/<condition>/{split}/<sequence>/*_rgb_front.png)")
    return frames


def deliver_camera(width: int, height: int) -> CameraModel:
    """The camera of a DELIVER image of this size: CARLA's default 90 degree horizontal field of
    view, square pixels, no distortion (assumed: DELIVER publishes no calibration)."""
    from sam_mmseg_ros.data.synthetic import CAMERA_FRAME

    return CameraModel.from_fov(width, height, DELIVER_HFOV_DEG, CAMERA_FRAME)


def decode_depth_png(array: np.ndarray, path: str | Path = "depth image") -> np.ndarray:
    """CARLA 24-bit depth image (uint8 [H, W, 3 or 4], R low byte) -> float32 metres, NaN where
    nothing was measured (the far plane)."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] < 3:
        raise InputError(f"{path}: expected CARLA's 24-bit depth encoding (8-bit RGB), got "
                         f"{list(array.shape)} {array.dtype}")
    rgb = array[:, :, :3].astype(np.uint32)
    sample = rgb[::7, ::7]
    if (sample[:, :, 0] == sample[:, :, 1]).all() and (sample[:, :, 1] == sample[:, :, 2]).all():
        raise InputError(f"{path} is grey: a depth visualisation (e.g. CARLA's logarithmic depth), not the raw "
                         "24-bit encoding; metric depth cannot be recovered from it (train on hha/ with "
                         "--encodings deliver-hha instead)")
    metres = (rgb[:, :, 0] + (rgb[:, :, 1] << 8) + (rgb[:, :, 2] << 16)).astype(np.float32) * np.float32(_DEPTH_SCALE)
    metres[metres >= NO_RETURN_M] = np.nan
    return metres


def encode_depth_png(metres: np.ndarray) -> np.ndarray:
    """float metres [H, W] -> CARLA's 24-bit depth image uint8 [H, W, 3]; no measurement (NaN,
    0, beyond the far plane) becomes the far plane, as CARLA renders the sky."""
    depth = np.nan_to_num(np.asarray(metres, np.float64), nan=CARLA_FAR_M, posinf=CARLA_FAR_M)
    depth[(depth <= 0) | (depth > CARLA_FAR_M)] = CARLA_FAR_M
    code = np.rint(depth / _DEPTH_SCALE).astype(np.uint32)
    return np.stack([code & 255, (code >> 8) & 255, code >> 16], axis=2).astype(np.uint8)


def _read_png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"DELIVER file missing: {path}")
    with Image.open(path) as image:
        return np.array(image.convert("RGB") if image.mode in ("P", "LA") else image)


def _as_uint8(array: np.ndarray) -> np.ndarray:
    """16-bit images keep the high byte (the range DELIVER uses); alpha is dropped."""
    if array.dtype != np.uint8:
        array = (array.astype(np.uint32) >> 8).astype(np.uint8)
    return array[:, :, :3] if array.ndim == 3 else array


def read_deliver_frame(frame: DeliverFrame, keys: Sequence[str] = ("rgb", "depth", "event", "lidar", "label")) -> dict:
    """Decoded arrays of one frame: rgb uint8 [H, W, 3], depth float32 metres [H, W] (NaN: none),
    hha uint8 [H, W, 3], event uint8 at the event sensor's own resolution, lidar uint8 [H, W] or
    [H, W, 3] as stored, label uint8 [H, W] remapped; plus unknown_labels ({raw id: pixels} above
    25), condition, case, sequence and frame."""
    out: dict = {"condition": frame.condition, "case": frame.case, "sequence": frame.sequence, "frame": frame.frame}
    rgb = _as_uint8(_read_png(frame.path("rgb")))
    rgb = np.repeat(rgb[:, :, None], 3, axis=2) if rgb.ndim == 2 else rgb
    height, width = rgb.shape[:2]
    for key in keys:
        if key == "rgb":
            out[key] = rgb
            continue
        array = _read_png(frame.path(key))
        if key == "depth":
            array = decode_depth_png(array, frame.path(key))
        elif key == "label":
            raw = array if array.ndim == 2 else array[:, :, 0]
            out["unknown_labels"] = unknown_labels(raw)
            array = remap_label(raw)
        else:
            array = _as_uint8(array)
        # Event images stay at the event sensor's resolution (DELIVER's low-resolution case): the
        # encoder maps them to the model input as it maps a live event sensor's.
        if key != "event" and array.shape[:2] != (height, width):
            raise InputError(f"{frame.path(key)} is {array.shape[1]}x{array.shape[0]}, "
                             f"its RGB image is {width}x{height}")
        out[key] = array
    return out


def iter_deliver_frames(root: str | Path, split: str = "test", conditions: Sequence[str] | None = None,
                        cases: Sequence[str] | None = None,
                        keys: Sequence[str] = ("rgb", "depth", "event", "lidar", "label")) -> Iterator[dict]:
    """Every frame of a split as `read_deliver_frame` dicts, sorted by condition, sequence and frame."""
    for frame in find_deliver_frames(root, split, conditions, cases):
        yield read_deliver_frame(frame, keys)


def files_for(encodings: Mapping[str, str], modalities: Sequence[str] = MODALITIES) -> tuple[str, ...]:
    """The files to read for these encodings and modalities (depth/ or hha/ for depth)."""
    keys = {"rgb": "rgb", "depth": "hha" if encodings["depth"] == "deliver-hha-v1" else "depth",
            "event": "event", "lidar": "lidar"}
    return tuple(keys[m] for m in modalities) + ("label",)


def deliver_images(frame: Mapping) -> dict[str, ImageData]:
    """The images a read DELIVER frame gives the model's slots, as the node receives them: RGB
    (rgb8), metric depth (32FC1) or HHA (rgb8), the event image (rgb8) and the LiDAR image (mono8
    or rgb8). `make-bag --deliver` publishes exactly these."""
    images = {"rgb": ImageData(frame["rgb"], "rgb8")}
    if "depth" in frame:
        images["depth"] = ImageData(frame["depth"], "32FC1")
    elif "hha" in frame:
        images["depth"] = ImageData(frame["hha"], "rgb8")
    for m in ("event", "lidar"):
        if m in frame:
            images[m] = ImageData(frame[m], "mono8" if frame[m].ndim == 2 else "rgb8")
    return images


class DeliverDataset(Dataset):
    """DELIVER as model samples (see data/dataset.py), encoded by the node's `sensors.preprocess`
    in `encodings` (a PRESETS name or mapping: 'deliver' reads depth/, 'deliver-hha' reads hha/);
    modalities not listed in `modalities` are absent slots and their files are not read. Samples
    also carry `case` and `unknown_labels` (its pixels with raw ids above 25); the dataset counts
    them per id in `unknown_labels`. `depth_target` adds the metric depth of `depth/` (float32
    metres, 0 = none) as the depth task's target, whichever encoding the depth input uses."""

    def __init__(self, root: str | Path, split: str = "train", conditions: Sequence[str] | None = None,
                 size: tuple[int, int] = (1024, 1024), modalities: Sequence[str] = MODALITIES,
                 cases: Sequence[str] | None = None, encodings: str | Mapping[str, str] = "deliver",
                 depth_target: bool = False):
        unknown = sorted(set(modalities) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; known: {MODALITIES}")
        if isinstance(encodings, str) and encodings not in PRESETS:
            raise ValueError(f"unknown encodings preset '{encodings}' (use {', '.join(PRESETS)})")
        self.encodings = resolve(PRESETS[encodings] if isinstance(encodings, str) else encodings)
        check_encodings(self.encodings, {m: DELIVER_FILES_PROVIDE[m] for m in modalities}, "the model",
                        "a DELIVER folder")
        self.frames = find_deliver_frames(root, split, conditions, cases)
        self.size = (int(size[0]), int(size[1]))
        self.modalities = tuple(modalities)
        self._keys = files_for(self.encodings, self.modalities)
        self.depth_target = depth_target
        self._depth_for_target_only = depth_target and "depth" not in self._keys  # not an input
        if self._depth_for_target_only:
            self._keys += ("depth",)
        self.unknown_labels: Counter = Counter()  # pixels per raw id above 25 in the samples read so far

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Sample:
        import torch

        from sam_mmseg_ros.sensors.preprocess import PreprocessConfig, preprocess

        frame = read_deliver_frame(self.frames[index], self._keys)
        height, width = frame["rgb"].shape[:2]
        images = deliver_images({k: v for k, v in frame.items() if k != "depth" or not self._depth_for_target_only})
        bundle = FrameBundle(0, "", camera=deliver_camera(width, height), **images)
        encoded = preprocess(bundle, PreprocessConfig(input_size=self.size, encodings=self.encodings))
        if encoded.errors:
            raise InputError(f"{self.frames[index].path('rgb')}: " + "; ".join(f"{m}: {e}" for m, e in
                                                                                encoded.errors.items()))
        unknown = frame["unknown_labels"]
        if unknown and not self.unknown_labels:
            log.warning("%s has raw label ids above 25 %s (pixels per id), scored as ignore; DELIVER has 25 classes "
                        "(further frames are counted, not logged)", self.frames[index].path("label"), unknown)
        self.unknown_labels.update(unknown)
        sample = {"images": torch.from_numpy(encoded.model_input.images[0].copy()),
                  "modality_mask": torch.from_numpy(encoded.model_input.modality_mask[0].copy()),
                  "label": resize_label(frame["label"], self.size), "condition": frame["condition"],
                  "case": frame["case"], "unknown_labels": sum(unknown.values())}
        if self.depth_target:
            sample["depth"] = torch.from_numpy(resize_depth(frame["depth"], self.size))
        return sample


# ------------------------------------------------------------------------------------- fixture


def write_deliver_fixture(root: str | Path, frames_per_condition: int = 1, size: tuple[int, int] = (64, 64),
                          seed: int = 0, splits: Sequence[str] = DELIVER_SPLITS,
                          conditions: Sequence[str] = DELIVER_CONDITIONS,
                          class_ids: Sequence[int] = range(1, DELIVER_NUM_CLASSES + 1),
                          cases: Sequence[str] = ("eventlowres",)) -> Path:
    """Write a small folder in DELIVER's exact layout and file formats, for tests and examples.

    Each frame is four vertical bands of random classes, cut at multiples of 8 pixels (so `size`
    needs a width of at least 32), each band a wall facing the camera at a distance set by its
    class: every modality carries the class as DELIVER's files would (RGB colour; metric depth
    in CARLA's encoding, and its HHA; LiDAR scan lines of ranges; red/blue DVS events where the
    brightness changes between bands). The top rows are sky (raw id 0, no depth or LiDAR return);
    a few raw 255 and raw 27 pixels exercise the ignore remap and the unknown-id count. Semantic
    PNGs are RGB with the id in channel 0, like CARLA's. `class_ids` (raw ids 1..25) limits the
    classes drawn. Per split and condition: `frames_per_condition` normal frames, then one frame
    per sensor-failure case in `cases`, in a sequence folder named after it. Returns `root`.
    """
    from sam_mmseg_ros.sensors.depth import hha

    unknown = sorted(set(cases) - set(DELIVER_CASES))
    if unknown:
        raise ValueError(f"unknown DELIVER case(s) {unknown}; known: {DELIVER_CASES}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    camera = deliver_camera(width, height)
    xn, yn = camera.pixel_rays()
    ray_length = np.sqrt(1.0 + xn * xn + yn * yn)
    class_colour = np.random.default_rng(1234).integers(0, 256, (DELIVER_NUM_CLASSES + 1, 3), dtype=np.uint8)
    sky = max(1, height // 16)
    index = 0
    for split in splits:
        for condition in conditions:
            frame_cases = [NORMAL] * frames_per_condition + list(cases)
            for i, case in enumerate(frame_cases):
                sequence = f"MAP_{i % 3 + 1}_point{i}" + ("" if case == NORMAL else f"_{case}")
                frame = DeliverFrame(root, condition, split, sequence, f"{index:06d}")
                index += 1
                cuts = np.sort(rng.choice(np.arange(1, width // 8) * 8, size=3, replace=False))
                ids = rng.choice(np.asarray(class_ids), size=4)
                raw = np.repeat(ids[np.searchsorted(cuts, np.arange(width), side="right")][None], height, 0)
                walls = np.where(raw > 0, 3.0 + 1.5 * raw, np.nan)  # metres along the optical axis
                raw[:sky] = 0
                walls[:sky] = np.nan
                raw[rng.integers(sky, height, 5), rng.integers(0, width, 5)] = 255
                raw[rng.integers(sky, height, 2), rng.integers(0, width, 2)] = 27
                known = np.minimum(raw, DELIVER_NUM_CLASSES)
                gain = 0.4 if condition == "night" else 1.0
                rgb = class_colour[known] * gain + rng.integers(-12, 13, (height, width, 3))
                lidar = np.zeros((height, width), np.uint8)
                rows = np.arange(sky + 1, height, 4) + (rng.integers(-1, 2) if case == "lidarjitter" else 0)
                rows = rows[(rows >= sky) & (rows < height)]
                lidar[rows] = np.clip(np.rint(walls * ray_length)[rows], 1, 100)
                brightness = class_colour[ids].astype(float).sum(axis=1) * gain
                event_width = width // 2 if case == "eventlowres" else width
                event = np.zeros((height * event_width // width, event_width, 3), np.uint8)
                event[:, cuts * event_width // width, np.where(np.diff(brightness) > 0, 2, 0)] = 255
                if case == "motionblur":
                    rgb = (rgb + np.roll(rgb, 2, axis=1) + np.roll(rgb, -2, axis=1)) / 3
                elif case in ("overexposure", "underexposure"):
                    rgb = rgb * 2.5 + 60 if case == "overexposure" else rgb * 0.2
                images = {"rgb": np.clip(rgb, 0, 255), "depth": encode_depth_png(walls),
                          "hha": np.rint(hha(walls.astype(np.float32), camera) * 255), "event": event,
                          "lidar": lidar, "label": np.stack([raw, np.zeros_like(raw), np.zeros_like(raw)], axis=2)}
                for key, array in images.items():
                    path = frame.path(key)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return root

