"""Every node parameter once: name, type, default, range or choices, run-time flag, description.

This table is the only place a parameter's default lives. The node declares its parameters from
it (`ros/parameters.py` only turns rows into descriptors), the components take their defaults
from it (`HealthThresholds`, `SyncConfig`, ...), `config/sam_mmseg.yaml` and README's parameter
table are rendered from it (`python -m sam_mmseg_ros.settings --write`; a test fails when the
files differ), and offline evaluation reads a parameter file through `load_parameters` exactly as
the node would. Nothing here imports ROS.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

KINDS = ("bool", "int", "float", "str", "int_array", "float_array")


@dataclass(frozen=True)
class Setting:
    name: str  # dotted ROS parameter name
    default: object  # None only for an `optional` array, which is then left unset
    description: str
    low: float | None = None  # inclusive range of a number, or of every element of an array
    high: float | None = None
    choices: tuple[str, ...] = ()
    runtime: bool = False  # may change while the node runs (`ros2 param set`)
    length: int | None = None  # required array length
    kind: str = ""  # one of KINDS; derived from the default when empty

    def __post_init__(self):
        if not self.kind:
            object.__setattr__(self, "kind", _kind_of(self.default))
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: unknown kind '{self.kind}'")
        numeric = self.kind in ("int", "float", "int_array", "float_array")
        if numeric and (self.low is None or self.high is None):
            raise ValueError(f"{self.name}: every numeric parameter needs a range")

    @property
    def optional(self) -> bool:
        return self.default is None


def _kind_of(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list | tuple) and value:
        return "float_array" if any(isinstance(v, float) for v in value) else "int_array"
    raise ValueError(f"cannot tell the kind of {value!r}; give kind=")


BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")

SETTINGS: tuple[Setting, ...] = (
    # --- model -----------------------------------------------------------------------------------
    Setting("backend", "auto", "inference backend; auto tries TensorRT, then ONNX Runtime, then torch",
            choices=BACKENDS),
    Setting("checkpoint", "", "model weights (.pt); empty: the model shipped with the package, or an "
            "untrained tiny model (reported as an ERROR diagnostic)"),
    Setting("onnx_path", "", "ONNX model for the onnxruntime / tensorrt backends; empty: export from checkpoint"),
    Setting("engine_path", "", "TensorRT engine file; empty: the engine cache"),
    Setting("engine_trusted", False, "load engine_path (given alone) even without its cache record, e.g. an "
            "engine built by trtexec: its hash, TensorRT version, GPU and precision are then not checked, and "
            "the log says so. A record that disagrees is never overridden"),
    Setting("engine_cache_dir", "", "where built TensorRT engines are kept; empty: the default cache"),
    Setting("allow_engine_build", True, "build a TensorRT engine when none valid exists (else fail clearly)"),
    Setting("engine_workspace_mib", 0, "TensorRT builder workspace limit in MiB; 0: 1/8 of the GPU memory, at "
            "most 2048 (1024 on an 8 GB Jetson Orin)", low=0, high=65536),
    Setting("use_cuda_graph", False, "TensorRT: replay the engine as one captured CUDA graph (less launch "
            "overhead per frame; plain execution where capture is not supported)"),
    Setting("precision", "fp16", "inference precision of GPU backends (CPU backends run fp32); an fp32 "
            "onnx_path is converted for fp16", choices=("fp16", "fp32")),
    Setting("device", "", "torch device (cpu, cuda, cuda:1); empty: CUDA when available"),
    Setting("cpu_threads", 1, "torch CPU threads for CPU inference; 0: torch's default (all cores). 1 by "
            "default: a node shares the CPU with the rest of the stack, and oversubscribed threads made "
            "inference ~10x slower on a busy 2-core machine", low=0, high=256),
    Setting("input_size", [0, 0], "model input [height, width] in pixels; [0, 0]: the model's own size",
            low=0, high=4096, length=2),
    Setting("depth_task", True, "run the model's dense depth task (models that have one) for ~/output/depth; "
            "false runs a checkpoint's model without it, at no extra cost (an ONNX or engine file given "
            "runs as it is)"),
    # --- inputs ----------------------------------------------------------------------------------
    Setting("enable.depth", True, "subscribe to ~/input/depth and use it"),
    Setting("enable.event", True, "subscribe to ~/input/events and use it"),
    Setting("enable.lidar", True, "subscribe to ~/input/lidar and use it"),
    Setting("topics.rgb", "", "camera topic (base name, as image_transport names it: the compressed transport "
            "subscribes to <topic>/compressed); empty: ~/input/rgb. The topics.* rows are the topic map of drivers "
            "that use their own names; `sam-mmseg eval` and `replay` read them from the same parameter file"),
    Setting("topics.camera_info", "", "camera_info topic; empty: ~/input/camera_info"),
    Setting("topics.depth", "", "depth topic (base name); empty: ~/input/depth"),
    Setting("topics.event", "", "event topic; empty: ~/input/events"),
    Setting("topics.lidar", "", "LiDAR topic; empty: ~/input/lidar"),
    Setting("rgb_transport", "raw", "camera transport: raw (sensor_msgs/Image) or compressed (CompressedImage, "
            "jpeg or png, on <camera topic>/compressed, as image_transport publishes it)",
            choices=("raw", "compressed")),
    Setting("depth_input", "depth", "~/input/depth holds metric depth (32FC1 or 16UC1 Image), or a ready depth "
            "image (rgb8/bgr8/mono8) already in the model's depth encoding, e.g. a DELIVER bag's HHA images",
            choices=("depth", "image")),
    Setting("depth_transport", "raw", "depth transport: raw (Image) or compressedDepth (metric depth as "
            "CompressedImage on <depth topic>/compressedDepth, image_transport's PNG depth codec)",
            choices=("raw", "compressedDepth")),
    Setting("event_input", "cloud", "~/input/events type: PointCloud2 of events (cloud), a ready event-frame Image "
            "(rgb8/bgr8/mono8) in the model's event encoding, e.g. DELIVER's event images (image), or "
            "event_camera_msgs/EventPacket (packet: evt3, libcaer_cmp, libcaer, as metavision_driver and "
            "libcaer_driver publish; live only where event_camera_msgs is installed)",
            choices=("cloud", "image", "packet")),
    Setting("lidar_input", "cloud", "~/input/lidar type: PointCloud2, or a ready LiDAR Image (rgb8/bgr8/mono8, "
            "camera-aligned) in the model's LiDAR encoding, e.g. DELIVER's LiDAR images", choices=("cloud", "image")),
    Setting("event_sensor_size", [0, 0], "event sensor [width, height]; [0, 0]: the camera resolution",
            low=0, high=16384, length=2),
    Setting("event_window_ms", 50.0, "events in this window before the camera stamp form one frame",
            low=1.0, high=1000.0),
    Setting("lidar_max_range_m", 80.0, "LiDAR points farther than this are ignored", low=1.0, high=1000.0),
    Setting("lidar_intensity_scale", 0.0, "full scale of the LiDAR intensity field, the same for every frame; "
            "0: by its datatype (255 for 8-bit and float fields, 65535 for 16- and 32-bit integers). Ouster's "
            "float intensity exceeds 255: set it there", low=0.0, high=1e9),
    Setting("input_reliability", "best_effort", "input QoS reliability (sensor-data profile otherwise)",
            choices=("best_effort", "reliable")),
    Setting("input_queue_depth", 5, "input QoS history depth", low=1, high=100),
    # --- synchronization -------------------------------------------------------------------------
    Setting("sync.tolerance_ms.depth", 20.0, "depth matched to a camera frame must be stamped within this "
            "of it, else depth is stale for that frame. Keep tolerances well under the sensor periods "
            "(100 ms at 10 Hz), or the previous frame's message passes as fresh", low=1.0, high=10000.0,
            runtime=True),
    Setting("sync.tolerance_ms.event", 30.0, "the same for event frames (event_input: image); event clouds "
            "are cut to the event_window_ms window instead", low=1.0, high=10000.0, runtime=True),
    Setting("sync.tolerance_ms.lidar", 60.0, "the same for LiDAR clouds", low=1.0, high=10000.0, runtime=True),
    Setting("sync.max_wait_ms", 30.0, "longest wait of a camera frame for partner messages still on their "
            "way (alive streams whose matching message has not arrived); 0: never wait. A stopped sensor "
            "is not waited for", low=0.0, high=200.0),
    Setting("sync.buffer_size", 16, "messages kept per modality for matching", low=1, high=1000),
    Setting("sync.reset_on_backwards_s", 1.0, "a camera stamp this far behind the last one resets the "
            "buffers (bag loop, simulator restart)", low=0.01, high=3600.0),
    # --- geometry --------------------------------------------------------------------------------
    Setting("use_tf", True, "look T_camera_lidar up in tf2 (when tf2_ros is installed); the parameters "
            "below are the fallback"),
    Setting("T_camera_lidar.translation", [0.0, 0.0, 0.0], "LiDAR origin in the camera optical frame [m]",
            low=-100.0, high=100.0, length=3),
    Setting("T_camera_lidar.rotation_xyzw", [0.5, -0.5, 0.5, 0.5], "rotation LiDAR -> camera optical frame "
            "as a quaternion (default: x-forward LiDAR to z-forward camera)", low=-1.0, high=1.0, length=4),
    Setting("T_camera_lidar.matrix", None, "4x4 row-major T_camera_lidar [r00, r01, r02, tx, r10, ..., 0, "
            "0, 0, 1]; when set it overrides translation and rotation", low=-1000.0, high=1000.0,
            length=16, kind="float_array"),
    # --- health ----------------------------------------------------------------------------------
    Setting("health.frozen_frames", 5, "identical content over this many messages is 'frozen'",
            low=2, high=1000, runtime=True),
    Setting("health.max_saturated_fraction", 0.5, "RGB with more saturated pixels than this is 'degraded' "
            "(overexposed)", low=0.0, high=1.0, runtime=True),
    Setting("health.max_dark_fraction", 0.6, "RGB with more near-black pixels than this is 'degraded' "
            "(underexposed)", low=0.0, high=1.0, runtime=True),
    Setting("health.min_valid_fraction", 0.3, "depth with fewer valid pixels than this is 'degraded'",
            low=0.0, high=1.0, runtime=True),
    Setting("health.min_points_in_image", 500, "LiDAR with fewer points in the camera image than this is "
            "'degraded'", low=0, high=10_000_000, runtime=True),
    Setting("health.min_event_rate_hz", 1000.0, "event rate below this is 'degraded'", low=0.0, high=1e10,
            runtime=True),
    Setting("health.max_event_rate_hz", 5e7, "event rate above this is 'degraded'", low=0.0, high=1e10,
            runtime=True),
    Setting("health.hysteresis_frames", 2, "frames a new state must persist before it is reported (not for "
            "invalid/missing/frozen); 2 at 10 Hz: a stopped sensor is stale within its tolerance + 200 ms",
            low=1, high=100, runtime=True),
    Setting("health.rate_window_s", 2.0, "window of the receive-rate average", low=0.1, high=60.0,
            runtime=True),
    Setting("camera_timeout_s", 1.0, "no camera image for this long is reported as an ERROR", low=0.05,
            high=60.0, runtime=True),
    Setting("diagnostics_period_s", 1.0, "period of /diagnostics on the wall clock, also under sim time "
            "(published on change too)", low=0.1, high=60.0),
    # --- outputs ---------------------------------------------------------------------------------
    Setting("publish.labels", True, "publish ~/output/labels", runtime=True),
    Setting("publish.color", True, "publish ~/output/color", runtime=True),
    Setting("publish.overlay", True, "publish ~/output/overlay", runtime=True),
    Setting("publish.painted_points", True, "publish ~/output/painted_points", runtime=True),
    Setting("publish.modality_health", True, "publish ~/output/modality_health", runtime=True),
    Setting("publish.depth", True, "publish ~/output/depth (32FC1, metres, NaN where there is no surface "
            "such as sky), from models with the depth task", runtime=True),
    Setting("overlay_alpha", 0.5, "weight of the class colours in the overlay", low=0.0, high=1.0, runtime=True),
)

TABLE: dict[str, Setting] = {s.name: s for s in SETTINGS}


class SettingsError(ValueError):
    """Parameter values that cannot be used; the message lists every problem, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid parameters:\n  " + "\n  ".join(self.problems))


