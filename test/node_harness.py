"""Test harness for the sam_mmseg node over real DDS: start the node through its console script,
feed it a small synthetic sensor rig at 10 Hz from a background thread, and record its outputs.

The rig is deliberately simple (a textured image, a depth ramp, a LiDAR grid in front of the
camera, a steady event stream) and changes a little every frame, so every modality is healthy
and none looks frozen; tests then break one stream at a time through `Feeder.override`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import RosProcess, ros_env
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from sam_mmseg_ros.contracts import BAG_TOPICS, EventArray
from sam_mmseg_ros.decoders.common import stamp_to_ns
from sam_mmseg_ros.ros.messages import (
    array_to_pointcloud2,
    camera_model_to_camera_info,
    events_to_pointcloud2,
    numpy_to_image,
)
from sam_mmseg_ros.sensors.camera import CameraModel

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "config" / "sam_mmseg.yaml"
NODE_SCRIPT = Path(sys.executable).parent / "sam_mmseg_node"
WIDTH, HEIGHT = 128, 96
RATE_HZ = 10.0
CAMERA_FRAME, LIDAR_FRAME = "camera_optical", "lidar"
OUTPUT_TOPICS = {
    "labels": ("/sam_mmseg/output/labels", Image),
    "color": ("/sam_mmseg/output/color", Image),
    "overlay": ("/sam_mmseg/output/overlay", Image),
    "painted_points": ("/sam_mmseg/output/painted_points", PointCloud2),
    "modality_health": ("/sam_mmseg/output/modality_health", DiagnosticArray),
    "diagnostics": ("/diagnostics", DiagnosticArray),
}
TEST_INPUT_SIZE = 64
FAST_TEST_PARAMS = ("backend:=torch", f"input_size:=[{TEST_INPUT_SIZE},{TEST_INPUT_SIZE}]", "precision:=fp32",
                    "device:=cpu")


def make_test_checkpoint(path: Path) -> Path:
    """An untrained `tiny` model with a 64x64 input: fast on CPU (~60 ms a frame on one core)."""
    import torch

    from sam_mmseg_ros.model import build_model
    from sam_mmseg_ros.model.checkpoint import save_checkpoint

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("tiny", img_size=TEST_INPUT_SIZE)
    return save_checkpoint(path, model, trained=False)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """One test model per session (import this fixture into a test module to use it)."""
    return make_test_checkpoint(tmp_path_factory.mktemp("model") / "tiny64.pt")


def node_command(*params: str, executable: Path | None = None) -> list[str]:
    """The node's command line: the shipped params file plus small, fast test overrides."""
    args = [str(executable or NODE_SCRIPT), "--ros-args", "--params-file", str(PARAMS_FILE)]
    for p in (*FAST_TEST_PARAMS, *params):
        args += ["-p", p]
    return args


def node_env(domain_id: int) -> dict:
    env = ros_env(domain_id)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RCUTILS_COLORIZED_OUTPUT="0")
    return env


def start_node(domain_id: int, checkpoint: Path, *params: str) -> RosProcess:
    return RosProcess(node_command(f"checkpoint:={checkpoint}", *params), node_env(domain_id), cwd=REPO)


# ------------------------------------------------------------------------------------- the sensor rig


