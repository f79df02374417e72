"""Continual-learning report: the accuracy matrix of each run, final average, backward transfer
(forgetting) and selector accuracy, compared across methods (`sam-mmseg continual-report`).

Reads the `continual.json` that `sam-mmseg train --continual` writes. With R[i][j] the mIoU on
domain j after learning domain i (j <= i, all in percent):
- final average: mean over j of R[T-1][j], the model at the end on every domain;
- backward transfer BWT: mean over the earlier domains j < T-1 of R[T-1][j] - R[j][j]; its
  negative is the forgetting the issue targets (average drop on earlier domains after the last);
- selector accuracy (moda): the share of a domain's held-out frames whose adapter the selector
  chose correctly, after the last domain; `oracle` is the mIoU had it always been right.
Joint training learns every domain at once: one row, final average only.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RESULTS_FILE = "continual.json"
"""What `sam-mmseg train --continual` writes into its output folder."""


def load_run(path: str | Path) -> dict:
    """A run's results (`continual.json` itself or the folder holding it), labelled by its folder."""
    path = Path(path)
    file = path / RESULTS_FILE if path.is_dir() else path
    return {**json.loads(file.read_text()), "label": file.parent.name}


def accuracy_matrix(run: dict, key: str = "miou") -> tuple[list[str], list[str], np.ndarray]:
    """(row labels: the domain after which, column labels: the domains, R [rows, domains] in
    percent, NaN where a domain was not learned yet)."""
    domains = list(run["domains"])
    rows = run["rows"]
    matrix = np.full((len(rows), len(domains)), np.nan)
    for i, row in enumerate(rows):
        for name, scores in row["domains"].items():
            if key in scores:
                matrix[i, domains.index(name)] = 100.0 * scores[key]
    return [row["after"] for row in rows], domains, matrix


def summary(run: dict) -> dict:
    """Final average, BWT and forgetting (points), selector accuracy per domain, budget."""
    _, domains, matrix = accuracy_matrix(run)
    final = matrix[-1]
    out = {"method": run["method"], "label": run.get("label", run["method"]), "domains": domains, "final": dict(zip(domains, final.tolist(), strict=True)),
           "final_average": float(np.nanmean(final)),
           "steps": int(sum(row["steps"] for row in run["rows"])),
           "seconds": float(sum(row["seconds"] for row in run["rows"]))}
    if len(run["rows"]) == len(domains) and len(domains) > 1:  # learned one domain per row
        diagonal = np.diag(matrix)
        drops = final[:-1] - diagonal[:-1]
        out.update(bwt=float(drops.mean()), forgetting=float(-drops.mean()),
                   drop_per_domain=dict(zip(domains[:-1], (-drops).tolist(), strict=True)))
    last = run["rows"][-1]["domains"]
    if all("selector_accuracy" in last[d] for d in domains):
        out["selector_accuracy"] = {d: 100.0 * last[d]["selector_accuracy"] for d in domains}
        out["oracle"] = {d: 100.0 * last[d]["oracle_miou"] for d in domains}
    return out


def _fmt(value: float | None) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{round(value, 1) + 0.0:.1f}"  # no "-0.0"


def markdown(runs: list[dict], figure: str | None = None) -> str:
    """The report: a comparison table, then each run's accuracy matrix (and selector accuracy)."""
    summaries = [summary(run) for run in runs]
    domains = summaries[0]["domains"]
    lines = ["| run | method | steps | " + " | ".join(domains) + " | final average | forgetting (points) | BWT |",
             "|---|---|---|" + "---|" * len(domains) + "---|---|---|"]
    for s in summaries:
        cells = [_fmt(s["final"].get(d)) for d in domains]
        lines.append(f"| {s['label']} | {s['method']} | {s['steps']} | " + " | ".join(cells) +
                     f" | {_fmt(s['final_average'])} | {_fmt(s.get('forgetting'))} | {_fmt(s.get('bwt'))} |")
    for run, s in zip(runs, summaries, strict=True):
        after, names, matrix = accuracy_matrix(run)
        lines += ["", f"#### {s['label']} ({run['method']}): mIoU (%) on each domain (columns) after learning "
                  "each (rows)", "",
                  "| after | " + " | ".join(names) + " | average so far |", "|---|" + "---|" * (len(names) + 1)]
        for label, row in zip(after, matrix, strict=True):
            lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in row) + f" | {_fmt(np.nanmean(row))} |")
        if "selector_accuracy" in s:
            lines += ["", "| after the last domain | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
                      "| selector accuracy (%) | " + " | ".join(_fmt(s["selector_accuracy"][d]) for d in names) + " |",
                      "| mIoU, selector's adapter | " + " | ".join(_fmt(s["final"][d]) for d in names) + " |",
                      "| mIoU, the domain's own adapter (oracle) | " +
                      " | ".join(_fmt(s["oracle"][d]) for d in names) + " |"]
    if figure:
        lines += ["", f"![accuracy matrices]({figure})"]
    return "\n".join(lines) + "\n"


def plot_matrices(runs: list[dict], path: str | Path) -> Path:
    """One heatmap of the accuracy matrix per run, side by side, on one colour scale."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    mats = [accuracy_matrix(run) for run in runs]
    low = min(np.nanmin(m) for _, _, m in mats)
    high = max(np.nanmax(m) for _, _, m in mats)
    fig = Figure(figsize=(4.2 * len(runs), 3.8), dpi=110)
    for k, (run, (after, names, matrix)) in enumerate(zip(runs, mats, strict=True)):
        ax = fig.add_subplot(1, len(runs), k + 1)
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap=colormaps["viridis"], vmin=low, vmax=high,
                          aspect="auto")
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if value < (low + high) / 2 else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(after)), after)
        ax.set_xlabel("evaluated on")
        if k == 0:
            ax.set_ylabel("after learning")
        ax.set_title(f"{run.get('label', run['method'])} ({run['method']})")
    fig.colorbar(image, ax=fig.axes, label="mIoU (%)", shrink=0.8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, bbox_inches="tight")
    return path


def write_report(runs: list[dict], out_dir: str | Path) -> dict:
    """report.md, summary.json and accuracy_matrices.png in `out_dir`; returns the summaries."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_matrices(runs, out / "accuracy_matrices.png")
    (out / "report.md").write_text(markdown(runs, "accuracy_matrices.png"))
    summaries = [summary(run) for run in runs]
    (out / "summary.json").write_text(json.dumps(summaries, indent=2))
    return {s["label"]: s for s in summaries}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Accuracy matrix, final average, forgetting and selector accuracy of "
                          "`sam-mmseg train --continual` runs, side by side.")
    parser.add_argument("runs", nargs="+", help="run folders (or their continual.json), e.g. moda naive joint")
    parser.add_argument("--out", default="continual_report", help="report folder")


def run(args: argparse.Namespace) -> int:
    runs = [load_run(path) for path in args.runs]
    summaries = write_report(runs, args.out)
    for label, s in summaries.items():
        log.info("%s: final average %.1f, forgetting %s", label, s["final_average"], _fmt(s.get("forgetting")))
    log.info("report: %s", Path(args.out) / "report.md")
    return 0
