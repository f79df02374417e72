"""Segmentation metrics from one accumulated confusion matrix (the usual mIoU definition: IoU per
class over the whole set, then the mean over classes that occur), so frame order and frame size
do not change the result and partial results merge exactly."""

from __future__ import annotations

import numpy as np

from sam_mmseg_ros.contracts import IGNORE_LABEL


class ConfusionMatrix:
    """`matrix[g, p]` counts pixels of ground-truth class g predicted as p. Pixels whose ground
    truth is `ignore_index` (or outside [0, num_classes)) are not counted; a prediction outside
    [0, num_classes) counts as a miss of its ground-truth class and a hit of no class."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_LABEL):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.unassigned = np.zeros(self.num_classes, np.int64)  # per gt class: predicted out of range

    def update(self, pred: np.ndarray, gt: np.ndarray) -> ConfusionMatrix:
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
        n = self.num_classes
        gt = gt.ravel().astype(np.int64)
        pred = pred.ravel().astype(np.int64)
        scored = (gt != self.ignore_index) & (gt >= 0) & (gt < n)
        gt, pred = gt[scored], pred[scored]
        pred = np.where((pred >= 0) & (pred < n), pred, n)  # column n: no valid class
        counts = np.bincount(gt * (n + 1) + pred, minlength=n * (n + 1)).reshape(n, n + 1)
        self.matrix += counts[:, :n]
        self.unassigned += counts[:, n]
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class into {self.num_classes}-class matrix")
        self.matrix += other.matrix
        self.unassigned += other.unassigned
        return self

    @property
    def total(self) -> int:
        return int(self.matrix.sum() + self.unassigned.sum())

    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (TP + FP + FN); NaN for a class in neither prediction nor truth."""
        tp = np.diag(self.matrix).astype(np.float64)
        gt_total = self.matrix.sum(axis=1) + self.unassigned
        pred_total = self.matrix.sum(axis=0)
        union = gt_total + pred_total - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over classes that occur (NaN if none does)."""
        iou = self.iou()
        if np.all(np.isnan(iou)):
            return float("nan")
        return float(np.nanmean(iou))

    def pixel_accuracy(self) -> float:
        total = self.total
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def to_dict(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict:
        """JSON-ready: NaN becomes None."""
        def clean(x: float):
            return None if not np.isfinite(x) else float(x)

        iou = self.iou()
        out = {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "pixels": self.total,
            "miou": clean(self.miou()),
            "pixel_accuracy": clean(self.pixel_accuracy()),
            "iou": [clean(v) for v in iou],
            "matrix": self.matrix.tolist(),
            "unassigned": self.unassigned.tolist(),
        }
        if class_names is not None:
            out["class_iou"] = {name: clean(v) for name, v in zip(class_names, iou, strict=True)}
        return out