class Rig:
    """Messages for one frame of a camera (128x96 by default) with depth, events and LiDAR at the
    same stamp."""

    def __init__(self, seed: int = 0, width: int = WIDTH, height: int = HEIGHT):
        self.rng = np.random.default_rng(seed)
        self.width, self.height = width, height
        self.camera = CameraModel.from_fov(width, height, 90.0, CAMERA_FRAME)
        yy, xx = np.mgrid[0:height, 0:width]
        self.base = np.stack([xx * 2 % 256, yy * 2 % 256, (xx + yy) % 256], axis=-1).astype(np.int16)
        self.depth = (5.0 + 20.0 * yy / height).astype(np.float32)
        # LiDAR frame: x forward, y left, z up; a wall of points 10 m ahead, filling the view.
        ys, zs = np.meshgrid(np.linspace(-8, 8, 60), np.linspace(-6, 6, 40))
        self.lidar = np.stack([np.full(ys.size, 10.0), ys.ravel(), zs.ravel()], axis=1).astype(np.float32)

    def rgb(self, stamp_ns: int) -> Image:
        noise = self.rng.integers(-20, 21, self.base.shape)
        image = np.clip(self.base + noise + 60, 0, 255).astype(np.uint8)
        return numpy_to_image(image, "rgb8", stamp_ns=stamp_ns, frame_id=CAMERA_FRAME)

    def camera_info(self, stamp_ns: int) -> CameraInfo:
        return camera_model_to_camera_info(self.camera, stamp_ns=stamp_ns, frame_id=CAMERA_FRAME)

    def depth_image(self, stamp_ns: int) -> Image:
        depth = self.depth + self.rng.normal(0, 0.01, self.depth.shape).astype(np.float32)
        return numpy_to_image(depth, "32FC1", stamp_ns=stamp_ns, frame_id=CAMERA_FRAME)

    def events(self, stamp_ns: int, count: int = 3000) -> PointCloud2:
        """Events spread over the 100 ms before the stamp (one camera period)."""
        t = np.sort(stamp_ns - self.rng.integers(0, int(1e9 / RATE_HZ), count))
        w, h = self.width, self.height
        events = EventArray(self.rng.integers(0, w, count), self.rng.integers(0, h, count),
                            t.astype(np.int64), self.rng.choice(np.array([-1, 1], np.int8), count), w, h)
        return events_to_pointcloud2(events, stamp_ns=int(t[0]), frame_id=CAMERA_FRAME)

    def lidar_cloud(self, stamp_ns: int) -> PointCloud2:
        xyz = self.lidar + self.rng.normal(0, 0.01, self.lidar.shape).astype(np.float32)
        points = np.zeros(len(xyz), dtype=[("x", np.float32), ("y", np.float32), ("z", np.float32)])
        points["x"], points["y"], points["z"] = xyz.T
        return array_to_pointcloud2(points, stamp_ns=stamp_ns, frame_id=LIDAR_FRAME)

    def frame(self, stamp_ns: int) -> dict:
        """The camera image last: the node assembles a frame when the camera image arrives."""
        return {"camera_info": self.camera_info(stamp_ns), "depth": self.depth_image(stamp_ns),
                "event": self.events(stamp_ns), "lidar": self.lidar_cloud(stamp_ns), "rgb": self.rgb(stamp_ns)}


# ------------------------------------------------------------------------------------ the ROS side


