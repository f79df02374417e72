"""Evaluation reports: metrics.json, report.md and the PNG figures."""

from __future__ import annotations

import json
from pathlib import Path

from sam_mmseg_ros.contracts import HEALTH_STATES, MODALITIES
from sam_mmseg_ros.eval.results import FULL, PRIOR, EvalResult
from sam_mmseg_ros.labels import CLASSES


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
    prior = summary.get("layout_prior") or {}
    if len(summary["miou"]) > 1:
        lines += ["## mIoU by modality subset", "", "| subset | mIoU (%) | pixel accuracy (%) |", "|---|---|---|"]
        for subset, miou in summary["miou"].items():
            lines.append(f"| {subset} | {_fmt(miou)} | {_fmt(summary['pixel_accuracy'][subset])} |")
        if prior:
            lines.append(f"| {PRIOR} | {_fmt(prior['miou'])} | {_fmt(prior['pixel_accuracy'])} |")
    elif full is not None:
        lines.append(f"Pixel accuracy ({FULL}): {_fmt(summary['pixel_accuracy'][FULL])} %")
    per_condition = dict(summary["miou_per_condition"])
    if prior:
        per_condition[PRIOR] = prior["miou_per_condition"]
    lines += _breakdown("mIoU per condition (%)", per_condition)
    if prior:
        lines += ["", f"The {PRIOR} predicts at every pixel the class most frequent there in these same frames "
                  f"(sampled on a {prior['grid'][0]}x{prior['grid'][1]} grid), without any sensor: an upper bound "
                  "for knowing only the layout of the scenes."]
    if any(c != "normal" for d in summary.get("miou_per_case", {}).values() for c in d):
        lines += _breakdown("mIoU per sensor-failure case (%)", summary["miou_per_case"])
    lines += depth_sections(summary)
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


def _breakdown(title: str, per_subset: dict[str, dict[str, float | None]]) -> list[str]:
    """A table of mIoU per subset (rows) and condition or case (columns)."""
    columns = sorted({c for d in per_subset.values() for c in d})
    if not columns:
        return []
    lines = ["", f"## {title}", "", "| subset | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    return lines + [f"| {subset} | " + " | ".join(_fmt(per.get(c)) for c in columns) + " |"
                    for subset, per in per_subset.items()]


def depth_sections(summary: dict) -> list[str]:
    """Markdown tables of the depth errors (models with the depth task): per subset, AbsRel per
    condition, and in the depth sensor's holes."""
    if not summary.get("depth"):
        return []
    first = next(iter(summary["depth"].values()))
    lines = ["", f"## Depth by modality subset (ground truth up to {first['max_depth_m']:g} m)", "",
             "| subset | AbsRel | RMSE (m) | δ<1.25 (%) | pixels |", "|---|---|---|---|---|"]
    for subset, e in summary["depth"].items():
        lines.append(f"| {subset} | {_fmt(e['abs_rel'], 3)} | {_fmt(e['rmse_m'], 2)} | "
                     f"{_fmt(None if e['delta1'] is None else 100 * e['delta1'])} | {e['pixels']} |")
    conditions = sorted({c for d in summary["depth_per_condition"].values() for c in d})
    lines += ["", "## Depth per condition: AbsRel · RMSE · δ<1.25", "", "| subset | " + " | ".join(conditions) + " |",
              "|---|" + "---|" * len(conditions)]
    for subset, per in summary["depth_per_condition"].items():
        lines.append(f"| {subset} | " + " | ".join(_depth_cell(per.get(c)) for c in conditions) + " |")
    holes = summary.get("depth_in_sensor_holes", {})
    if holes:
        lines += ["", "## Depth where the depth sensor had no value (hole filling; subsets without it: the same "
                  "pixels)", "",
                  "| subset | AbsRel | RMSE (m) | δ<1.25 (%) | pixels |", "|---|---|---|---|---|"]
        for subset, e in holes.items():
            lines.append(f"| {subset} | {_fmt(e['abs_rel'], 3)} | {_fmt(e['rmse_m'], 2)} | "
                         f"{_fmt(None if e['delta1'] is None else 100 * e['delta1'])} | {e['pixels']} |")
    return lines


def _depth_cell(errors: dict | None) -> str:
    if not errors or errors["abs_rel"] is None:
        return "n/a"
    return f"{errors['abs_rel']:.3f} · {errors['rmse_m']:.1f} m · {100 * errors['delta1']:.0f} %"


def _fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def comparison_markdown(summaries: dict[str, dict]) -> str:
    """Markdown tables comparing evaluations of the same source (metrics.json summaries by model
    name): mIoU per subset and per condition, then each depth model's depth errors per subset,
    AbsRel per condition and in the depth sensor's holes. The last column of the mIoU table is the
    first model minus the last."""
    names = list(summaries)
    first, last = summaries[names[0]], summaries[names[-1]]
    subsets = list(first["miou"])
    lines = ["#### mIoU (%) by modality subset", "", "| subset | " + " | ".join(names) + " | difference |",
             "|---|" + "---|" * (len(names) + 1)]
    for subset in subsets:
        values = [s["miou"].get(subset) for s in summaries.values()]
        a, b = first["miou"].get(subset), last["miou"].get(subset)
        delta = "n/a" if a is None or b is None else f"{a - b:+.1f}"
        lines.append(f"| {subset} | " + " | ".join(_fmt(v) for v in values) + f" | {delta} |")
    conditions = sorted(first["miou_per_condition"].get(FULL, {}))
    lines += ["", f"#### mIoU (%) per condition ({FULL})", "", "| model | " + " | ".join(conditions) + " |",
              "|---|" + "---|" * len(conditions)]
    for name, s in summaries.items():
        per = s["miou_per_condition"].get(FULL, {})
        lines.append(f"| {name} | " + " | ".join(_fmt(per.get(c)) for c in conditions) + " |")
    for name, s in summaries.items():
        sections = depth_sections(s)
        if sections:
            lines += ["", f"#### {name}: depth"] + [line.replace("## ", "##### ", 1) if line.startswith("## ") else line
                                                     for line in sections]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Compare evaluations of one source: markdown tables on stdout.")
    parser.add_argument("runs", nargs="+", metavar="NAME=METRICS_JSON",
                        help="model name and the metrics.json `sam-mmseg eval` wrote for it")
    args = parser.parse_args(argv)
    summaries = {}
    for run in args.runs:
        name, _, path = run.partition("=")
        if not path:
            parser.error(f"expected NAME=METRICS_JSON, got {run!r}")
        summaries[name] = json.loads(Path(path).read_text())
    print(comparison_markdown(summaries), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
