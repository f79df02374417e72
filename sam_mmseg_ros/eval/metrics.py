"""Segmentation metrics from one accumulated confusion matrix (the usual mIoU definition: IoU per
class over the whole set, then the mean over classes that occur), so frame order and frame size
do not change the result and partial results merge exactly. Depth metrics (`DepthErrors`) are
accumulated the same way: sums over every scored pixel of the set."""

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


DEPTH_EVAL_MAX_M = 80.0
"""Depth is scored where the ground truth lies in (0, 80] m, the cap of the usual driving
protocol (Eigen et al.'s KITTI split): farther pixels are a few metres of street apart in pixels,
and their absolute error would dominate RMSE."""


class DepthErrors:
    """AbsRel = mean |d - d*| / d*, RMSE = sqrt(mean (d - d*)^2) in metres and delta1 = the fraction
    of pixels with max(d / d*, d* / d) < 1.25, over every scored pixel of the set: ground truth d*
    in (0, max_depth_m] and a finite positive prediction d (a non-finite or non-positive prediction
    is scored as missing, counted in `missing`, never as an error of some size)."""

    def __init__(self, max_depth_m: float = DEPTH_EVAL_MAX_M):
        self.max_depth_m = float(max_depth_m)
        self.count = 0
        self.missing = 0
        self._abs_rel = 0.0
        self._squared = 0.0
        self._delta1 = 0

    def update(self, pred: np.ndarray, gt: np.ndarray, where: np.ndarray | None = None) -> DepthErrors:
        """pred and gt float [H, W] metres; `where` (bool [H, W]) limits the scored pixels further
        (e.g. to the depth sensor's holes)."""
        pred = np.asarray(pred, np.float64)
        gt = np.asarray(gt, np.float64)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
        with np.errstate(invalid="ignore"):
            scored = np.isfinite(gt) & (gt > 0) & (gt <= self.max_depth_m)
            if where is not None:
                scored &= np.asarray(where, bool)
            usable = scored & np.isfinite(pred) & (pred > 0)
        d, t = pred[usable], gt[usable]
        self.count += int(d.size)
        self.missing += int(np.count_nonzero(scored)) - int(d.size)
        self._abs_rel += float(np.sum(np.abs(d - t) / t))
        self._squared += float(np.sum((d - t) ** 2))
        self._delta1 += int(np.count_nonzero(np.maximum(d / t, t / d) < 1.25))
        return self

    def merge(self, other: DepthErrors) -> DepthErrors:
        self.count += other.count
        self.missing += other.missing
        self._abs_rel += other._abs_rel
        self._squared += other._squared
        self._delta1 += other._delta1
        return self

    def abs_rel(self) -> float:
        return self._abs_rel / self.count if self.count else float("nan")

    def rmse(self) -> float:
        return float(np.sqrt(self._squared / self.count)) if self.count else float("nan")

    def delta1(self) -> float:
        return self._delta1 / self.count if self.count else float("nan")

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes None."""
        def clean(x: float):
            return None if not np.isfinite(x) else float(x)

        return {"abs_rel": clean(self.abs_rel()), "rmse_m": clean(self.rmse()), "delta1": clean(self.delta1()),
                "pixels": self.count, "missing_predictions": self.missing, "max_depth_m": self.max_depth_m}
