"""DELIVER reader (Zhang et al., CVPR 2023), in the dataset's own folder layout and label encoding.

    <root>/{img,hha,event,lidar,semantic}/{cloud,fog,night,rain,sun}/{train,val,test}/<sequence>/
        <frame>_rgb_front.png       img/       RGB
        <frame>_depth_front.png     hha/       depth, HHA-encoded, 3 channels
        <frame>_event_front.png     event/     event frame (lower resolution in *eventlowres* cases)
        <frame>_lidar_front.png     lidar/     projected LiDAR
        <frame>_semantic_front.png  semantic/  class id in channel 0: 1..25, 0 and 255 unlabeled

Paths of the other modalities are derived from the RGB path exactly as the reference loader
(DELIVER / CMNeXt `semseg/datasets/deliver.py`) does: folder `img` -> `hha|event|lidar|semantic`,
`_rgb` -> `_depth|_event|_lidar|_semantic`. Labels follow its remap: 0 and 255 -> ignore (255),
1..25 -> 0..24. The frame iterator is shared by training, evaluation and the bag writer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from sam_mmseg_ros.contracts import IGNORE_LABEL, MODALITIES, InputError
from sam_mmseg_ros.data.dataset import Sample, encode_images, resize_label

DELIVER_CONDITIONS: tuple[str, ...] = ("cloud", "fog", "night", "rain", "sun")
DELIVER_SPLITS: tuple[str, ...] = ("train", "val", "test")
DELIVER_NUM_CLASSES = 25

# frame-dict key -> (top-level folder, file-name tag); the model's "depth" slot reads "hha".
DELIVER_FILES: dict[str, tuple[str, str]] = {
    "rgb": ("img", "rgb"),
    "hha": ("hha", "depth"),
    "event": ("event", "event"),
    "lidar": ("lidar", "lidar"),
    "label": ("semantic", "semantic"),
}
MODALITY_KEYS: dict[str, str] = {"rgb": "rgb", "depth": "hha", "event": "event", "lidar": "lidar"}


@dataclass(frozen=True)
class DeliverFrame:
    """One frame: where it is and its files, found from the RGB file's path."""

    root: Path
    condition: str
    split: str
    sequence: str
    frame: str

    def path(self, key: str) -> Path:
        folder, tag = DELIVER_FILES[key]
        return self.root / folder / self.condition / self.split / self.sequence / f"{self.frame}_{tag}_front.png"


def remap_label(raw: np.ndarray) -> np.ndarray:
    """DELIVER semantic PNG channel 0 -> uint8 ids 0..24, IGNORE_LABEL for 0, 255 and anything > 25."""
    raw = raw.astype(np.int16)
    return np.where((raw >= 1) & (raw <= DELIVER_NUM_CLASSES), raw - 1, IGNORE_LABEL).astype(np.uint8)


def find_deliver_frames(root: str | Path, split: str = "train",
                        conditions: Sequence[str] | None = None) -> list[DeliverFrame]:
    """All frames of a split, sorted (condition, sequence, frame), from the RGB files present."""
    root = Path(root)
    if split not in DELIVER_SPLITS:
        raise ValueError(f"DELIVER split must be one of {DELIVER_SPLITS}, got '{split}'")
    conditions = tuple(conditions) if conditions else DELIVER_CONDITIONS
    unknown = sorted(set(conditions) - set(DELIVER_CONDITIONS))
    if unknown:
        raise ValueError(f"unknown DELIVER condition(s) {unknown}; known: {DELIVER_CONDITIONS}")
    if not (root / "img").is_dir():
        raise FileNotFoundError(f"{root} is not a DELIVER folder: {root / 'img'} does not exist")
    frames = []
    for condition in conditions:
        for rgb in sorted((root / "img" / condition / split).glob("*/*_rgb_front.png")):
            frames.append(DeliverFrame(root, condition, split, rgb.parent.name,
                                       rgb.name[: -len("_rgb_front.png")]))
    if not frames:
        raise FileNotFoundError(f"no DELIVER frames for split '{split}' and conditions {list(conditions)} "
                                f"under {root} (expected img/<condition>/{split}/<sequence>/*_rgb_front.png)")
    return frames


def _read_png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"DELIVER file missing: {path}")
    with Image.open(path) as image:
        array = np.array(image.convert("RGB") if image.mode in ("RGBA", "P", "LA") else image)
    if array.dtype != np.uint8:  # 16-bit grayscale PNGs: keep the high byte, the range DELIVER uses
        array = (array.astype(np.uint32) >> 8).astype(np.uint8)
    return array


def _to_rgb3(array: np.ndarray) -> np.ndarray:
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array[:, :, :3]