def default(name: str):
    """The default of parameter `name` (a fresh list for arrays, so callers may keep it)."""
    value = TABLE[name].default
    return list(value) if isinstance(value, list) else value


def defaults() -> dict:
    """Every parameter's default, by name (None for an unset optional one)."""
    return {name: default(name) for name in TABLE}


def check(setting: Setting, value) -> str | None:
    """Why `value` is not acceptable for `setting`, or None. rclpy enforces types and scalar ranges
    through the descriptors too; this covers what it does not (arrays, choices, values read from
    a file offline) with the same rules."""
    if value is None:
        return None if setting.optional else f"{setting.name}: a value is required"
    kind = setting.kind
    if kind == "bool" and not isinstance(value, bool):
        return f"{setting.name}: expected true or false, got {value!r}"
    if kind == "str" and not isinstance(value, str):
        return f"{setting.name}: expected a string, got {value!r}"
    if kind in ("int", "float"):
        values = [value]
    elif kind in ("int_array", "float_array"):
        if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
            return f"{setting.name}: expected a list of numbers, got {value!r}"
        values = list(value)
        if setting.length is not None and len(values) != setting.length:
            return f"{setting.name}: expected {setting.length} numbers, got {len(values)}"
    else:
        values = []
    integral = kind in ("int", "int_array")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or (integral and not float(v).is_integer()):
            return f"{setting.name}: expected {'integers' if integral else 'numbers'}, got {value!r}"
        if not setting.low <= v <= setting.high:
            return f"{setting.name}: {v} is out of range (must be between {setting.low:g} and {setting.high:g})"
    if setting.choices and value not in setting.choices:
        return f"{setting.name}: '{value}' is not one of {', '.join(setting.choices)}"
    if setting.name == "T_camera_lidar.rotation_xyzw" and sum(v * v for v in values) < 1e-12:
        return f"{setting.name}: the quaternion must not be zero"
    return None


