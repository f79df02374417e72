"""PNG figures for evaluation reports: confusion matrix, per-class IoU, overlay mosaic, health timeline.

matplotlib is imported inside each function and used through `Figure` (no pyplot, no global
backend switch), so importing this module is free and it is safe inside a running node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sam_mmseg_ros.contracts import HEALTH_STATES

STATE_COLORS: dict[str, str] = {
    "ok": "#2ca02c",
    "missing": "#c7c7c7",
    "stale": "#ff7f0e",
    "frozen": "#9467bd",
    "degraded": "#f2c80f",
    "invalid": "#d62728",
}


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, bbox_inches="tight")
    return path


def plot_confusion_matrix(cm, class_names, path) -> Path:
    """Row-normalized confusion matrix (each ground-truth row sums to 100 %). `cm` is a
    ConfusionMatrix or a [C, C] count array; rows without ground truth stay blank."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    counts = np.asarray(getattr(cm, "matrix", cm), np.float64)
    row_total = counts.sum(axis=1) + np.asarray(getattr(cm, "unassigned", 0), np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalized = np.where(row_total[:, None] > 0, counts / row_total[:, None], np.nan)
    n = len(class_names)
    side = max(6.0, 0.42 * n + 2.5)
    fig = Figure(figsize=(side + 1.2, side), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(normalized), cmap=colormaps["Blues"].with_extremes(bad="#eeeeee"),
                      vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    ax.set_title("Confusion matrix (% of each ground-truth row)")
    for g, p in zip(*np.nonzero(np.nan_to_num(normalized) >= 0.05), strict=True):  # only real confusions
        value = normalized[g, p]
        ax.text(p, g, f"{100 * value:.0f}", ha="center", va="center", fontsize=6,
                color="white" if value > 0.55 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="fraction of row")
    return _save(fig, path)


def plot_class_iou(iou, class_names, path) -> Path:
    """Horizontal bars of per-class IoU (%), in the palette colours when the names are the
    package's classes; classes absent from the set are marked n/a; a line marks the mIoU."""
    from matplotlib.figure import Figure

    from sam_mmseg_ros.labels import CLASSES, PALETTE

    iou = np.asarray(iou, np.float64) * 100.0
    names = list(class_names)
    colors = (PALETTE / 255.0 if tuple(names) == CLASSES else ["#4c72b0"] * len(names))
    fig = Figure(figsize=(8, max(3.0, 0.3 * len(names) + 1.2)), dpi=100)
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(iou), color=colors, edgecolor="#333333", linewidth=0.5)
    for yi, value in zip(y, iou, strict=True):
        label = "n/a" if np.isnan(value) else f"{value:.1f}"
        ax.text((0 if np.isnan(value) else value) + 1, yi, label, va="center", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    if np.any(np.isfinite(iou)):
        miou = float(np.nanmean(iou))
        ax.axvline(miou, color="black", linestyle="--", linewidth=1, label=f"mIoU {miou:.1f} %")
        ax.legend(loc="lower right")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("IoU (%)")
    ax.set_title("IoU per class")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def overlay_mosaic(images, path, cols: int = 4, titles=None) -> Path:
    """A grid of uint8 [H, W, 3] images (e.g. labels over camera frames), optional titles."""
    from matplotlib.figure import Figure

    if not images:
        raise ValueError("overlay_mosaic needs at least one image")
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    h, w = images[0].shape[:2]
    tile = 4.0
    fig = Figure(figsize=(tile * cols, tile * rows * h / w + (0.3 * rows if titles else 0)), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], interpolation="nearest")
            if titles:
                ax.set_title(str(titles[i]), fontsize=9)
    fig.subplots_adjust(wspace=0.02, hspace=0.1 if titles else 0.02, left=0, right=1, bottom=0, top=1)
    return _save(fig, path)


def plot_health_timeline(times_s, states: dict[str, list[str]], path, router_weights: dict | None = None) -> Path:
    """One strip per modality coloured by health state over time; with `router_weights`, the
    weight the model gave that modality is plotted under its strip (to see the router react)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    times = np.asarray(times_s, np.float64)
    if times.size == 0:
        raise ValueError("plot_health_timeline needs at least one frame")
    step = float(np.median(np.diff(times))) if times.size > 1 else 1.0
    edges = np.append(times, times[-1] + step)
    modalities = list(states)
    with_weights = bool(router_weights)
    ratios = [r for _ in modalities for r in ((1.0, 1.6) if with_weights else (1.0,))]
    fig = Figure(figsize=(11, 0.6 + 0.9 * sum(ratios)), dpi=100)
    axes = fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios, "hspace": 0.15})
    axes = np.atleast_1d(axes)
    cmap = ListedColormap([STATE_COLORS[s] for s in HEALTH_STATES])
    code = {s: i for i, s in enumerate(HEALTH_STATES)}
    for k, m in enumerate(modalities):
        ax = axes[k * (2 if with_weights else 1)]
        values = np.array([[code.get(s, code["invalid"]) for s in states[m]]], np.float64)
        ax.pcolormesh(edges, [0, 1], values, cmap=cmap, vmin=-0.5, vmax=len(HEALTH_STATES) - 0.5)
        ax.set_yticks([0.5], [m], fontsize=10)
        ax.tick_params(axis="y", length=0)
        if with_weights:
            wax = axes[2 * k + 1]
            weights = np.asarray(router_weights.get(m, []), np.float64)[: times.size]
            if weights.size:
                wax.stairs(weights, edges[: weights.size + 1], baseline=None, color="#1f3b73", linewidth=1.2)
            wax.set_ylim(-0.05, 1.05)
            wax.set_yticks([0, 0.5, 1])
            wax.set_ylabel("weight", fontsize=8)
            wax.tick_params(axis="y", labelsize=7)
            wax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(edges[0], edges[-1])
    axes[0].legend(handles=[Patch(color=STATE_COLORS[s], label=s) for s in HEALTH_STATES],
                   loc="lower center", ncol=len(HEALTH_STATES), frameon=False, bbox_to_anchor=(0.5, 1.0))
    axes[0].set_title("Modality health" + (" and router weight" if with_weights else ""), pad=26)
    return _save(fig, path)


MODALITY_COLORS = {"rgb": "#d62728", "depth": "#1f77b4", "event": "#9467bd", "lidar": "#2ca02c"}


def plot_router_weights(weights: dict[str, dict[str, float]], modalities, path) -> Path:
    """Stacked bars of the router's mean weight per modality, one bar per condition."""
    from matplotlib.figure import Figure

    conditions = list(weights)
    fig = Figure(figsize=(1.1 * len(conditions) + 2.5, 3.6), dpi=100)
    ax = fig.add_subplot()
    x = np.arange(len(conditions))
    bottom = np.zeros(len(conditions))
    for m in modalities:
        values = np.array([weights[c][m] for c in conditions])
        ax.bar(x, values, bottom=bottom, color=MODALITY_COLORS.get(m), label=m, edgecolor="white", linewidth=0.5)
        for xi, (b, v) in enumerate(zip(bottom, values, strict=True)):
            if v > 0.06:
                ax.text(xi, b + v / 2, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white")
        bottom += values
    ax.set_xticks(x, conditions)
    ax.set_ylim(0, 1)
    ax.set_ylabel("router weight (mean over frames)")
    ax.set_title("Router weight per modality and condition")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def plot_condition_miou(per_condition: dict[str, dict[str, float | None]], rows, conditions, path) -> Path:
    """Grouped bars of mIoU (%) per condition for the given rows (modality subsets, baselines)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.4 * len(conditions) + 2.5, 3.6), dpi=100)
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    x = np.arange(len(conditions))
    for i, row in enumerate(rows):
        values = np.array([np.nan if per_condition[row][c] is None else per_condition[row][c] for c in conditions])
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, np.nan_to_num(values), width, label=row)
        for bar, v in zip(bars, values, strict=True):
            if np.isfinite(v):
                ax.text(bar.get_x() + bar.get_width() / 2, v + 0.5, f"{v:.0f}", ha="center", fontsize=7)
    ax.set_xticks(x, conditions)
    ax.set_ylabel("mIoU (%)")
    ax.set_title("mIoU per condition (same streets in every condition)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
