"""`sam-mmseg paired-eval`: the same streets under every condition, through the node's stages.

Each street (a seed) is rendered under every condition with the same vehicle and the same
traffic, so a difference between two conditions is the condition's, not the street's. Every
frame goes through the node's own encode -> infer stages (`ingest.OfflineNode`'s pipeline, the
node's parameter file) once per modality subset. Results come by condition, by illumination band
(the luminance reaching the camera at each pixel) and by distance band (the true range at each
pixel), with the router's weights per condition and the layout prior (`eval.baselines`, fitted
on these frames) in every table; `targets` checks the fusion targets of docs/RESULTS.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sam_mmseg_ros.contracts import MODALITIES
from sam_mmseg_ros.eval.baselines import LayoutPrior
from sam_mmseg_ros.eval.metrics import ConfusionMatrix
from sam_mmseg_ros.eval.results import FULL, PRIOR, SUBSETS, backend_info
from sam_mmseg_ros.labels import NUM_CLASSES

log = logging.getLogger(__name__)

ILLUMINATION_BANDS: tuple[tuple[str, float, float], ...] = (
    ("< 0.1 cd/m2", 0.0, 0.1), ("0.1-1 cd/m2", 0.1, 1.0), ("1-10 cd/m2", 1.0, 10.0),
    ("10-100 cd/m2", 10.0, 100.0), ("> 100 cd/m2", 100.0, np.inf))
"""Luminance reaching the camera: below 0.1 cd/m2 a night camera at full gain counts about one
photoelectron per pixel and frame; a sunlit street is 1000-10000."""
DISTANCE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("< 10 m", 0.0, 10.0), ("10-20 m", 10.0, 20.0), ("20-40 m", 20.0, 40.0), ("> 40 m", 40.0, np.inf),
    ("sky", -1.0, 0.0))
"""True range from the camera; "sky" is where nothing was hit."""
TARGET_CONDITIONS = ("night", "fog")


@dataclass
class PairedResult:
    """Confusion matrices keyed by (subset, condition) and (subset, condition, band kind, band),
    the layout prior per group, and mean router weights per condition."""

    model: dict
    streets: list[int]
    frames_per_street: int
    size: tuple[int, int]
    conditions: tuple[str, ...]
    subsets: tuple[str, ...]
    confusion: dict[tuple, ConfusionMatrix] = field(default_factory=dict)
    prior: LayoutPrior = field(default_factory=lambda: LayoutPrior(max_side=128))
    router_sums: dict[str, np.ndarray] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, key: tuple, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> None:
        cm = self.confusion.setdefault(key, ConfusionMatrix(NUM_CLASSES))
        if mask is None:
            cm.update(pred, gt)
        else:
            cm.update(pred[mask], gt[mask])

    def miou(self, subset: str, condition: str | None = None, band: tuple[str, str] | None = None) -> float | None:
        """mIoU (%) of a subset (or PRIOR) over one condition (None: all) and band (kind, name)."""
        conditions = self.conditions if condition is None else (condition,)
        if subset == PRIOR:
            groups = [_group(c, band) for c in conditions]
            matrix = self.prior.confusion([g for g in groups if g in self.prior.counts],
                                          fit_groups=list(self.conditions))
        else:
            matrix = ConfusionMatrix(NUM_CLASSES)
            for c in conditions:
                key = (subset, c) if band is None else (subset, c, *band)
                if key in self.confusion:
                    matrix.merge(self.confusion[key])
        value = matrix.miou()
        return None if not np.isfinite(value) else round(100.0 * value, 2)

    def router_weights(self, condition: str) -> list[float]:
        return (self.router_sums[condition] / max(self.frames[condition], 1)).round(4).tolist()

    def summary(self) -> dict:
        rows = list(self.subsets) + [PRIOR]
        bands = {"illumination": ILLUMINATION_BANDS, "distance": DISTANCE_BANDS}
        return {
            "model": self.model, "streets": self.streets, "frames_per_street": self.frames_per_street,
            "size": list(self.size), "conditions": list(self.conditions), "seconds": round(self.seconds, 1),
            "frames_per_condition": self.frames,
            "miou": {s: self.miou(s) for s in rows},
            "miou_per_condition": {s: {c: self.miou(s, c) for c in self.conditions} for s in rows},
            "miou_per_band": {kind: {s: {c: {name: self.miou(s, c, (kind, name)) for name, *_ in table}
                                         for c in self.conditions} for s in rows}
                              for kind, table in bands.items()},
            "router_weights": {c: dict(zip(MODALITIES, self.router_weights(c), strict=True)) for c in self.conditions},
        }


def _group(condition: str, band: tuple[str, str] | None) -> str:
    return condition if band is None else f"{condition}|{band[0]}|{band[1]}"


def _band_masks(values: np.ndarray, table) -> dict[str, np.ndarray]:
    return {name: (values >= lo) & (values < hi) for name, lo, hi in table}


def evaluate_paired(backend, streets: Sequence[int], conditions: Sequence[str], frames_per_street: int = 2,
                    size: tuple[int, int] = (256, 256), subsets: dict[str, tuple[str, ...]] = SUBSETS,
                    params_file: str | Path | None = None, progress: bool = True) -> PairedResult:
    """Render every street under every condition (`size` = (width, height)) and score each frame
    with every modality subset through the node's stages."""
    from tqdm import tqdm

    from sam_mmseg_ros.data.synthetic import SequenceConfig, generate_sequence
    from sam_mmseg_ros.ingest import OfflineNode
    from sam_mmseg_ros.node_settings import NodeSettings

    width, height = size
    subsets = {FULL: MODALITIES, **subsets}
    node = OfflineNode(backend, NodeSettings.from_file(params_file, {"event_sensor_size": [width, height]}))
    result = PairedResult(backend_info(backend), list(streets), frames_per_street, (width, height), tuple(conditions),
                          tuple(subsets))
    started = time.monotonic()
    bar = tqdm(total=len(streets) * len(conditions) * frames_per_street, desc=f"paired eval, {len(subsets)} subsets",
               unit="frame", disable=not progress)
    sequence = 0
    for street in streets:
        for condition in conditions:
            # Every sequence later in time than the last: the health monitor sees a steady clock.
            config = SequenceConfig(width=width, height=height, num_frames=frames_per_street, condition=condition,
                                    seed=street, start_ns=SequenceConfig.start_ns + sequence * 10**10)
            sequence += 1
            for frame in generate_sequence(config):
                full = node.pipeline.run(frame.to_bundle(), frame.stamp_ns, frame.T_camera_lidar, paint=False)
                labels = {name: full.labels if name == FULL else node.pipeline.outputs_with_only(keep)[0]
                          for name, keep in subsets.items()}
                _score(result, condition, frame, labels)
                result.router_sums[condition] = result.router_sums.get(condition, 0.0) + full.router_weights
                result.frames[condition] = result.frames.get(condition, 0) + 1
                bar.update(1)
    bar.close()
    result.seconds = time.monotonic() - started
    return result


