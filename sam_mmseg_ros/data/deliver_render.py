"""DELIVER-style files of a synthetic frame: what DELIVER's data collection would have written for
the same scene, in DELIVER's folder layout and file formats.

The synthetic generator has the raw data (metric depth, the event stream, the LiDAR cloud), so
one frame can go both ways: live, as a FrameBundle through the node's `preprocess`, and through
files, as training on DELIVER reads them (`DeliverDataset`). Comparing the two (test_deliver_drift)
is what catches the node's DELIVER-style encoders drifting from DELIVER's formats, so this module
renders the files from the formats' definitions (data/deliver.py, sensors/events.py and
sensors/lidar.py say what is known and what is assumed), not through the node's encoders:
- img: the RGB image as is;
- depth: CARLA's 24-bit depth encoding, no return (the sky) at the far plane;
- event: CARLA's DVS drawing, `image[y, x, polarity * 2] = 255`, at the event sensor's resolution;
- lidar: each point's range from the LiDAR, in whole metres 1..100, on the pixel its pinhole
  projection lands on (the nearest point wins), 0 elsewhere, one grey channel;
- semantic: DELIVER's raw ids (class + 1) in channel 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sam_mmseg_ros.data.deliver import DeliverFrame, encode_depth_png


def render_deliver_images(frame) -> dict[str, np.ndarray]:
    """uint8 images of a `SyntheticFrame` by DELIVER file key (rgb, depth, event, lidar, label)."""
    events = frame.events
    event = np.zeros((events.height, events.width, 3), np.uint8)
    event[np.asarray(events.y), np.asarray(events.x), (np.asarray(events.polarity) > 0) * 2] = 255
    labels = frame.labels.astype(np.uint8) + 1
    return {"rgb": frame.rgb, "depth": encode_depth_png(np.where(frame.depth > 0, frame.depth, np.nan)),
            "event": event, "lidar": _lidar_image(frame),
            "label": np.stack([labels, np.zeros_like(labels), np.zeros_like(labels)], axis=2)}


def _lidar_image(frame) -> np.ndarray:
    """Pinhole projection of the cloud (the synthetic camera has no distortion)."""
    camera = frame.camera
    xyz = np.asarray(frame.lidar.xyz, np.float64)
    in_camera = xyz @ frame.T_camera_lidar[:3, :3].T + frame.T_camera_lidar[:3, 3]
    z = in_camera[:, 2]
    front = z > 0.1
    u = camera.fx * in_camera[front, 0] / z[front] + camera.cx
    v = camera.fy * in_camera[front, 1] / z[front] + camera.cy
    col, row = np.floor(u + 0.5).astype(np.int64), np.floor(v + 0.5).astype(np.int64)
    ranges = np.linalg.norm(xyz[front], axis=1)
    keep = (col >= 0) & (col < camera.width) & (row >= 0) & (row < camera.height) & (ranges < 100.5)
    pixel, value = row[keep] * camera.width + col[keep], np.clip(np.rint(ranges[keep]), 1, 100)
    order = np.lexsort((value, pixel))  # by pixel, nearest first
    first = np.unique(pixel[order], return_index=True)[1]
    image = np.zeros(camera.height * camera.width, np.uint8)
    image[pixel[order][first]] = value[order][first]
    return image.reshape(camera.height, camera.width)


def write_deliver_frame(images: dict[str, np.ndarray], root: str | Path, condition: str, split: str,
                        sequence: str, name: str) -> DeliverFrame:
    """Write `render_deliver_images` output into DELIVER's layout; returns where it went."""
    frame = DeliverFrame(Path(root), condition, split, sequence, name)
    for key, array in images.items():
        path = frame.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
    return frame
