"""Sensor-free baselines every report shows next to the model.

The layout prior predicts, at every pixel position, the class found there most often, without
looking at any sensor. It is fitted on the evaluated frames themselves, so it is an upper bound
for anything that knows only where things usually are in the picture: a model that scores
little above it has learned the layout of the scenes, not to see.
"""

from __future__ import annotations

import numpy as np

from sam_mmseg_ros.eval.metrics import ConfusionMatrix
from sam_mmseg_ros.labels import NUM_CLASSES
from sam_mmseg_ros.pipeline import resize_nearest


class LayoutPrior:
    """Per-pixel class counts of the ground truth, kept per group (a condition, a distance band,
    ...), from which the majority-class map over all groups and its confusion matrix per group
    follow exactly, in one pass over the data.

    Every frame is sampled (nearest neighbour) on one grid: the first frame's, shrunk to at most
    `max_side` pixels a side, as a model input is one fixed size whatever the camera; the scores
    are those of the sampled pixels."""

    def __init__(self, num_classes: int = NUM_CLASSES, max_side: int = 192):
        self.num_classes = num_classes
        self.max_side = max_side
        self.shape: tuple[int, int] | None = None
        self.counts: dict[str, np.ndarray] = {}  # group -> [H*W, C] int32

    def update(self, gt: np.ndarray, group: str = "all", mask: np.ndarray | None = None) -> None:
        """Count the labelled pixels of `gt` (those in `mask`, when given) for `group`."""
        gt = np.asarray(gt)
        if self.shape is None:
            scale = min(1.0, self.max_side / max(gt.shape[:2]))
            self.shape = (max(1, round(gt.shape[0] * scale)), max(1, round(gt.shape[1] * scale)))
        if gt.shape[:2] != self.shape:
            gt = resize_nearest(gt, *self.shape)
            mask = None if mask is None else resize_nearest(mask, *self.shape)
        flat = gt.ravel().astype(np.int64)
        keep = (flat >= 0) & (flat < self.num_classes)
        if mask is not None:
            keep &= np.asarray(mask, bool).ravel()
        counts = self.counts.setdefault(group, np.zeros((flat.size, self.num_classes), np.int32))
        pixels = np.flatnonzero(keep)
        np.add.at(counts, (pixels, flat[pixels]), 1)

    def prediction(self, groups: list[str] | None = None) -> np.ndarray:
        """The majority-class map [H, W] over `groups` (default: every group counted)."""
        if self.shape is None:
            raise ValueError("the layout prior has seen no frame")
        total = sum(self.counts[g].astype(np.int64) for g in (groups or list(self.counts)))
        return total.argmax(axis=1).reshape(self.shape)

    def confusion(self, groups: str | list[str] | None = None, fit_groups: list[str] | None = None) -> ConfusionMatrix:
        """Confusion matrix of the majority map (fitted on `fit_groups`, default all) on the frames
        counted for `groups` (one name, a list, default all)."""
        predicted = self.prediction(fit_groups).ravel()
        names = list(self.counts) if groups is None else [groups] if isinstance(groups, str) else groups
        matrix = ConfusionMatrix(self.num_classes)
        for name in names:
            if name in self.counts:
                np.add.at(matrix.matrix, (slice(None), predicted), self.counts[name].T.astype(np.int64))
        return matrix