def _score(result: PairedResult, condition: str, frame, labels: dict[str, np.ndarray]) -> None:
    gt = frame.labels
    xn, yn = frame.camera.pixel_rays()
    distance = np.where(frame.depth_true > 0, frame.depth_true * np.sqrt(1 + xn**2 + yn**2), -0.5)
    masks = {("illumination", name): m for name, m in _band_masks(frame.luminance, ILLUMINATION_BANDS).items()}
    masks.update({("distance", name): m for name, m in _band_masks(distance, DISTANCE_BANDS).items()})
    for subset, pred in labels.items():
        result.add((subset, condition), pred, gt)
        for band, mask in masks.items():
            if mask.any():
                result.add((subset, condition, *band), pred, gt, mask)
    result.prior.update(gt, condition)
    for band, mask in masks.items():
        result.prior.update(gt, _group(condition, band), mask)


# ---------------------------------------------------------------------------------------------
# Targets and the report


def targets(summary: dict) -> list[dict]:
    """The fusion targets of docs/RESULTS.md, each with its measured value and whether it is met."""
    per = summary["miou_per_condition"]
    rows = []
    for condition in TARGET_CONDITIONS:
        if condition in summary["conditions"]:
            gain = _diff(per[FULL][condition], per["RGB"][condition])
            rows.append({"target": f"{FULL} >= RGB + 10 mIoU, {condition}", "value": gain, "unit": "points",
                         "met": gain is not None and gain >= 10.0})
    for m in MODALITIES[1:]:
        name = f"without {m}"
        if name in summary["miou"]:
            cost = _diff(summary["miou"][FULL], summary["miou"][name])
            rows.append({"target": f"removing {m} costs <= 3 points (all frames)", "value": cost, "unit": "points",
                         "met": cost is not None and cost <= 3.0})
    worst = None
    for subset in summary["miou_per_condition"]:
        if subset in (FULL, PRIOR):
            continue
        for condition in summary["conditions"]:
            shortfall = _diff(per[subset][condition], per[FULL][condition])
            if shortfall is not None and (worst is None or shortfall > worst[0]):
                worst = (shortfall, subset, condition)
    if worst:
        rows.append({"target": f"{FULL} not below any subset in any condition by > 0.5 "
                               f"(worst: {worst[1]}, {worst[2]})", "value": worst[0], "unit": "points",
                     "met": worst[0] <= 0.5})
    weights = summary["router_weights"]
    if "night" in weights and "sun" in weights:
        ratio = weights["night"]["rgb"] / max(weights["sun"]["rgb"], 1e-9)
        rows.append({"target": "router's RGB weight at night <= half of its weight in sun", "value": round(ratio, 3),
                     "unit": "x sun", "met": ratio <= 0.5})
    prior = summary["miou"][PRIOR]
    rows.append({"target": "layout prior <= 15 mIoU", "value": prior, "unit": "%", "met": prior is not None
                 and prior <= 15.0})
    if "sun" in summary["conditions"]:
        sun = per["RGB"]["sun"]
        rows.append({"target": "RGB in sun >= 45 mIoU", "value": sun, "unit": "%", "met": sun is not None
                     and sun >= 45.0})
    return rows


