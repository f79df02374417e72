"""Live evaluation: replay a bag over DDS into a running sam_mmseg node and score what it publishes.

The node's `output/labels` are matched to the bag's ground truth by header stamp (the node keeps
the camera header), its `output/modality_health` gives the health counts and timeline, and its
`output/overlay` the mosaic. When the node publishes `output/depth` (a depth model) and the bag
has ground-truth depth, the depth is scored the same way. Latency is measured here, end to end: receipt of a frame's labels
minus receipt of the same camera image, both in this process over the same loopback DDS. Frames
the node published no labels for are reported as dropped; /diagnostics adds the node's own count.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from sam_mmseg_ros.contracts import BAG_TOPICS, MODALITIES
from sam_mmseg_ros.decoders.common import stamp_to_ns
from sam_mmseg_ros.decoders.image import image_to_numpy
from sam_mmseg_ros.eval.offline import count_messages, read_ground_truth
from sam_mmseg_ros.eval.results import FULL, MOSAIC_FRAMES, EvalResult, side_by_side
from sam_mmseg_ros.labels import overlay

log = logging.getLogger(__name__)


class _Recorder:
    """Subscriptions to the node's outputs (and its camera input, for latency); thread-safe."""

    def __init__(self, node, namespace: str):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image

        self.lock = threading.Lock()
        self.labels: dict[int, np.ndarray] = {}
        self.labels_received: dict[int, float] = {}
        self.camera_received: dict[int, float] = {}
        self.overlays: dict[int, np.ndarray] = {}
        self.depth: dict[int, np.ndarray] = {}
        self.health: dict[int, dict[str, tuple[str, float]]] = {}
        self.node_values: dict[str, str] = {}
        self.last_output = time.monotonic()
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        ns = namespace.rstrip("/")
        self.output_topics = [f"{ns}/output/labels", f"{ns}/output/modality_health", f"{ns}/output/overlay"]
        self.subscriptions = [
            node.create_subscription(Image, self.output_topics[0], self._on_labels, reliable),
            node.create_subscription(DiagnosticArray, self.output_topics[1], self._on_health, reliable),
            node.create_subscription(Image, self.output_topics[2], self._on_overlay, reliable),
            node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, reliable),
            node.create_subscription(Image, BAG_TOPICS["rgb"], self._on_camera, qos_profile_sensor_data),
            node.create_subscription(Image, f"{ns}/output/depth", self._on_depth, reliable),
        ]

    def _on_camera(self, msg) -> None:
        with self.lock:
            self.camera_received.setdefault(stamp_to_ns(msg.header.stamp), time.monotonic())

    def _on_labels(self, msg) -> None:
        now = time.monotonic()
        labels = np.array(image_to_numpy(msg).array, np.uint8)
        with self.lock:
            stamp = stamp_to_ns(msg.header.stamp)
            self.labels[stamp] = labels
            self.labels_received[stamp] = now
            self.last_output = now

    def _on_overlay(self, msg) -> None:
        image = np.array(image_to_numpy(msg).array, np.uint8)
        with self.lock:
            self.overlays[stamp_to_ns(msg.header.stamp)] = image

    def _on_depth(self, msg) -> None:
        depth = np.array(image_to_numpy(msg).array, np.float32)
        with self.lock:
            self.depth[stamp_to_ns(msg.header.stamp)] = depth

    def _on_health(self, msg) -> None:
        row = {}
        for status in msg.status:
            modality = status.name.rsplit(": ", 1)[-1]
            values = {kv.key: kv.value for kv in status.values}
            if modality in MODALITIES:
                row[modality] = (values.get("state", "invalid"), _float(values.get("router_weight")))
        with self.lock:
            self.health[stamp_to_ns(msg.header.stamp)] = row

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.endswith(": node"):
                with self.lock:
                    self.node_values = {kv.key: kv.value for kv in status.values}
                    self.node_values["message"] = status.message


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def quiet_domain_id(candidates: list[int], listen_s: float = 1.0) -> int:
    """The first ROS_DOMAIN_ID of `candidates` where no other ROS node is heard for `listen_s`, so a
    demo or test does not talk to someone else's node on this machine (the last one otherwise)."""
    import rclpy

    for domain in candidates:
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain)
        try:
            node = rclpy.create_node("sam_mmseg_domain_probe", context=context)
            time.sleep(listen_s)
            others = [n for n in node.get_node_names() if n != node.get_name()]
            node.destroy_node()
        finally:
            context.try_shutdown()
        if not others:
            return domain
        log.info("ROS_DOMAIN_ID %d is in use (%s), trying another", domain, ", ".join(others[:3]))
    return candidates[-1]