class Harness:
    """A test-side rclpy context in the node's domain: input publishers, output recorders, and a
    feeder thread publishing the rig at 10 Hz."""

    def __init__(self, domain_id: int, rig: Rig | None = None, partner_delay_s: float | None = None):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("sam_mmseg_test", context=self.context)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        types = {"camera_info": CameraInfo, "depth": Image, "event": PointCloud2, "lidar": PointCloud2,
                 "rgb": Image}
        self.pubs = {k: self.node.create_publisher(types[k], BAG_TOPICS[k], reliable) for k in types}
        self.received: dict[str, list[tuple[float, object]]] = {k: [] for k in OUTPUT_TOPICS}
        self.receive_wall_ns: dict[str, list[int]] = {k: [] for k in OUTPUT_TOPICS}
        self._lock = threading.Lock()
        for key, (topic, msg_type) in OUTPUT_TOPICS.items():
            self.node.create_subscription(msg_type, topic, self._recorder(key), QoSProfile(
                depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_forever, daemon=True)
        self._spin.start()
        self.rig = rig or Rig()
        self.active = {k: True for k in types}
        self.override: dict[str, Callable[[int], object]] = {}  # modality -> stamp_ns -> message
        # None: every input before the camera image, as bags record them. A delay: the camera image
        # first and its partners that long after it, as live sensors on separate topics may arrive.
        self.partner_delay_s = partner_delay_s
        self.published: list[int] = []  # camera stamps
        self.last_stamp: dict[str, int] = {}  # per input: stamp of the last message published
        self._feed_stop = threading.Event()
        self._feeder: threading.Thread | None = None

    def _spin_forever(self):
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - the context shuts down under the spinning executor
            pass

    def _recorder(self, key: str):
        def record(msg):
            wall_ns = time.time_ns()
            with self._lock:
                self.received[key].append((time.monotonic(), msg))
                self.receive_wall_ns[key].append(wall_ns)
        return record

    def messages(self, key: str, since: float = 0.0) -> list:
        with self._lock:
            return [m for t, m in self.received[key] if t >= since]

    def receive_times(self, key: str) -> list[tuple[object, int]]:
        """(message, wall-clock receive time in ns) of every message of `key`."""
        with self._lock:
            return [(m, wall) for (_, m), wall in zip(self.received[key], self.receive_wall_ns[key], strict=True)]

    def start_feeding(self) -> None:
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        period = 1.0 / RATE_HZ
        next_time = time.monotonic()
        order = list(self.pubs)  # the order of Rig.frame: the camera image last
        if self.partner_delay_s is not None:
            order = ["rgb", *order[:-1]]
        while not self._feed_stop.is_set():
            stamp = time.time_ns()
            messages = self.rig.frame(stamp)
            for key in order:
                pub = self.pubs[key]
                if key in self.override:
                    msg = self.override[key](stamp)
                elif self.active[key]:
                    msg = messages[key]
                else:
                    continue
                pub.publish(msg)
                self.last_stamp[key] = stamp
                if key == "rgb":
                    self.published.append(stamp)
                    if self.partner_delay_s is not None:
                        time.sleep(self.partner_delay_s)
            next_time += period
            self._feed_stop.wait(max(0.0, next_time - time.monotonic()))

    def stop_feeding(self) -> None:
        self._feed_stop.set()
        if self._feeder is not None:
            self._feeder.join(timeout=2)

    def set_active(self, key: str, active: bool) -> int | None:
        """Start or stop one input; returns the stamp of its last message (once the feeder has
        finished the frame it may be in the middle of)."""
        self.active[key] = active
        time.sleep(1.5 / RATE_HZ)
        return self.last_stamp.get(key)

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str, proc=None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if proc is not None and proc.proc.poll() is not None:
                raise AssertionError(f"node exited ({proc.proc.returncode}) while waiting for {what}:\n"
                                     f"{proc.output}")
            time.sleep(0.05)
        tail = "" if proc is None else "\n" + "\n".join(proc.lines[-40:])
        raise AssertionError(f"timed out after {timeout} s waiting for {what}{tail}")

    def wait_for_output(self, proc, timeout: float = 60.0) -> None:
        """Until the node publishes labels (model loaded, DDS matched)."""
        def ready():
            failed = [line for line in proc.lines if "model failed to load" in line]
            assert not failed, "\n".join(proc.lines)
            return len(self.messages("labels")) >= 3

        self.wait_until(ready, timeout, "the first labels", proc)

    def close(self) -> None:
        self.stop_feeding()
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


# ------------------------------------------------------------------------------------ reading outputs


def stamp_ns(msg) -> int:
    return stamp_to_ns(msg.header.stamp)


def health_by_modality(msg: DiagnosticArray) -> dict[str, dict[str, str]]:
    """modality -> {state, reason, router_weight, ..., level, message} from one health message."""
    out = {}
    for status in msg.status:
        values = {kv.key: kv.value for kv in status.values}
        values["level"] = status.level[0]
        values["message"] = status.message
        out[status.name.split(": ", 1)[-1]] = values
    return out


def node_status(msg: DiagnosticArray) -> dict | None:
    return health_by_modality(msg).get("node")
