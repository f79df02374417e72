"""Holes of a depth camera, drawn over a dense depth map: what the depth task learns to fill.

A real depth camera (active stereo or time of flight) returns no value where its signal is too
weak or ambiguous: beyond its working range (the returned light falls with distance squared), and
in patches on dark, shiny or transparent surfaces and at occlusion edges. The generator's depth
image is exact, so training (`train.py`, `depth_holes`) and test bags (`make-bag --depth-holes`)
draw those holes with this one model, keeping the exact depth as the ground truth:

- a working range drawn per frame, uniform in RANGE_M: farther pixels have no value;
- up to MAX_PATCHES elliptical patches per frame, each covering up to PATCH_AREA of the image.
"""

from __future__ import annotations

import numpy as np

RANGE_M = (20.0, 60.0)
MAX_PATCHES = 3
PATCH_AREA = (0.01, 0.06)


def depth_hole_mask(depth_m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """bool [H, W]: where the depth camera gives no value, for a frame whose true depth (metres,
    0 or non-finite where unknown) is `depth_m`."""
    depth = np.asarray(depth_m, np.float32)
    height, width = depth.shape
    with np.errstate(invalid="ignore"):
        holes = ~(depth <= rng.uniform(*RANGE_M))
    rows, cols = np.ogrid[:height, :width]
    for _ in range(int(rng.integers(0, MAX_PATCHES + 1))):
        area = rng.uniform(*PATCH_AREA) * height * width
        aspect = rng.uniform(0.5, 2.0)
        semi_h, semi_w = np.sqrt(area / np.pi / aspect), np.sqrt(area * aspect / np.pi)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        holes |= ((rows - cy) / semi_h) ** 2 + ((cols - cx) / semi_w) ** 2 <= 1.0
    return holes
