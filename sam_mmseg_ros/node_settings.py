"""The node's parameters as typed settings, built by one path at start-up and at run time.

`NodeSettings.from_values` takes every parameter value by name (the node's own, or
`settings.load_parameters` for a parameter file offline), checks each against the table and the
components' consistency rules (e.g. min < max event rate), and returns what the node's parts
use. A run-time change rebuilds the whole object this way and the node applies it with one call,
so a value is never accepted at run time that would have stopped the node at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam_mmseg_ros.contracts import INPUT_TOPICS
from sam_mmseg_ros.health import HealthThresholds
from sam_mmseg_ros.sensors.encodings import check_encodings, live_encodings, resolve
from sam_mmseg_ros.sensors.preprocess import PreprocessConfig
from sam_mmseg_ros.settings import SettingsError, defaults, load_parameters, validate
from sam_mmseg_ros.sync import SYNCED_MODALITIES, SyncConfig

INPUT_KINDS = tuple(INPUT_TOPICS)  # rgb, camera_info, depth, event, lidar
OUTPUTS = ("labels", "color", "overlay", "painted_points", "modality_health", "depth")
TRANSPORT_SUFFIX = {"raw": "", "compressed": "/compressed", "compressedDepth": "/compressedDepth"}
"""image_transport's topic for a transport: <base topic><suffix>."""


@dataclass(frozen=True)
class ModelSettings:
    """What `engine.create_backend` is asked for."""

    backend: str
    checkpoint: str | None
    onnx_path: str | None
    engine_path: str | None
    engine_trusted: bool
    engine_cache_dir: str | None
    allow_engine_build: bool
    engine_workspace_mib: int | None  # None: sized to the GPU
    use_cuda_graph: bool
    precision: str
    device: str | None
    cpu_threads: int
    input_size: tuple[int, int] | None  # (height, width); None: the model's own
    depth_task: bool  # False: the model runs without its depth task

    def backend_options(self) -> dict:
        """Keyword arguments of `engine.create_backend`."""
        return dict(checkpoint=self.checkpoint, onnx_path=self.onnx_path, engine_path=self.engine_path,
                    engine_trusted=self.engine_trusted, precision=self.precision, device=self.device,
                    input_size=self.input_size, allow_build=self.allow_engine_build, cache_dir=self.engine_cache_dir,
                    workspace_mib=self.engine_workspace_mib, use_cuda_graph=self.use_cuda_graph,
                    tasks=None if self.depth_task else ("semantic",))


