"""Continual-learning report: accuracy matrix, final average, backward transfer and forgetting,
selector accuracy (eval/continual.py), from the results `train --continual` writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sam_mmseg_ros import cli
from sam_mmseg_ros.eval.continual import accuracy_matrix, markdown, summary


def _row(after, scores, steps=10, selector=None):
    domains = {}
    for name, miou in scores.items():
        domains[name] = {"miou": miou}
        if selector is not None:
            domains[name].update(selector_accuracy=selector[name], oracle_miou=miou + 0.01)
    return {"after": after, "steps": steps, "seconds": 1.0, "domains": domains}


NAIVE = {"method": "naive", "domains": ["sun", "fog", "night"], "rows": [
    _row("sun", {"sun": 0.40}),
    _row("fog", {"sun": 0.35, "fog": 0.38}),
    _row("night", {"sun": 0.30, "fog": 0.33, "night": 0.36}),
]}
MODA = {"method": "moda", "domains": ["sun", "fog", "night"], "rows": [
    _row("sun", {"sun": 0.40}, selector={"sun": 1.0}),
    _row("fog", {"sun": 0.40, "fog": 0.39}, selector={"sun": 1.0, "fog": 1.0}),
    _row("night", {"sun": 0.395, "fog": 0.39, "night": 0.37}, selector={"sun": 0.97, "fog": 1.0, "night": 1.0}),
]}
JOINT = {"method": "joint", "domains": ["sun", "fog", "night"], "rows": [
    _row("night", {"sun": 0.41, "fog": 0.40, "night": 0.38}, steps=30)]}


def test_accuracy_matrix_is_lower_triangular_in_percent():
    after, domains, matrix = accuracy_matrix(NAIVE)
    assert after == domains == ["sun", "fog", "night"]
    np.testing.assert_allclose(matrix, [[40, np.nan, np.nan], [35, 38, np.nan], [30, 33, 36]])


def test_forgetting_is_the_average_drop_of_earlier_domains_after_the_last():
    naive, moda, joint = summary(NAIVE), summary(MODA), summary(JOINT)
    assert naive["forgetting"] == pytest.approx((10 + 5) / 2) and naive["bwt"] == pytest.approx(-7.5)
    assert naive["drop_per_domain"] == pytest.approx({"sun": 10.0, "fog": 5.0})
    assert naive["final_average"] == pytest.approx(33.0) and naive["steps"] == 30
    assert moda["forgetting"] == pytest.approx(0.25)
    assert moda["selector_accuracy"] == pytest.approx({"sun": 97.0, "fog": 100.0, "night": 100.0})
    assert "forgetting" not in joint and joint["final_average"] == pytest.approx(39.667, abs=1e-3)


def test_report_compares_runs_and_shows_each_matrix(tmp_path):
    text = markdown([MODA, NAIVE, JOINT])
    assert "| moda | moda | 30 | 39.5 | 39.0 | 37.0 | 38.5 | 0.2 | -0.2 |" in text
    assert "| selector accuracy (%) | 97.0 | 100.0 | 100.0 |" in text
    for name, run in (("moda", MODA), ("naive", NAIVE), ("joint", JOINT)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "continual.json").write_text(json.dumps(run))
    out = tmp_path / "report"
    assert cli.main(["continual-report", *(str(tmp_path / n) for n in ("moda", "naive", "joint")),
                     "--out", str(out)]) == 0
    assert (out / "accuracy_matrices.png").stat().st_size > 1000
    assert {s["label"] for s in json.loads((out / "summary.json").read_text())} == {"moda", "naive", "joint"}