def validate(values: Mapping[str, object]) -> list[str]:
    """Every problem of a full set of values: unknown names and values the table refuses."""
    problems = [f"{name}: unknown parameter" for name in values if name not in TABLE]
    problems += [p for name, value in values.items() if name in TABLE and (p := check(TABLE[name], value))]
    return problems


# ------------------------------------------------------------------------------ parameter files

PARAMS_NAME = "sam_mmseg.yaml"
NODE_SECTIONS = ("/**", "sam_mmseg", "/sam_mmseg")
"""Sections of a ROS 2 parameter file that apply to the node, whatever its namespace."""


def flatten_parameters(tree: Mapping, prefix: str = "") -> dict:
    """Nested ros__parameters mapping -> {'sync.tolerance_ms.depth': 20.0, ...} (the node's names)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_parameters(value, name + "."))
        else:
            flat[name] = value
    return flat


def load_parameters(params_file: str | Path | None = None, overrides: Mapping | None = None) -> dict:
    """The values the node would run with: the defaults, then `params_file` (its `/**` and
    `sam_mmseg` sections, as for the node), then `overrides` (like `-p name:=value`)."""
    import yaml

    values = defaults()
    if params_file is not None:
        document = yaml.safe_load(Path(params_file).read_text()) or {}
        for section in NODE_SECTIONS:
            values.update(flatten_parameters((document.get(section) or {}).get("ros__parameters", {})))
    values.update(overrides or {})
    return values


# ------------------------------------------------------------------------------ rendered files

YAML_HEADER = """\
# Parameters of the sam_mmseg node with their defaults. GENERATED from sam_mmseg_ros/settings.py
# (`python -m sam_mmseg_ros.settings --write`); edit the table there, not this file. Copy it to
# change values. `ros2 param describe /sam_mmseg <name>` shows each description and range;
# "runtime" parameters can be changed with `ros2 param set` while the node runs.
# The "/**" key applies to the node whatever its namespace or name remapping.
"""
README_BEGIN = "<!-- parameter table: generated from sam_mmseg_ros/settings.py, do not edit -->"
README_END = "<!-- end of parameter table -->"


def _yaml_value(value) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value) if value == "" or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", value) else value
    if isinstance(value, float):
        return repr(value) if "e" not in repr(value) else f"{value:.1f}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def _limits(setting: Setting) -> str:
    if setting.choices:
        return " | ".join(setting.choices)
    if setting.low is None:
        return ""
    return f"{setting.low:g} – {setting.high:g}"


def render_yaml() -> str:
    """config/sam_mmseg.yaml: every parameter, nested by its dotted name, a comment above each."""
    lines = [YAML_HEADER.rstrip("\n"), "/**:", "  ros__parameters:"]
    open_path: list[str] = []
    for s in SETTINGS:
        *path, leaf = s.name.split(".")
        common = 0
        while common < min(len(path), len(open_path)) and path[common] == open_path[common]:
            common += 1
        for depth, key in enumerate(path[common:], start=common):
            lines.append(f"{'  ' * (2 + depth)}{key}:")
        open_path = path
        indent = "  " * (2 + len(path))
        about = s.description + (f" ({_limits(s)})" if _limits(s) else "") + (" [runtime]" if s.runtime else "")
        lines += textwrap.wrap(about, 100, initial_indent=indent + "# ", subsequent_indent=indent + "# ")
        if s.optional:
            lines.append(f"{indent}# {leaf}: [...]  (unset by default)")
        else:
            lines.append(f"{indent}{leaf}: {_yaml_value(s.default)}")
    return "\n".join(lines) + "\n"


def render_markdown_table() -> str:
    """README's parameter table, between its markers."""
    rows = [README_BEGIN, "", "| parameter | default | range / choices | runtime | meaning |",
            "|---|---|---|---|---|"]
    for s in SETTINGS:
        value = "unset" if s.optional else f"`{_yaml_value(s.default)}`"
        rows.append(f"| `{s.name}` | {value} | {_limits(s)} | {'yes' if s.runtime else ''} | {s.description} |")
    return "\n".join(rows + ["", README_END])


def readme_with_table(readme: str) -> str:
    """`readme` with the text between the table markers replaced by the rendered table."""
    begin, end = readme.index(README_BEGIN), readme.index(README_END) + len(README_END)
    return readme[:begin] + render_markdown_table() + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render config/sam_mmseg.yaml and README's parameter "
                                                 "table from the settings table.")
    parser.add_argument("--write", action="store_true", help="rewrite the files in this source tree")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    yaml_path, readme_path = repo / "config" / PARAMS_NAME, repo / "README.md"
    if not args.write:
        print(render_yaml())
        return 0
    yaml_path.write_text(render_yaml())
    readme_path.write_text(readme_with_table(readme_path.read_text()))
    print(f"wrote {yaml_path} and the table in {readme_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
