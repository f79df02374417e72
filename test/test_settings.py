"""The settings table is the one source of every parameter: the shipped YAML and README's table are
rendered from it, the components take their defaults from it, and one build path checks values at
start-up and at run time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from sam_mmseg_ros import settings
from sam_mmseg_ros.health import HealthThresholds
from sam_mmseg_ros.node_settings import NodeSettings
from sam_mmseg_ros.sensors.preprocess import PreprocessConfig
from sam_mmseg_ros.settings import SETTINGS, TABLE, SettingsError, check, load_parameters
from sam_mmseg_ros.sync import SyncConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED_YAML = REPO / "config" / settings.PARAMS_NAME


def test_shipped_yaml_and_readme_table_are_the_rendered_table():
    assert SHIPPED_YAML.read_text() == settings.render_yaml(), "run: python -m sam_mmseg_ros.settings --write"
    readme = (REPO / "README.md").read_text()
    assert settings.readme_with_table(readme) == readme, "run: python -m sam_mmseg_ros.settings --write"


def test_shipped_yaml_holds_every_default_value():
    """Values, not only names: what a launched node runs with is what `ros2 run` gives."""
    document = yaml.safe_load(SHIPPED_YAML.read_text())
    flat = settings.flatten_parameters(document["/**"]["ros__parameters"])
    expected = {s.name: s.default for s in SETTINGS if not s.optional}
    assert flat == expected
    assert all(type(flat[n]) is type(v) for n, v in expected.items())
    assert load_parameters(SHIPPED_YAML) == settings.defaults()


def test_readme_rows_show_each_default_and_range():
    readme = (REPO / "README.md").read_text()
    for s in SETTINGS:
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{s.name}` |"))
        if s.low is not None:
            assert f"{s.low:g} – {s.high:g}" in row, row
        assert ("unset" if s.optional else f"`{settings._yaml_value(s.default)}`") in row, row


def test_every_numeric_parameter_has_a_range_and_fractions_are_0_to_1():
    for s in SETTINGS:
        if s.kind in ("int", "float", "int_array", "float_array"):
            assert s.low is not None and s.high is not None and s.low <= s.high, s.name
            if not s.optional:
                values = s.default if isinstance(s.default, list) else [s.default]
                assert all(s.low <= v <= s.high for v in values), s.name
        if "fraction" in s.name:
            assert (s.low, s.high) == (0.0, 1.0), s.name
    with pytest.raises(ValueError, match="range"):
        settings.Setting("x", 1.0, "no range")


def test_components_take_their_defaults_from_the_table():
    thresholds = HealthThresholds()
    for f in dataclasses.fields(HealthThresholds):
        assert getattr(thresholds, f.name) == TABLE[f"health.{f.name}"].default
    sync = SyncConfig()
    assert sync.tolerance_ms == {m: TABLE[f"sync.tolerance_ms.{m}"].default for m in ("depth", "event", "lidar")}
    assert sync.max_wait_ms == TABLE["sync.max_wait_ms"].default
    assert set(sync.buffer_size.values()) == {TABLE["sync.buffer_size"].default}
    assert PreprocessConfig().event_window_ms == TABLE["event_window_ms"].default


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("health.max_saturated_fraction", 5.0, "out of range"),
    ("health.hysteresis_frames", 0, "out of range"),
    ("backend", "tensorrtx", "not one of"),
    ("input_size", [512], "expected 2 numbers"),
    ("input_size", [512.5, 512], "integers"),
    ("T_camera_lidar.rotation_xyzw", [0.0, 0.0, 0.0, 0.0], "must not be zero"),
    ("enable.depth", "yes", "true or false"),
    ("overlay_alpha", True, "numbers"),
])
def test_values_the_table_refuses(name, value, expected):
    assert expected in check(TABLE[name], value)


def test_settings_build_collects_every_problem_including_consistency():
    with pytest.raises(SettingsError) as error:
        NodeSettings.from_values({"health.max_saturated_fraction": 5.0, "precision": "fp8", "nonsense": 1})
    assert len(error.value.problems) == 3
    with pytest.raises(SettingsError, match="min_event_rate_hz < max_event_rate_hz"):
        NodeSettings.from_values({"health.min_event_rate_hz": 100.0, "health.max_event_rate_hz": 10.0})


def test_settings_from_a_parameter_file_and_overrides(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("/**:\n  ros__parameters:\n    sync:\n      tolerance_ms:\n        depth: 45.0\n"
                      "    T_camera_lidar:\n      matrix: [1.0, 0.0, 0.0, 2.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0,"
                      " 0.0, 0.0, 0.0, 1.0]\n")
    built = NodeSettings.from_file(params, {"input_size": [256, 320], "enable.event": False})
    assert built.sync.tolerance_ms["depth"] == 45.0
    assert built.model.input_size == (256, 320)
    assert built.enabled == {"rgb": True, "depth": True, "event": False, "lidar": True}
    assert built.sync.enabled["event"] is False
    np.testing.assert_array_equal(built.T_camera_lidar[:3, 3], [2.0, 0.0, 0.0])
    assert NodeSettings.from_file().model.input_size is None  # [0, 0]: the model's own size
