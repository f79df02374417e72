"""Class table, palette lookups and the classes.yaml copy of them."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from sam_mmseg_ros.labels import CLASSES, NUM_CLASSES, PALETTE, class_id, classes_table, colorize, overlay

CLASSES_YAML = Path(__file__).resolve().parents[1] / "config" / "classes.yaml"


def test_deliver_table():
    assert NUM_CLASSES == 25 and len(CLASSES) == 25 and len(set(CLASSES)) == 25
    assert PALETTE.shape == (25, 3) and PALETTE.dtype == np.uint8
    assert CLASSES[0] == "Building" and CLASSES[-1] == "Truck"
    assert class_id("Road") == 6 and class_id("road") == 6 and class_id("TwoWheeler") == 22
    assert PALETTE[class_id("Road")].tolist() == [128, 64, 128]
    assert PALETTE[class_id("Sky")].tolist() == [70, 130, 180]
    with pytest.raises(KeyError, match="unknown class 'Tree'"):
        class_id("Tree")


def test_classes_yaml_agrees_with_labels_module():
    data = yaml.safe_load(CLASSES_YAML.read_text())
    assert data["classes"] == classes_table()
    assert data["ignore_label"] == 255


def test_colorize_values_and_unlabeled_black():
    labels = np.array([[0, 6], [255, 24]], np.uint8)
    assert colorize(labels).tolist() == [[[70, 70, 70], [128, 64, 128]], [[0, 0, 0], [0, 0, 70]]]
    wide = np.array([[-1, 25, 300, 12]], np.int32)  # engine output dtype, out of range → black
    assert colorize(wide).tolist() == [[[0, 0, 0], [0, 0, 0], [0, 0, 0], [70, 130, 180]]]
    assert colorize(np.zeros((3, 5), np.int64)).shape == (3, 5, 3)
    with pytest.raises(ValueError, match="integer class ids"):
        colorize(np.zeros((2, 2), np.float32))


def test_overlay_blends_and_keeps_unlabeled_pixels():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[6, 6], [255, 0]], np.uint8)
    half = overlay(rgb, labels, 0.5)
    assert half.dtype == np.uint8
    assert half[0, 0].tolist() == [114, 82, 114]  # (100 + [128, 64, 128]) / 2
    assert half[1, 0].tolist() == [100, 100, 100]  # ignore: camera image
    assert half[1, 1].tolist() == [85, 85, 85]  # (100 + 70) / 2
    assert np.array_equal(overlay(rgb, labels, 0.0), rgb)
    full = overlay(rgb, labels, 1.0)
    assert full[0, 1].tolist() == [128, 64, 128] and full[1, 0].tolist() == [100, 100, 100]
    with pytest.raises(ValueError, match="do not match"):
        overlay(rgb, np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        overlay(rgb.astype(np.float32), labels)
