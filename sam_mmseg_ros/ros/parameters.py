"""The node's parameters: one table with defaults, descriptions, ranges and choices.

Declared from this table, so `ros2 param describe` shows the same text as the README, and every
value (from the params file at start-up or `ros2 param set` later) is checked by the same rules.
Parameters marked `runtime` can change while the node runs; the rest are read-only after start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from sam_mmseg_ros.health import HealthThresholds


@dataclass(frozen=True)
class Spec:
    name: str
    default: object  # a value, or a Parameter.Type for "no default" (optional array)
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    runtime: bool = False
    length: int | None = None  # required array length


BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")

SPECS: tuple[Spec, ...] = (
    Spec("backend", "auto", "inference backend; auto tries TensorRT, then ONNX Runtime, then torch",
         choices=BACKENDS),
    Spec("checkpoint", "", "model weights (.pt); empty: the model shipped with the package, or an "
         "untrained tiny model (reported as an ERROR diagnostic)"),
    Spec("onnx_path", "", "ONNX model for the onnxruntime / tensorrt backends; empty: export from checkpoint"),
    Spec("engine_path", "", "TensorRT engine file; empty: the engine cache"),
    Spec("engine_cache_dir", "", "where built TensorRT engines are kept; empty: the default cache"),
    Spec("allow_engine_build", True, "build a TensorRT engine when none valid exists (else fail clearly)"),
    Spec("precision", "fp16", "inference precision", choices=("fp16", "fp32")),
    Spec("device", "", "torch device (cpu, cuda, cuda:1); empty: CUDA when available"),
    Spec("cpu_threads", 1, "torch CPU threads for CPU inference; 0: torch's default (all cores). 1 by "
         "default: a node shares the CPU with the rest of the stack, and oversubscribed threads made "
         "inference ~10x slower on a busy 2-core machine", low=0, high=256),
    Spec("input_size", [0, 0], "model input [height, width] in pixels; [0, 0]: the model's own size",
         low=0, high=4096, length=2),
    Spec("enable.depth", True, "subscribe to ~/input/depth and use it"),
    Spec("enable.event", True, "subscribe to ~/input/events and use it"),
    Spec("enable.lidar", True, "subscribe to ~/input/lidar and use it"),
    Spec("event_input", "cloud", "~/input/events type: PointCloud2 of events, or a ready event-frame Image",
         choices=("cloud", "image")),
    Spec("event_sensor_size", [0, 0], "event sensor [width, height]; [0, 0]: the camera resolution",
         low=0, high=16384, length=2),
    Spec("event_window_ms", 50.0, "events in this window before the camera stamp form one frame",
         low=1.0, high=1000.0),
    Spec("lidar_max_range_m", 80.0, "LiDAR points farther than this are ignored", low=1.0, high=1000.0),
    Spec("sync.tolerance_ms.depth", 20.0, "depth matched to a camera frame must be stamped within this of it, "
         "else depth is stale for that frame", low=1.0, high=10000.0, runtime=True),
    Spec("sync.tolerance_ms.event", 30.0, "the same for event frames (event_input: image); event clouds are "
         "cut to the event_window_ms window instead", low=1.0, high=10000.0, runtime=True),
    Spec("sync.tolerance_ms.lidar", 60.0, "the same for LiDAR clouds", low=1.0, high=10000.0, runtime=True),
    Spec("sync.max_wait_ms", 30.0, "longest wait of a camera frame for partner messages still on their way "
         "(alive streams whose matching message has not arrived); 0: never wait. A stopped sensor is "
         "not waited for", low=0.0, high=200.0),
    Spec("sync.buffer_size", 16, "messages kept per modality for matching", low=1, high=1000),
    Spec("sync.reset_on_backwards_s", 1.0, "a camera stamp this far behind the last one resets the buffers "
         "(bag loop, simulator restart)", low=0.0, high=3600.0),
    Spec("T_camera_lidar.translation", [0.0, 0.0, 0.0], "LiDAR origin in the camera optical frame [m]",
         length=3),
    Spec("T_camera_lidar.rotation_xyzw", [0.5, -0.5, 0.5, 0.5], "rotation LiDAR -> camera optical frame "
         "as a quaternion (default: x-forward LiDAR to z-forward camera)", length=4),
    Spec("T_camera_lidar.matrix", Parameter.Type.DOUBLE_ARRAY, "4x4 row-major T_camera_lidar; when set it "
         "overrides translation and rotation", length=16),
    Spec("use_tf", True, "look T_camera_lidar up in tf2 (when tf2_ros is installed); parameters are the fallback"),
    Spec("publish.labels", True, "publish ~/output/labels", runtime=True),
    Spec("publish.color", True, "publish ~/output/color", runtime=True),
    Spec("publish.overlay", True, "publish ~/output/overlay", runtime=True),
    Spec("publish.painted_points", True, "publish ~/output/painted_points", runtime=True),
    Spec("publish.modality_health", True, "publish ~/output/modality_health", runtime=True),
    Spec("overlay_alpha", 0.5, "weight of the class colours in the overlay", low=0.0, high=1.0, runtime=True),
    Spec("camera_timeout_s", 1.0, "no camera image for this long is reported as an ERROR", low=0.05,
         high=60.0, runtime=True),
    Spec("input_reliability", "best_effort", "input QoS reliability (sensor-data profile otherwise)",
         choices=("best_effort", "reliable")),
    Spec("input_queue_depth", 5, "input QoS history depth", low=1, high=100),
    Spec("diagnostics_period_s", 1.0, "period of /diagnostics (also published on change)", low=0.1,
         high=60.0),
)


HEALTH_DESCRIPTIONS = {
    "frozen_frames": "identical content over this many messages is 'frozen'",
    "max_saturated_fraction": "RGB with more saturated pixels than this is 'degraded' (overexposed)",
    "max_dark_fraction": "RGB with more near-black pixels than this is 'degraded' (underexposed)",
    "min_valid_fraction": "depth with fewer valid pixels than this is 'degraded'",
    "min_points_in_image": "LiDAR with fewer points in the camera image than this is 'degraded'",
    "min_event_rate_hz": "event rate below this is 'degraded'",
    "max_event_rate_hz": "event rate above this is 'degraded'",
    "hysteresis_frames": "frames a new state must persist before it is reported (not for invalid/missing/frozen)",
    "rate_window_s": "window of the receive-rate average",
}


def health_specs() -> tuple[Spec, ...]:
    """One runtime parameter `health.<field>` per numeric HealthThresholds field, so the health
    module stays the single owner of threshold names and defaults."""
    specs = []
    for f in fields(HealthThresholds):
        default = getattr(HealthThresholds(), f.name)
        if isinstance(default, bool) or not isinstance(default, int | float):
            continue
        doc = HEALTH_DESCRIPTIONS.get(f.name, "health threshold, see sam_mmseg_ros.health.HealthThresholds")
        specs.append(Spec(f"health.{f.name}", default, doc, low=0, runtime=True))
    return tuple(specs)


def descriptor(spec: Spec) -> ParameterDescriptor:
    text = spec.description
    if spec.choices:
        text += f" (one of: {', '.join(spec.choices)})"
    d = ParameterDescriptor(description=text, read_only=not spec.runtime)
    scalar = spec.default if not isinstance(spec.default, list) else None
    if spec.low is not None and spec.high is not None and isinstance(scalar, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high))]
    elif spec.low is not None and spec.high is not None and isinstance(scalar, int) and not isinstance(
            scalar, bool):
        d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    return d


def check(spec: Spec, value) -> str | None:
    """Why `value` is not acceptable for `spec`, or None. Ranges of scalars are also enforced by
    rclpy through the descriptor; arrays, choices and open ranges are checked here."""
    if value is None:
        return None
    if spec.choices and value not in spec.choices:
        return f"{spec.name}: '{value}' is not one of {', '.join(spec.choices)}"
    if spec.length is not None and len(value) != spec.length:
        return f"{spec.name}: expected {spec.length} numbers, got {len(value)}"
    values = [value] if isinstance(value, str | bool | int | float) else list(value)
    if spec.low is not None and not isinstance(value, bool | str):
        for v in values:
            if v < spec.low or (spec.high is not None and v > spec.high):
                upper = f" and {spec.high}" if spec.high is not None else ""
                return f"{spec.name}: {v} is out of range (must be between {spec.low}{upper})"
    if spec.name == "T_camera_lidar.rotation_xyzw" and sum(v * v for v in values) < 1e-12:
        return f"{spec.name}: the quaternion must not be zero"
    return None
