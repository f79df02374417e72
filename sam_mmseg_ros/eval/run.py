"""`sam-mmseg eval`: score segmentation on a rosbag2 or a DELIVER folder, write a report.

A bag is evaluated by the node's own stages in bag order: `ingest.FrameFeeder` does what the
node's callbacks do (decode → health → assemble) and `pipeline.SegmentationPipeline` what its
worker does (encode → infer → postprocess), configured from the node's parameter file, so the
labels are the ones the node publishes for the same bag (`--live` checks exactly that). Each
modality subset runs the same assembled frame with the other modalities removed, as when those
sensors fail on the vehicle. Everything is deterministic: the clock is the bag's record time.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sam_mmseg_ros.contracts import (
    CONDITION_TOPIC,
    GROUND_TRUTH_TOPIC,
    HEALTH_STATES,
    MODALITIES,
)
from sam_mmseg_ros.eval.metrics import ConfusionMatrix
from sam_mmseg_ros.labels import CLASSES, NUM_CLASSES, overlay

log = logging.getLogger(__name__)

FULL = "RGB-D-E-L"
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

    def add(self, subset: str, condition: str, pred: np.ndarray, gt: np.ndarray) -> None:
        self.confusion.setdefault(subset, ConfusionMatrix(NUM_CLASSES)).update(pred, gt)
        per = self.per_condition.setdefault(subset, {})
        per.setdefault(condition, ConfusionMatrix(NUM_CLASSES)).update(pred, gt)

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
            "pixel_accuracy": {s: _pct(cm.pixel_accuracy()) for s, cm in self.confusion.items()},
            "class_iou": ({c: _pct(v) for c, v in zip(CLASSES, full.iou(), strict=True)} if full else {}),
            "confusion_matrix": full.matrix.tolist() if full else [],
            "latency_ms": {k: percentiles(v) for k, v in self.timings_ms.items()},
            "latency_note": self.latency_note,
            "health_counts": {m: {s: int(c.get(s, 0)) for s in HEALTH_STATES} for m, c in self.health_counts.items()},
            "health_timeline": self.timeline,
            "notes": self.notes,
        }


def _pct(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(100.0 * float(value), 2)


def backend_info(backend) -> dict:
    meta = getattr(backend, "metadata", {}) or {}
    return {"backend": backend.name, "precision": backend.precision,
            "input_size": [int(v) for v in backend.input_shape[-2:]],
            "trained": bool(meta.get("trained", False)), "checkpoint": meta.get("checkpoint")}


# ------------------------------------------------------------------------------------ bags


def count_messages(path: str | Path, topic: str) -> int:
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        return sum(c.msgcount for c in reader.connections if c.topic == topic)


def read_ground_truth(path: str | Path) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Ground-truth labels by camera stamp and conditions by record time, read from the bag."""
    from sam_mmseg_ros.data.bags import read_bag
    from sam_mmseg_ros.ros.convert import image_to_numpy, stamp_to_ns

    truth, condition = {}, {}
    for topic, stamp_ns, _msgtype, msg in read_bag(path, [GROUND_TRUTH_TOPIC, CONDITION_TOPIC]):
        if topic == GROUND_TRUTH_TOPIC:
            truth[stamp_to_ns(msg.header.stamp)] = np.array(image_to_numpy(msg).array, np.uint8)
        else:
            condition[stamp_ns] = str(msg.data)
    return truth, condition


