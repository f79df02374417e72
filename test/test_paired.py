"""Paired evaluation: the same street under every condition, scored through the node's stages,
by condition, illumination and distance band, with router weights, layout prior and targets."""

import json

import numpy as np
import pytest
import torch

from sam_mmseg_ros.eval.paired import (
    DISTANCE_BANDS,
    ILLUMINATION_BANDS,
    evaluate_paired,
    targets,
    write_paired_report,
)
from sam_mmseg_ros.eval.results import FULL, PRIOR, SUBSETS

CONDITIONS = ("sun", "night", "fog")


@pytest.fixture(scope="module")
def result():
    from sam_mmseg_ros.engine import create_backend

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    backend = create_backend("torch", device="cpu", precision="fp32")
    subsets = {"RGB": SUBSETS["RGB"], "without lidar": SUBSETS["without lidar"]}
    yield evaluate_paired(backend, [9000], CONDITIONS, frames_per_street=1, size=(96, 72), subsets=subsets,
                          progress=False)
    torch.set_num_threads(threads)


def test_every_condition_scores_the_same_street(result):
    summary = result.summary()
    assert result.frames == dict.fromkeys(CONDITIONS, 1)
    # Paired: the ground truth is the same street in every condition, so the layout prior is too.
    prior = summary["miou_per_condition"][PRIOR]
    assert len(set(prior.values())) == 1 and 0 < prior["sun"] <= 100  # one street: it fits it exactly
    for subset in (FULL, "RGB", "without lidar"):
        assert set(summary["miou_per_condition"][subset]) == set(CONDITIONS)
    for condition, weights in summary["router_weights"].items():
        assert abs(sum(weights.values()) - 1.0) < 1e-3, condition
    night = summary["miou_per_band"]["illumination"][FULL]["night"]
    assert set(night) == {name for name, *_ in ILLUMINATION_BANDS}
    assert night["< 0.1 cd/m2"] is not None  # a night has dark pixels
    assert summary["miou_per_band"]["illumination"][FULL]["sun"]["< 0.1 cd/m2"] is None  # a sunny day has none
    fog = summary["miou_per_band"]["distance"][FULL]["fog"]
    assert set(fog) == {name for name, *_ in DISTANCE_BANDS} and fog["< 10 m"] is not None


def test_report_has_targets_tables_and_plots(result, tmp_path):
    summary = write_paired_report(result, tmp_path)
    for name in ("paired_metrics.json", "paired_report.md", "router_weights.png", "miou_per_condition.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    written = json.loads((tmp_path / "paired_metrics.json").read_text())
    assert written["targets"] == summary["targets"]
    names = [row["target"] for row in summary["targets"]]
    assert any("night" in n for n in names) and any("fog" in n for n in names)
    assert any("layout prior" in n for n in names) and any("router's RGB weight" in n for n in names)
    report = (tmp_path / "paired_report.md").read_text()
    assert "### Targets" in report and f"| {PRIOR} |" in report and "distance band" in report


def test_targets_judge_the_numbers():
    per = {FULL: {"sun": 50.0, "night": 40.0, "fog": 38.0}, "RGB": {"sun": 49.8, "night": 28.0, "fog": 29.0},
           "without depth": {"sun": 50.2, "night": 39.0, "fog": 37.0}, PRIOR: dict.fromkeys(("sun", "night", "fog"),
                                                                                          12.0)}
    summary = {"conditions": ["sun", "night", "fog"], "miou_per_condition": per,
               "miou": {FULL: 42.0, "RGB": 35.0, "without depth": 40.0, PRIOR: 12.0},
               "router_weights": {"sun": {"rgb": 0.6}, "night": {"rgb": 0.2}, "fog": {"rgb": 0.4}}}
    rows = {row["target"].split(" (")[0]: row for row in targets(summary)}
    assert rows[f"{FULL} >= RGB + 10 mIoU, night"]["met"] and not rows[f"{FULL} >= RGB + 10 mIoU, fog"]["met"]
    assert rows["removing depth costs <= 3 points"]["value"] == 2.0
    worst = next(r for r in targets(summary) if r["target"].startswith(f"{FULL} not below"))
    assert worst["value"] == pytest.approx(0.2) and worst["met"]
    assert rows["router's RGB weight at night <= half of its weight in sun"]["met"]
    assert rows["RGB in sun >= 45 mIoU"]["met"] and rows["layout prior <= 15 mIoU"]["met"]
    assert np.isclose(rows["router's RGB weight at night <= half of its weight in sun"]["value"], 1 / 3, atol=1e-3)