def replay_topics() -> list[str]:
    """The node's inputs, and /tf_static where tf2's messages are installed (a node with tf2 takes
    the LiDAR extrinsic from it; without them, from its parameters)."""
    import importlib.util

    from sam_mmseg_ros.data.bags import TF_STATIC_TOPIC

    return list(BAG_TOPICS.values()) + ([TF_STATIC_TOPIC] if importlib.util.find_spec("tf2_msgs") else [])


def wait_until_ready(node, recorder: _Recorder, timeout_s: float) -> None:
    """Until the node's model is loaded (its /diagnostics say so), it subscribes to every camera-rig
    topic the bag has, and our output subscriptions are matched to its publishers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with recorder.lock:
            state = recorder.node_values.get("model_state")
        if state == "failed":
            raise RuntimeError(f"the node could not load its model: {recorder.node_values.get('message')}")
        # The camera topic has our own latency probe too, so the node makes it two subscribers.
        subscribed = node.count_subscribers(BAG_TOPICS["rgb"]) >= 2 and node.count_subscribers(
            BAG_TOPICS["camera_info"]) >= 1
        matched = all(s.get_publisher_count() > 0 for s in recorder.subscriptions[:3])
        if state == "ready" and subscribed and matched:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the node was not ready within {timeout_s:.0f} s (model_state="
                       f"{recorder.node_values.get('model_state')}, outputs matched="
                       f"{[s.get_publisher_count() for s in recorder.subscriptions[:3]]})")


def evaluate_live(bag: str | Path, rate: float = 1.0, namespace: str = "/sam_mmseg", timeout_s: float = 120.0,
                  node=None, ready_timeout_s: float = 60.0, settle_s: float = 5.0, progress: bool = True,
                  keep_labels: bool = False, model: dict | None = None) -> EvalResult:
    """Replay `bag` into the node running under `namespace` and score its published labels.

    `node`: an rclpy node to subscribe and publish from (spun here in a background executor);
    None creates a private context with the package's DDS profile. Waits for the node to be
    ready, replays at `rate`, then waits until every camera frame has labels or none came for
    `settle_s`. `timeout_s` bounds the replay and the wait after it.
    """
    from rclpy.executors import SingleThreadedExecutor
    from tqdm import tqdm

    from sam_mmseg_ros.ros.replay import replay_bag

    bag = Path(bag)
    context = None
    if node is None:
        from sam_mmseg_ros.ros.dds import private_node

        node, context = private_node("sam_mmseg_live_eval")
    recorder = _Recorder(node, namespace)
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="live_eval_spin", daemon=True)
    spinner.start()
    camera_frames = count_messages(bag, BAG_TOPICS["rgb"])
    try:
        wait_until_ready(node, recorder, ready_timeout_s)
        stop = threading.Event()
        bar = tqdm(total=camera_frames, desc=f"live replay x{rate:g}", unit="frame", disable=not progress)
        replayer = threading.Thread(target=replay_bag, name="live_eval_replay", daemon=True, kwargs=dict(
            path=bag, rate=rate, clock=False, node=node, stop_event=stop, discovery_wait_s=1.5,
            topics=replay_topics()))
        replayer.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with recorder.lock:
                done, idle = len(recorder.labels), time.monotonic() - recorder.last_output
            bar.update(done - bar.n)
            if done >= camera_frames or (not replayer.is_alive() and idle > settle_s):
                break
            time.sleep(0.1)
        stop.set()
        replayer.join(timeout=5.0)
        bar.close()
        time.sleep(0.3)  # the health message of the last frame follows its labels
    finally:
        executor.shutdown(timeout_sec=2.0)
        spinner.join(timeout=2.0)
        for sub in recorder.subscriptions:
            node.destroy_subscription(sub)
        if context is not None:
            node.destroy_node()
            context.try_shutdown()
    return _score(bag, recorder, camera_frames, keep_labels, model)


def read_camera_images(bag: Path, stamps: set[int]) -> dict[int, np.ndarray]:
    """The bag's RGB images with these header stamps (for the ground-truth half of the mosaic)."""
    from sam_mmseg_ros.data.bags import read_bag

    images = {}
    for _topic, _t, _type, msg in read_bag(bag, [BAG_TOPICS["rgb"]]):
        stamp = stamp_to_ns(msg.header.stamp)
        if stamp in stamps:
            images[stamp] = np.array(image_to_numpy(msg).array, np.uint8)
    return images