def _diff(a, b):
    return None if a is None or b is None else round(a - b, 2)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def render_markdown(summary: dict, figures: Sequence[str] = ()) -> str:
    conditions = summary["conditions"]
    streets = summary["streets"]
    lines = [f"Streets {streets[0]}-{streets[-1]} ({len(streets)} streets, seeds not used in training), "
             f"{summary['frames_per_street']} frames each under every condition, "
             f"{summary['size'][0]}x{summary['size'][1]} cameras; each street keeps its vehicle "
             f"(camera height, pitch, roll, field of view) in every condition. Model: "
             f"{summary['model'].get('checkpoint') or summary['model'].get('backend')}. "
             f"{summary['seconds']:.0f} s.", "", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for row in targets(summary):
        lines.append(f"| {row['target']} | {_fmt(row['value'])} {row['unit']} | {'yes' if row['met'] else '**no**'} |")
    lines += ["", "### mIoU (%) per condition and modality subset", "",
              "| subset | all | " + " | ".join(conditions) + " |", "|---|---|" + "---|" * len(conditions)]
    for subset, per in summary["miou_per_condition"].items():
        lines.append(f"| {subset} | {_fmt(summary['miou'][subset])} | " + " | ".join(_fmt(per[c]) for c in conditions)
                     + " |")
    lines += ["", f"### Gain of {FULL} over RGB (points) per condition", "",
              "| | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions),
              "| gain | " + " | ".join(_fmt(_diff(summary["miou_per_condition"][FULL][c],
                                                  summary["miou_per_condition"]["RGB"][c])) for c in conditions) + " |"]
    lines += ["", "### Router weights per condition (mean over frames; spatial routers: mean over the image)", "",
              "| condition | " + " | ".join(MODALITIES) + " |", "|---|" + "---|" * len(MODALITIES)]
    for c in conditions:
        lines.append(f"| {c} | " + " | ".join(f"{summary['router_weights'][c][m]:.3f}" for m in MODALITIES) + " |")
    for kind, title in (("illumination", "illumination band (luminance reaching the camera)"),
                        ("distance", "distance band (true range)")):
        per_band = summary["miou_per_band"][kind]
        bands = [name for name, *_ in (ILLUMINATION_BANDS if kind == "illumination" else DISTANCE_BANDS)]
        lines += ["", f"### mIoU (%) by {title}: RGB | {FULL} | {PRIOR}", "",
                  "| condition | " + " | ".join(bands) + " |", "|---|" + "---|" * len(bands)]
        for c in conditions:
            cells = [" / ".join(_fmt(per_band[s][c][b]) for s in ("RGB", FULL, PRIOR)) for b in bands]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if figures:
        lines += [""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def write_paired_report(result: PairedResult, out_dir: str | Path) -> dict:
    """paired_metrics.json, paired_report.md and the PNGs in `out_dir`; returns the summary."""
    from sam_mmseg_ros.eval import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    summary["targets"] = targets(summary)
    figures = [plots.plot_router_weights(summary["router_weights"], MODALITIES, out / "router_weights.png").name,
               plots.plot_condition_miou(summary["miou_per_condition"], ["RGB", FULL, PRIOR],
                                         summary["conditions"], out / "miou_per_condition.png").name]
    (out / "paired_metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "paired_report.md").write_text(render_markdown(summary, figures))
    return summary


# ---------------------------------------------------------------------------------------------
# CLI


def configure_parser(parser) -> None:
    from sam_mmseg_ros.data.bags import parse_size
    from sam_mmseg_ros.data.synthetic import CONDITIONS

    parser.description = ("Render the same synthetic streets under every condition and score them with every "
                          "modality subset through the node's stages: results by condition, illumination and "
                          "distance band, router weights, the layout prior, and the fusion targets.")
    parser.add_argument("--out", default="paired_eval", help="report folder")
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped model)")
    parser.add_argument("--streets", type=int, default=30, help="number of streets")
    parser.add_argument("--seed", type=int, default=9000, help="first street seed (training uses 0 to a few "
                        "thousand and 10^11 upwards for validation)")
    parser.add_argument("--frames", type=int, default=2, help="frames per street and condition")
    parser.add_argument("--size", type=parse_size, default=(256, 256), help="camera size WxH")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated conditions")
    parser.add_argument("--params-file", default=None, help="node parameters YAML (default: the shipped one)")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from sam_mmseg_ros.engine import create_backend

    backend = create_backend("torch", checkpoint=args.checkpoint, device="cpu", precision="fp32")
    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    result = evaluate_paired(backend, range(args.seed, args.seed + args.streets), conditions, args.frames, args.size,
                             params_file=args.params_file, progress=not args.no_progress)
    summary = write_paired_report(result, args.out)
    for row in summary["targets"]:
        log.info("%-70s %8s %s  %s", row["target"], _fmt(row["value"]), row["unit"], "met" if row["met"] else "MISSED")
    log.info("report: %s", Path(args.out) / "paired_report.md")
    return 0
