"""Evaluation results: confusion matrices per modality subset and condition, depth errors the
same way (models with the depth task), latency, health, the overlay mosaic, and their JSON
summary. Plain data shared by offline and live evaluation."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from sam_mmseg_ros.contracts import HEALTH_STATES, MODALITIES
from sam_mmseg_ros.eval.baselines import LayoutPrior
from sam_mmseg_ros.eval.metrics import ConfusionMatrix, DepthErrors
from sam_mmseg_ros.labels import CLASSES, NUM_CLASSES, overlay

FULL = "RGB-D-E-L"
PRIOR = "layout prior (no sensor)"
"""Row name of the sensor-free baseline (eval.baselines.LayoutPrior) in every report."""
NORMAL = "normal"
"""The case of a frame without a sensor failure (DELIVER's failure cases: data/deliver.py)."""
SUBSETS: dict[str, tuple[str, ...]] = {
    FULL: MODALITIES,
    "RGB": ("rgb",),
    "RGB-D": ("rgb", "depth"),
    "RGB-D-E": ("rgb", "depth", "event"),
    **{f"without {m}": tuple(x for x in MODALITIES if x != m) for m in MODALITIES if m != "rgb"},
}
"""Without RGB there is no output at all (the camera is the clock), so RGB is in every subset."""
MOSAIC_FRAMES = 8


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": int(a.size)}


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two RGB images with a white gap between: a mosaic tile (prediction | ground truth)."""
    gap = np.full((left.shape[0], max(2, left.shape[1] // 64), 3), 255, np.uint8)
    return np.hstack([left, gap, right])


def mosaic_tile(rgb: np.ndarray, pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Prediction over the camera image | ground truth over it."""
    return side_by_side(overlay(rgb, pred, alpha), overlay(rgb, gt, alpha))


@dataclass
class EvalResult:
    """Everything a report shows; plain data so it is written as JSON too."""

    source: str
    mode: str  # "offline", "live" or "DELIVER"
    model: dict = field(default_factory=dict)  # backend, precision, trained, checkpoint
    confusion: dict[str, ConfusionMatrix] = field(default_factory=dict)  # per subset
    per_condition: dict[str, dict[str, ConfusionMatrix]] = field(default_factory=dict)  # subset → cond
    per_case: dict[str, dict[str, ConfusionMatrix]] = field(default_factory=dict)  # subset → failure case
    depth: dict[str, DepthErrors] = field(default_factory=dict)  # per subset (depth models)
    depth_per_condition: dict[str, dict[str, DepthErrors]] = field(default_factory=dict)  # subset → cond
    depth_holes: dict[str, DepthErrors] = field(default_factory=dict)  # per subset: only where the
    # depth sensor gave no value (depth completion; without the sensor: the same pixels, for comparison)
    timings_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    latency_note: str = ""
    health_counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    timeline: list[dict] = field(default_factory=list)  # per scored frame: stamp, states, weights
    mosaic: list[np.ndarray] = field(default_factory=list)
    mosaic_titles: list[str] = field(default_factory=list)
    labels: dict[int, np.ndarray] | None = None  # stamp -> predicted labels, when kept
    frames: int = 0  # frames scored
    camera_frames: int = 0  # camera frames in the source
    dropped_frames: int | None = None  # camera frames that got no output (live)
    notes: list[str] = field(default_factory=list)
    layout_prior: LayoutPrior = field(default_factory=LayoutPrior)  # fitted on the scored frames, per condition

    def add(self, subset: str, condition: str, pred: np.ndarray, gt: np.ndarray, case: str = NORMAL) -> None:
        """Score one frame. `condition` may carry its sensor-failure case after a '/' (as bags'
        condition topic does); `case` is then taken from it."""
        condition, _, suffix = condition.partition("/")
        case = suffix or case
        self.confusion.setdefault(subset, ConfusionMatrix(NUM_CLASSES)).update(pred, gt)
        for breakdown, key in ((self.per_condition, condition), (self.per_case, case)):
            breakdown.setdefault(subset, {}).setdefault(key, ConfusionMatrix(NUM_CLASSES)).update(pred, gt)
        if subset == FULL:  # every frame is scored with the full set once
            self.layout_prior.update(gt, condition)

    def add_depth(self, subset: str, condition: str, pred: np.ndarray, gt: np.ndarray,
                  sensor_holes: np.ndarray | None = None) -> None:
        """Score a depth image (metres, NaN where none) against the ground truth; `sensor_holes`
        (bool, where the depth sensor had no value) also scores those pixels on their own."""
        self.depth.setdefault(subset, DepthErrors()).update(pred, gt)
        self.depth_per_condition.setdefault(subset, {}).setdefault(condition, DepthErrors()).update(pred, gt)
        if sensor_holes is not None:
            self.depth_holes.setdefault(subset, DepthErrors()).update(pred, gt, where=sensor_holes)

    def record_health(self, stamp_ns: int, health: dict) -> None:
        """`health`: modality -> (state, router weight)."""
        row = {"stamp_ns": int(stamp_ns)}
        for m, (state, weight) in health.items():
            self.health_counts[m][state] += 1
            row[m] = state
            row[f"{m}_weight"] = float(weight) if np.isfinite(weight) else 0.0
        self.timeline.append(row)

    def summary(self) -> dict:
        full = self.confusion.get(FULL)
        return {
            "source": self.source,
            "mode": self.mode,
            "model": self.model,
            "frames": self.frames,
            "camera_frames": self.camera_frames,
            "dropped_frames": self.dropped_frames,
            "miou": {s: _pct(cm.miou()) for s, cm in self.confusion.items()},
            "miou_per_condition": {s: {c: _pct(cm.miou()) for c, cm in sorted(d.items())}
                                   for s, d in self.per_condition.items()},
            "miou_per_case": {s: {c: _pct(cm.miou()) for c, cm in sorted(d.items())}
                              for s, d in self.per_case.items()},
            "pixel_accuracy": {s: _pct(cm.pixel_accuracy()) for s, cm in self.confusion.items()},
            "class_iou": ({c: _pct(v) for c, v in zip(CLASSES, full.iou(), strict=True)} if full else {}),
            "layout_prior": self.prior_summary(),
            "depth": {s: e.to_dict() for s, e in self.depth.items()},
            "depth_per_condition": {s: {c: e.to_dict() for c, e in sorted(d.items())}
                                    for s, d in self.depth_per_condition.items()},
            "depth_in_sensor_holes": {s: e.to_dict() for s, e in self.depth_holes.items()},
            "confusion_matrix": full.matrix.tolist() if full else [],
            "latency_ms": {k: percentiles(v) for k, v in self.timings_ms.items()},
            "latency_note": self.latency_note,
            "health_counts": {m: {s: int(c.get(s, 0)) for s in HEALTH_STATES} for m, c in self.health_counts.items()},
            "health_timeline": self.timeline,
            "notes": self.notes,
        }


    def prior_summary(self) -> dict:
        """The layout prior's scores on the same frames: overall and per condition."""
        prior = self.layout_prior
        if not prior.counts:
            return {}
        overall = prior.confusion()
        return {"miou": _pct(overall.miou()), "pixel_accuracy": _pct(overall.pixel_accuracy()),
                "miou_per_condition": {c: _pct(prior.confusion(c).miou()) for c in sorted(prior.counts)},
                "grid": list(prior.shape)}


def _pct(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(100.0 * float(value), 2)


def backend_info(backend) -> dict:
    meta = getattr(backend, "metadata", {}) or {}
    return {"backend": backend.name, "precision": backend.precision,
            "input_size": [int(v) for v in backend.input_shape[-2:]],
            "trained": bool(meta.get("trained", False)), "checkpoint": meta.get("checkpoint")}


def label_agreement(a: EvalResult, b: EvalResult) -> dict:
    """Fraction of pixels with the same label in the frames both results kept labels for."""
    if a.labels is None or b.labels is None:
        raise ValueError("label_agreement needs results evaluated with keep_labels=True")
    common = sorted(set(a.labels) & set(b.labels))
    same = sum(int(np.count_nonzero(a.labels[s] == b.labels[s])) for s in common)
    total = sum(a.labels[s].size for s in common)
    return {"frames_compared": len(common), "pixels_compared": total,
            "pixel_agreement": same / total if total else float("nan"),
            "identical_frames": sum(bool(np.array_equal(a.labels[s], b.labels[s])) for s in common)}