def _score(bag: Path, recorder: _Recorder, camera_frames: int, keep_labels: bool, model: dict | None) -> EvalResult:
    truth, condition, truth_depth = read_ground_truth(bag)
    values = recorder.node_values
    result = EvalResult(source=str(bag), mode="live", model=model or {
        "backend": values.get("backend", "?"), "precision": values.get("precision", "?"),
        "input_size": [int(v) for v in values.get("input_size", "0x0").split("x")],
        "trained": values.get("trained") == "True", "checkpoint": None}, labels={} if keep_labels else None)
    result.camera_frames = camera_frames
    result.latency_note = ("end to end over loopback DDS: receipt of a frame's labels minus receipt of its "
                           "camera image, both measured in the evaluating process")
    scored = sorted(s for s in recorder.labels if s in truth)
    frame_index = {s: i for i, s in enumerate(sorted(truth))}
    mosaic_at = {scored[i] for i in np.linspace(0, len(scored) - 1, min(MOSAIC_FRAMES, len(scored))).round().astype(int)}
    cameras = read_camera_images(bag, mosaic_at)
    for stamp in scored:
        pred, gt = recorder.labels[stamp], truth[stamp]
        cond = condition.get(stamp, "unknown")
        result.add(FULL, cond, pred, gt)
        if stamp in recorder.depth and stamp in truth_depth:
            result.add_depth(FULL, cond, recorder.depth[stamp], truth_depth[stamp])
        if keep_labels:
            result.labels[stamp] = pred
        if stamp in recorder.camera_received:
            result.timings_ms["end_to_end"].append((recorder.labels_received[stamp] - recorder.camera_received[stamp]) * 1e3)
        if stamp in recorder.health:
            result.record_health(stamp, recorder.health[stamp])
        if stamp in mosaic_at and stamp in recorder.overlays and stamp in cameras:
            result.mosaic.append(side_by_side(recorder.overlays[stamp], overlay(cameras[stamp], gt)))
            result.mosaic_titles.append(f"{cond}, frame {frame_index[stamp]}")
    result.frames = len(scored)
    missing = sorted(set(truth) - set(recorder.labels))
    result.dropped_frames = len(missing)
    if missing:
        result.notes.append("camera frames without output: " + ", ".join(str(frame_index[s]) for s in missing))
    unmatched = len(recorder.labels) - len(scored)
    if unmatched:
        result.notes.append(f"{unmatched} label images had stamps that are not in the bag (another node on "
                            "this ROS_DOMAIN_ID?); they were not scored")
    if "dropped_frames" in values:
        result.notes.append(f"last /diagnostics of the node: published_frames={values.get('published_frames')}, "
                            f"dropped_frames={values.get('dropped_frames')} (camera frames replaced in its "
                            "latest-frame slot before inference)")
    return result