@dataclass(frozen=True)
class NodeSettings:
    values: dict  # every parameter by name, as given
    model: ModelSettings
    enabled: dict[str, bool]  # rgb and the synced modalities
    inputs: dict[str, str]  # depth: "depth" | "image", event: "cloud" | "image" | "packet", lidar: "cloud" | "image"
    topics: dict[str, str]  # input kind -> topic of the topic map ("" keeps ~/input/<kind>)
    rgb_transport: str  # "raw" | "compressed"
    depth_transport: str  # "raw" | "compressedDepth"
    event_sensor_size: tuple[int, int]  # (width, height); (0, 0): the camera's
    event_window_ms: float
    lidar_max_range_m: float
    lidar_intensity_scale: float  # 0: by the intensity field's datatype
    sync: SyncConfig
    thresholds: HealthThresholds
    use_tf: bool
    T_camera_lidar: np.ndarray  # from the parameters; tf2 overrides it live when available
    input_reliability: str
    input_queue_depth: int
    outputs: dict[str, bool]  # publish.<output>
    overlay_alpha: float
    camera_timeout_s: float
    diagnostics_period_s: float

    @classmethod
    def from_values(cls, values: dict) -> NodeSettings:
        """Typed settings from parameter values; raises SettingsError listing every problem."""
        problems = validate(values)
        if problems:
            raise SettingsError(problems)
        v = {**defaults(), **values}
        try:
            return cls._build(v)
        except (TypeError, ValueError) as exc:  # the components' own consistency rules
            raise SettingsError([str(exc)]) from exc

    @classmethod
    def _build(cls, v: dict) -> NodeSettings:
        enabled = {"rgb": True, **{m: bool(v[f"enable.{m}"]) for m in SYNCED_MODALITIES}}
        sync = SyncConfig(tolerance_ms={m: float(v[f"sync.tolerance_ms.{m}"]) for m in SYNCED_MODALITIES},
                          event_window_ms=float(v["event_window_ms"]),
                          buffer_size=dict.fromkeys(SYNCED_MODALITIES, int(v["sync.buffer_size"])),
                          enabled={m: enabled[m] for m in SYNCED_MODALITIES},
                          reset_on_backwards_s=float(v["sync.reset_on_backwards_s"]),
                          max_wait_ms=float(v["sync.max_wait_ms"]))
        thresholds = HealthThresholds(**{n[len("health."):]: value for n, value in v.items()
                                         if n.startswith("health.")})
        height, width = (int(x) for x in v["input_size"])
        model = ModelSettings(
            backend=v["backend"], checkpoint=v["checkpoint"] or None, onnx_path=v["onnx_path"] or None,
            engine_path=v["engine_path"] or None, engine_trusted=bool(v["engine_trusted"]),
            engine_cache_dir=v["engine_cache_dir"] or None, allow_engine_build=bool(v["allow_engine_build"]),
            engine_workspace_mib=int(v["engine_workspace_mib"]) or None, use_cuda_graph=bool(v["use_cuda_graph"]),
            precision=v["precision"],
            device=v["device"] or None, cpu_threads=int(v["cpu_threads"]),
            input_size=(height, width) if height and width else None, depth_task=bool(v["depth_task"]))
        event_width, event_height = (int(x) for x in v["event_sensor_size"])
        inputs = {m: str(v[f"{m}_input"]) for m in SYNCED_MODALITIES}
        return cls(values=dict(v), model=model, enabled=enabled, inputs=inputs,
                   topics={kind: str(v[f"topics.{kind}"]) for kind in INPUT_KINDS},
                   rgb_transport=str(v["rgb_transport"]), depth_transport=str(v["depth_transport"]),
                   event_sensor_size=(event_width, event_height), event_window_ms=float(v["event_window_ms"]),
                   lidar_max_range_m=float(v["lidar_max_range_m"]),
                   lidar_intensity_scale=float(v["lidar_intensity_scale"]), sync=sync, thresholds=thresholds,
                   use_tf=bool(v["use_tf"]), T_camera_lidar=parameter_transform(v),
                   input_reliability=v["input_reliability"], input_queue_depth=int(v["input_queue_depth"]),
                   outputs={o: bool(v[f"publish.{o}"]) for o in OUTPUTS},
                   overlay_alpha=float(v["overlay_alpha"]), camera_timeout_s=float(v["camera_timeout_s"]),
                   diagnostics_period_s=float(v["diagnostics_period_s"]))

    @classmethod
    def from_file(cls, params_file: str | Path | None = None, overrides: dict | None = None) -> NodeSettings:
        """The settings of a node started with `--params-file params_file -p overrides...`."""
        return cls.from_values(load_parameters(params_file, overrides))

    def preprocess_config(self, input_size, model_encodings: dict | None = None,
                          model_source: str = "the model") -> PreprocessConfig:
        """The encoders' settings once the model is loaded: its input size, and its encodings (its
        checkpoint's record, `backend.metadata["encodings"]`; None: the package's native ones).
        Raises EncodingError, naming the model's encoding and what the node computes, when an
        enabled raw input (not a ready image) cannot be encoded the way the model was trained."""
        encodings = resolve(model_encodings, model_source)
        provides = {m: None if self.inputs[m] == "image" else live_encodings(m)
                    for m in SYNCED_MODALITIES if self.enabled[m]}
        check_encodings(encodings, {"rgb": live_encodings("rgb"), **provides}, model_source,
                        "this node (" + ", ".join(f"{m}_input: {self.inputs[m]}" for m in provides) + ")")
        return PreprocessConfig(input_size=tuple(int(x) for x in input_size), encodings=encodings,
                                event_window_ms=self.event_window_ms, lidar_max_range_m=self.lidar_max_range_m,
                                lidar_intensity_scale=self.lidar_intensity_scale or None)

    def transport(self, kind: str) -> str:
        """The image_transport transport of an input kind ("raw" for those without one)."""
        return {"rgb": self.rgb_transport, "depth": self.depth_transport}.get(kind, "raw")

    def input_topic(self, kind: str, node: str = "~") -> str:
        """The topic the node subscribes to for `kind`: the topic map's, else its own input topic
        (node-relative, or resolved for a node named `node`, e.g. "/sam_mmseg"), with the
        transport's suffix."""
        base = self.topics.get(kind) or INPUT_TOPICS[kind].replace("~", node.rstrip("/"), 1)
        return base + TRANSPORT_SUFFIX[self.transport(kind)]


def quaternion_matrix(translation, xyzw) -> np.ndarray:
    """4x4 transform from a translation and a (normalized here) x, y, z, w quaternion."""
    x, y, z, w = np.asarray(xyzw, np.float64) / np.linalg.norm(xyzw)
    T = np.eye(4)
    T[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                 [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                 [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    T[:3, 3] = translation
    return T


def parameter_transform(values: dict) -> np.ndarray:
    """T_camera_lidar from the parameters: the matrix when set, else translation + quaternion."""
    matrix = values.get("T_camera_lidar.matrix")
    if matrix:
        return np.asarray(matrix, np.float64).reshape(4, 4)
    return quaternion_matrix(values["T_camera_lidar.translation"], values["T_camera_lidar.rotation_xyzw"])