def read_deliver_frame(frame: DeliverFrame, keys: Sequence[str] = tuple(DELIVER_FILES)) -> dict:
    """Decoded uint8 arrays of one frame at the RGB resolution: rgb, hha, event, lidar [H, W, 3]
    (single-channel files repeated), label [H, W] remapped; plus condition, sequence, frame.
    Event frames of the low-resolution cases are upscaled nearest, as the reference loader does."""
    out: dict = {"condition": frame.condition, "sequence": frame.sequence, "frame": frame.frame}
    rgb = _to_rgb3(_read_png(frame.path("rgb")))
    height, width = rgb.shape[:2]
    for key in keys:
        if key == "rgb":
            out[key] = rgb
            continue
        array = _read_png(frame.path(key))
        if key == "label":
            array = remap_label(array if array.ndim == 2 else array[:, :, 0])
        else:
            array = _to_rgb3(array)
        if array.shape[:2] != (height, width):
            if key != "event":
                raise InputError(f"{frame.path(key)} is {array.shape[1]}x{array.shape[0]}, "
                                 f"its RGB image is {width}x{height}")
            array = np.asarray(Image.fromarray(array).resize((width, height), Image.NEAREST))
        out[key] = array
    return out


def iter_deliver_frames(root: str | Path, split: str = "test",
                        conditions: Sequence[str] | None = None) -> Iterator[dict]:
    """Every frame of a split as `read_deliver_frame` dicts (rgb, hha, event, lidar, label uint8,
    condition, sequence, frame), sorted by condition, sequence and frame."""
    for frame in find_deliver_frames(root, split, conditions):
        yield read_deliver_frame(frame)


class DeliverDataset(Dataset):
    """DELIVER as model samples (see data/dataset.py): images [M, 3, H, W] at `size`, RGB
    ImageNet-normalized, HHA / event / LiDAR scaled to [0, 1]; modalities not listed in
    `modalities` are absent slots (mask 0, zeros) and their files are not read."""

    def __init__(self, root: str | Path, split: str = "train", conditions: Sequence[str] | None = None,
                 size: tuple[int, int] = (1024, 1024), modalities: Sequence[str] = MODALITIES):
        unknown = sorted(set(modalities) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; known: {MODALITIES}")
        self.frames = find_deliver_frames(root, split, conditions)
        self.size = (int(size[0]), int(size[1]))
        self.modalities = tuple(modalities)
        self._keys = tuple(MODALITY_KEYS[m] for m in self.modalities) + ("label",)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Sample:
        frame = read_deliver_frame(self.frames[index], self._keys)
        images, mask = encode_images({m: frame.get(key) for m, key in MODALITY_KEYS.items()}, self.size,
                                     self.modalities)
        return {"images": images, "modality_mask": mask, "label": resize_label(frame["label"], self.size),
                "condition": frame["condition"]}


def write_deliver_fixture(root: str | Path, frames_per_condition: int = 1, size: tuple[int, int] = (64, 64),
                          seed: int = 0, splits: Sequence[str] = DELIVER_SPLITS,
                          conditions: Sequence[str] = DELIVER_CONDITIONS,
                          class_ids: Sequence[int] = range(1, DELIVER_NUM_CLASSES + 1)) -> Path:
    """Write a small folder in DELIVER's exact layout, for tests and examples.

    Each frame is four vertical bands of random classes, cut at multiples of 8 pixels (so `size`
    needs a width of at least 32); every modality carries the class in a
    way a model can learn (RGB colour, HHA value, LiDAR intensity, event edges at band borders),
    and a stripe of raw id 0 plus a few raw 255 pixels exercise the ignore remap. Semantic PNGs
    are RGB with the id in channel 0, like CARLA's. `class_ids` (raw ids 1..25) limits the classes
    drawn, so a handful of frames can cover them all. Returns `root`.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    class_colour = np.random.default_rng(1234).integers(0, 256, (DELIVER_NUM_CLASSES + 1, 3), dtype=np.uint8)
    index = 0
    for split in splits:
        for condition in conditions:
            for i in range(frames_per_condition):
                frame = DeliverFrame(root, condition, split, f"MAP_{i % 3 + 1}_point{i}", f"{index:06d}")
                index += 1
                cuts = np.sort(rng.choice(np.arange(1, width // 8) * 8, size=3, replace=False))
                ids = rng.choice(np.asarray(class_ids), size=4)
                raw = np.repeat(ids[np.searchsorted(cuts, np.arange(width), side="right")][None], height, 0)
                raw[: max(1, height // 16)] = 0
                raw[rng.integers(0, height, 5), rng.integers(0, width, 5)] = 255
                noise = rng.integers(-12, 13, (height, width, 3))
                gain = 0.4 if condition == "night" else 1.0
                rgb = np.clip(class_colour[np.minimum(raw, DELIVER_NUM_CLASSES)] * gain + noise, 0, 255)
                hha = np.repeat((np.minimum(raw, DELIVER_NUM_CLASSES) * 9)[:, :, None], 3, axis=2)
                lidar = np.zeros((height, width), np.uint8)
                rows = np.arange(0, height, 4)
                lidar[rows] = (255 - np.minimum(raw, DELIVER_NUM_CLASSES) * 8)[rows]
                event = np.zeros((height, width, 3), np.uint8)
                event[:, cuts] = (255, 0, 0)
                images = {"rgb": rgb, "hha": hha, "event": event, "lidar": lidar,
                          "label": np.stack([raw, np.zeros_like(raw), np.zeros_like(raw)], axis=2)}
                for key, array in images.items():
                    path = frame.path(key)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return root

