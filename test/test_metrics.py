"""Confusion matrix metrics against a hand-computed example, and the report figures."""

import json

import numpy as np
import pytest
from PIL import Image

from sam_mmseg_ros.eval import plots
from sam_mmseg_ros.eval.metrics import ConfusionMatrix, DepthErrors
from sam_mmseg_ros.labels import CLASSES, NUM_CLASSES, overlay

GT = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
PRED = np.array([[0, 1, 1], [1, 0, 2]], np.uint8)
# scored pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,0); the last pixel is ignored.
# class 0: TP 1, FP 1, FN 1 → 1/3;  class 1: TP 2, FP 1, FN 0 → 2/3;  class 2: TP 0, FN 1 → 0


def test_hand_computed_example_with_ignore():
    cm = ConfusionMatrix(3).update(PRED, GT)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert cm.iou() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert cm.miou() == pytest.approx(1 / 3)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)


def test_class_absent_from_both_is_nan_and_left_out_of_the_mean():
    cm = ConfusionMatrix(4).update(PRED, GT)
    iou = cm.iou()
    assert np.isnan(iou[3]) and cm.miou() == pytest.approx(1 / 3)
    assert np.isnan(ConfusionMatrix(2).miou()) and np.isnan(ConfusionMatrix(2).pixel_accuracy())


def test_prediction_out_of_range_is_a_miss():
    cm = ConfusionMatrix(2).update(np.array([255, 1, 7]), np.array([0, 1, 1]))
    assert cm.matrix.tolist() == [[0, 0], [0, 1]] and cm.unassigned.tolist() == [1, 1]
    assert cm.iou() == pytest.approx([0.0, 0.5])
    assert cm.pixel_accuracy() == pytest.approx(1 / 3)


def test_merge_equals_one_pass_and_dict_is_json():
    a = ConfusionMatrix(4).update(PRED, GT)
    b = ConfusionMatrix(4).update(GT, GT)
    both = ConfusionMatrix(4).update(np.concatenate([PRED, GT]), np.concatenate([GT, GT]))
    assert np.array_equal(a.merge(b).matrix, both.matrix)
    d = json.loads(json.dumps(both.to_dict(["a", "b", "c", "d"])))
    assert d["iou"][3] is None and d["class_iou"]["d"] is None and d["pixels"] == 10
    with pytest.raises(ValueError):
        a.merge(ConfusionMatrix(3))
    with pytest.raises(ValueError, match="differ in shape"):
        a.update(PRED, GT[:1])


def _check_png(path, min_size=(200, 100)):
    assert path.exists()
    with Image.open(path) as image:
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        pixels = np.asarray(image.convert("RGB"), np.float32)
    assert pixels.std() > 10  # not blank


def test_report_figures(tmp_path):
    rng = np.random.default_rng(0)
    gt = rng.integers(0, NUM_CLASSES, (64, 64))
    pred = np.where(rng.random((64, 64)) < 0.7, gt, rng.integers(0, NUM_CLASSES, (64, 64)))
    gt[gt == 14] = 3  # one class absent: its row stays blank and its IoU is n/a
    pred[pred == 14] = 3
    cm = ConfusionMatrix(NUM_CLASSES).update(pred, gt)
    _check_png(plots.plot_confusion_matrix(cm, CLASSES, tmp_path / "cm.png"), (800, 800))
    _check_png(plots.plot_class_iou(cm.iou(), CLASSES, tmp_path / "iou.png"))
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    tiles = [overlay(rgb, pred[:48].astype(np.uint8), 0.5) for _ in range(6)]
    _check_png(plots.overlay_mosaic(tiles, tmp_path / "mosaic.png", cols=3, titles=list("abcdef")))
    times = np.arange(60) * 0.1
    states = {"rgb": ["ok"] * 60, "depth": ["ok"] * 20 + ["stale"] * 10 + ["ok"] * 30,
              "event": ["degraded"] * 30 + ["frozen"] * 30, "lidar": ["missing"] * 5 + ["ok"] * 50 + ["invalid"] * 5}
    weights = {"rgb": [0.4] * 60, "depth": [0.3] * 20 + [0.0] * 10 + [0.3] * 30, "event": [0.1] * 60,
               "lidar": [0.0] * 5 + [0.2] * 55}
    _check_png(plots.plot_health_timeline(times, states, tmp_path / "health.png", router_weights=weights))
    _check_png(plots.plot_health_timeline(times, states, tmp_path / "health_plain.png"))


def test_depth_errors_hand_example():
    gt = np.array([[2.0, 4.0, 10.0], [0.0, np.nan, 100.0]])
    pred = np.array([[2.0, 5.0, 7.0], [3.0, 3.0, 3.0]])
    errors = DepthErrors(max_depth_m=80.0).update(pred, gt)  # scored: 2, 4, 10 (0, NaN, > 80 m are not)
    assert errors.count == 3 and errors.missing == 0
    assert errors.abs_rel() == pytest.approx((0 + 0.25 + 0.3) / 3)
    assert errors.rmse() == pytest.approx(np.sqrt((0 + 1 + 9) / 3))
    assert errors.delta1() == pytest.approx(1 / 3)  # 5 vs 4 is off by exactly 1.25 (not < 1.25), 7 vs 10 by 1.43
    where = np.array([[False, True, True], [True, True, True]])
    holes = DepthErrors().update(np.where(where, pred, np.nan), gt, where=where)
    assert holes.count == 2 and holes.abs_rel() == pytest.approx(0.55 / 2)
    missing = DepthErrors().update(np.full((2, 3), np.nan), gt)
    assert missing.count == 0 and missing.missing == 3 and missing.to_dict()["abs_rel"] is None
    merged = DepthErrors().update(pred[:, :2], gt[:, :2]).merge(DepthErrors().update(pred[:, 2:], gt[:, 2:]))
    assert merged.to_dict() == errors.to_dict()
    assert json.loads(json.dumps(errors.to_dict()))["pixels"] == 3