def evaluate_bag(path: str | Path, backend, params_file: str | Path | None = None, overrides: dict | None = None,
                 subsets: dict[str, tuple[str, ...]] = SUBSETS, progress: bool = True,
                 max_frames: int | None = None, keep_labels: bool = False) -> EvalResult:
    """One pass over the bag: every camera frame is assembled and encoded once, as the node does,
    then inferred once per modality subset with the removed modalities masked out. Health,
    latency and the timeline come from the full set."""
    from tqdm import tqdm

    from sam_mmseg_ros.contracts import BAG_TOPICS
    from sam_mmseg_ros.data.bags import read_bag
    from sam_mmseg_ros.ingest import build_offline_pipeline, topic_kinds
    from sam_mmseg_ros.ros.convert import image_to_numpy, stamp_to_ns

    subsets = {FULL: MODALITIES, **subsets}  # health and latency come from the full set
    feeder, pipeline = build_offline_pipeline(backend, params_file, overrides)
    kinds = topic_kinds(BAG_TOPICS)
    result = EvalResult(source=str(path), mode="offline", model=backend_info(backend),
                        labels={} if keep_labels else None)
    result.camera_frames = count_messages(path, BAG_TOPICS["rgb"])
    result.latency_note = ("offline, per stage, measured in this process (no DDS); "
                           "'assemble' = decode the camera image + assemble the frame")
    total = result.camera_frames if max_frames is None else min(max_frames, result.camera_frames)
    mosaic_every = max(1, total // MOSAIC_FRAMES)
    truth: dict[int, np.ndarray] = {}
    condition: dict[int, str] = {}
    pending: dict[int, tuple[dict[str, np.ndarray], np.ndarray | None]] = {}
    bar = tqdm(total=total, desc=f"eval {len(subsets)} subsets", unit="frame", disable=not progress)
    for topic, stamp_ns, _msgtype, msg in read_bag(path):
        if topic == GROUND_TRUTH_TOPIC:
            truth[stamp_to_ns(msg.header.stamp)] = np.array(image_to_numpy(msg).array, np.uint8)
        elif topic == CONDITION_TOPIC:
            condition[stamp_ns] = str(msg.data)
        elif topic in kinds:
            t0 = time.perf_counter()
            bundle = feeder.feed(kinds[topic], msg, now_ns=stamp_ns)
            if bundle is None:
                continue
            assemble_ms = (time.perf_counter() - t0) * 1e3
            full = pipeline.run(bundle, stamp_ns, paint=False)
            labels = {name: full.labels if name == FULL else pipeline.labels_with_only(keep)
                      for name, keep in subsets.items()}
            result.timings_ms["assemble"].append(assemble_ms)
            for stage, ms in full.timings_ms.items():
                result.timings_ms[stage].append(ms)
            result.record_health(bundle.stamp_ns, {m: (h.state, h.router_weight) for m, h in full.health.items()})
            pending[bundle.stamp_ns] = (labels, full.rgb)
        for stamp in [s for s in pending if s in truth]:
            labels, rgb = pending.pop(stamp)
            gt = truth.pop(stamp)
            cond = condition.get(stamp, "unknown")
            for name, pred in labels.items():
                result.add(name, cond, pred, gt)
            if keep_labels:
                result.labels[stamp] = labels[FULL]
            if result.frames % mosaic_every == 0 and len(result.mosaic) < MOSAIC_FRAMES and rgb is not None:
                result.mosaic.append(mosaic_tile(rgb, labels[FULL], gt))
                result.mosaic_titles.append(f"{cond}, frame {result.frames}")
            result.frames += 1
            bar.update(1)
        if max_frames is not None and result.frames >= max_frames:
            break
    bar.close()
    if pending:
        result.notes.append(f"{len(pending)} camera frames had no ground truth and were not scored")
    for kind, reason in feeder.input_errors.items():
        result.notes.append(f"{kind} input problem (last seen): {reason}")
    return result


def evaluate_deliver(root: str | Path, backend, split: str = "test", subsets: dict[str, tuple[str, ...]] = SUBSETS,
                     progress: bool = True, max_frames: int | None = None) -> EvalResult:
    """DELIVER frames are already encoded images (HHA, event and LiDAR renderings): only the model
    stage of the node applies, on the DELIVER encoding the model was trained on."""
    from tqdm import tqdm

    from sam_mmseg_ros.data.deliver import DeliverDataset

    size = tuple(int(v) for v in backend.input_shape[-2:])
    dataset = DeliverDataset(root, split=split, size=size)
    result = EvalResult(source=str(root), mode="DELIVER", model=backend_info(backend))
    result.latency_note = "model only (DELIVER frames are pre-encoded images)"
    count = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    mosaic_every = max(1, count // MOSAIC_FRAMES)
    subsets = {FULL: MODALITIES, **subsets}
    for i in tqdm(range(count), desc=f"eval DELIVER {split}", unit="frame", disable=not progress):
        sample = dataset[i]
        images = np.asarray(sample["images"], np.float32)[None]
        present = np.asarray(sample["modality_mask"], np.float32).reshape(1, -1)
        gt = np.asarray(sample["label"]).astype(np.uint8)
        for name, keep in subsets.items():
            mask = present * np.array([[1.0 if m in keep else 0.0 for m in MODALITIES]], np.float32)
            t0 = time.perf_counter()
            out = backend.infer(np.ascontiguousarray(images * mask[:, :, None, None, None]), mask)
            pred = np.asarray(out["labels"])[0].astype(np.uint8)
            if name == FULL:
                result.timings_ms["infer"].append((time.perf_counter() - t0) * 1e3)
                if i % mosaic_every == 0 and len(result.mosaic) < MOSAIC_FRAMES:
                    result.mosaic.append(mosaic_tile(_denormalize(images[0, 0]), pred, gt))
                    result.mosaic_titles.append(f"{sample['condition']}, frame {i}")
            result.add(name, sample["condition"], pred, gt)
    result.frames = result.camera_frames = count
    return result


def _denormalize(chw: np.ndarray) -> np.ndarray:
    """ImageNet-normalized [3, H, W] back to uint8 [H, W, 3] for the mosaic."""
    from sam_mmseg_ros.contracts import IMAGENET_MEAN, IMAGENET_STD

    rgb = chw.transpose(1, 2, 0) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


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


# ------------------------------------------------------------------------------------ reports


def write_report(result: EvalResult, out_dir: str | Path, title: str = "Evaluation",
                 extra_sections: list[str] | None = None, with_figures: bool = True) -> dict:
    """metrics.json, report.md and (`with_figures`) the PNGs; returns the summary written to
    metrics.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    figures = write_figures(result, out) if with_figures else []
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(render_markdown(summary, title, figures, extra_sections))
    return summary


def write_figures(result: EvalResult, out: Path) -> list[str]:
    """Confusion matrix, per-class IoU, overlay mosaic and health timeline, where there is data."""
    from sam_mmseg_ros.eval import plots

    figures = []
    full = result.confusion.get(FULL)
    if full is not None and full.total:
        plots.plot_confusion_matrix(full, CLASSES, out / "confusion_matrix.png")
        plots.plot_class_iou(full.iou(), CLASSES, out / "class_iou.png")
        figures += ["confusion_matrix.png", "class_iou.png"]
    if result.mosaic:
        plots.overlay_mosaic(result.mosaic, out / "overlay_mosaic.png", cols=2,
                             titles=[f"{t}: prediction | ground truth" for t in result.mosaic_titles])
        figures.append("overlay_mosaic.png")
    if result.timeline:
        t0 = result.timeline[0]["stamp_ns"]
        times = [(r["stamp_ns"] - t0) * 1e-9 for r in result.timeline]
        plots.plot_health_timeline(
            times, {m: [r.get(m, "missing") for r in result.timeline] for m in MODALITIES},
            out / "health_timeline.png",
            router_weights={m: [r.get(f"{m}_weight", 0.0) for r in result.timeline] for m in MODALITIES})
        figures.append("health_timeline.png")
    return figures


def model_line(model: dict) -> str:
    if not model:
        return "unknown"
    text = f"{model['backend']} ({model['precision']}), input {model['input_size'][0]}x{model['input_size'][1]}, "
    if model.get("trained"):
        return text + f"trained weights `{model.get('checkpoint')}`"
    return text + ("**UNTRAINED** (random weights: no trained checkpoint was found, so the scores below "
                   "are meaningless; they only show that the pipeline runs end to end)")


def render_markdown(summary: dict, title: str, figures: list[str] | None = None,
                    extra_sections: list[str] | None = None) -> str:
    lines = [f"# {title}", "", f"- Source: `{summary['source']}` ({summary['mode']})",
             f"- Model: {model_line(summary['model'])}",
             f"- Frames scored: {summary['frames']} of {summary['camera_frames']} camera frames"]
    if summary.get("dropped_frames") is not None:
        lines.append(f"- Frames the node dropped (no output): {summary['dropped_frames']}")
    full = summary["miou"].get(FULL)
    lines += [f"- **mIoU ({FULL}): {_fmt(full)} %**", ""]
    for section in extra_sections or []:
        lines += [section, ""]
    if len(summary["miou"]) > 1:
        lines += ["## mIoU by modality subset", "", "| subset | mIoU (%) | pixel accuracy (%) |", "|---|---|---|"]
        for subset, miou in summary["miou"].items():
            lines.append(f"| {subset} | {_fmt(miou)} | {_fmt(summary['pixel_accuracy'][subset])} |")
    elif full is not None:
        lines.append(f"Pixel accuracy ({FULL}): {_fmt(summary['pixel_accuracy'][FULL])} %")
    conditions = sorted({c for d in summary["miou_per_condition"].values() for c in d})
    if conditions:
        lines += ["", "## mIoU per condition (%)", "", "| subset | " + " | ".join(conditions) + " |",
                  "|---|" + "---|" * len(conditions)]
        for subset, per in summary["miou_per_condition"].items():
            lines.append(f"| {subset} | " + " | ".join(_fmt(per.get(c)) for c in conditions) + " |")
    present = {c: v for c, v in summary["class_iou"].items() if v is not None}
    if present:
        lines += ["", f"## Per-class IoU ({FULL}, classes that occur)", "", "| class | IoU (%) |", "|---|---|"]
        lines += [f"| {c} | {_fmt(v)} |" for c, v in present.items()]
    if summary["latency_ms"]:
        lines += ["", "## Latency (ms)", "", summary["latency_note"], "",
                  "| stage | p50 | p95 | p99 | mean | n |", "|---|---|---|---|---|---|"]
        for stage, p in summary["latency_ms"].items():
            if p:
                lines.append(f"| {stage} | {p['p50']:.1f} | {p['p95']:.1f} | {p['p99']:.1f} | {p['mean']:.1f} | {p['n']} |")
    if summary["health_counts"]:
        lines += ["", "## Health (frames per state)", "", "| modality | " + " | ".join(HEALTH_STATES) + " |",
                  "|---|" + "---|" * len(HEALTH_STATES)]
        for m in MODALITIES:
            counts = summary["health_counts"].get(m, {})
            lines.append(f"| {m} | " + " | ".join(str(counts.get(s, 0)) for s in HEALTH_STATES) + " |")
    if summary["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


# ------------------------------------------------------------------------------------ CLI


def configure_parser(parser) -> None:
    parser.description = ("Score segmentation on a rosbag2 (the node's own stages, offline and "
                          "deterministic, or --live against a running node) or a DELIVER folder.")
    parser.add_argument("source", help="rosbag2 (folder or .mcap) or DELIVER root folder")
    parser.add_argument("--out", default="eval_output", help="report folder")
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped model)")
    parser.add_argument("--backend", default="torch", choices=["auto", "tensorrt", "onnxruntime", "torch"],
                        help="torch is the deterministic reference; auto picks as the node does")
    parser.add_argument("--device", default="cpu", help="torch device for the torch backend")
    parser.add_argument("--split", default="test", help="DELIVER split")
    parser.add_argument("--subsets", default="all",
                        help="comma list of modality subsets (" + ", ".join(SUBSETS) + ") or 'all'")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--params-file", default=None,
                        help="node parameters YAML (sync tolerances, event settings...), default the shipped one")
    parser.add_argument("--live", action="store_true",
                        help="score a running node's published labels while replaying the bag over DDS")
    parser.add_argument("--rate", type=float, default=1.0, help="replay rate in --live mode")
    parser.add_argument("--namespace", default="/sam_mmseg", help="the node's namespace/name in --live mode")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def select_subsets(spec: str) -> dict[str, tuple[str, ...]]:
    if spec == "all":
        return SUBSETS
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in SUBSETS]
    if unknown:
        raise SystemExit(f"unknown subsets {unknown}; choose from {list(SUBSETS)}")
    return {n: SUBSETS[n] for n in names}


def run(args) -> int:
    source = Path(args.source)
    if not source.exists():
        log.error("%s does not exist", source)
        return 2
    subsets = select_subsets(args.subsets)
    progress = not args.no_progress
    if args.live:
        from sam_mmseg_ros.ros.live_eval import evaluate_live

        result = evaluate_live(source, rate=args.rate, namespace=args.namespace, progress=progress)
    else:
        from sam_mmseg_ros.engine import create_backend
        from sam_mmseg_ros.ingest import load_parameters

        height, width = load_parameters(args.params_file)["input_size"]
        backend = create_backend(args.backend, checkpoint=args.checkpoint, precision="fp32",
                                 device=args.device if args.backend == "torch" else None,
                                 input_size=(int(height), int(width)) if height and width else None)
        if (source / "img").is_dir():
            result = evaluate_deliver(source, backend, split=args.split, subsets=subsets,
                                      progress=progress, max_frames=args.max_frames)
        else:
            result = evaluate_bag(source, backend, args.params_file, subsets=subsets, progress=progress,
                                  max_frames=args.max_frames)
    summary = write_report(result, args.out, title=f"Evaluation of {source.name}")
    log.info("mIoU %s: %s %%  ->  %s", FULL, summary["miou"].get(FULL), Path(args.out) / "report.md")
    return 0
