"""The node's ~/output/depth over real DDS: held-out synthetic frames replayed from a bag into the
node running the shipped multi-task model (`synthetic_tiny_talora.pt`); what it publishes is
scored against the bag's ground-truth depth and equals what offline evaluation of the same bag
computes with the same stages."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("rclpy")

from node_harness import start_node  # noqa: E402
from ros_helpers import PROFILE_VARIABLE, random_domain_id, ros_env  # noqa: E402

from sam_mmseg_ros.contracts import GROUND_TRUTH_DEPTH_TOPIC  # noqa: E402
from sam_mmseg_ros.data.bags import read_bag, write_bag  # noqa: E402
from sam_mmseg_ros.data.synthetic import CAMERA_FRAME, SequenceConfig, generate_sequence  # noqa: E402
from sam_mmseg_ros.decoders.common import stamp_to_ns  # noqa: E402
from sam_mmseg_ros.decoders.image import image_to_numpy  # noqa: E402
from sam_mmseg_ros.eval.results import FULL  # noqa: E402
from sam_mmseg_ros.model.checkpoint import MULTITASK_CHECKPOINT  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
SIZE = 192  # camera; the model runs at 128: the node upsamples its depth 1.5x
FRAMES = 4


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("depth_node") / "bag"
    write_bag(generate_sequence(SequenceConfig(width=SIZE, height=SIZE, num_frames=FRAMES, condition="cloud",
                                               seed=9700)), path)
    return path


def test_node_publishes_metric_depth_that_matches_the_ground_truth(bag, monkeypatch):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from sam_mmseg_ros.engine.torch_backend import TorchBackend
    from sam_mmseg_ros.eval.offline import evaluate_bag
    from sam_mmseg_ros.ros.dds import private_node
    from sam_mmseg_ros.ros.live_eval import evaluate_live

    domain_id = random_domain_id()
    env = ros_env(domain_id)
    for key in (PROFILE_VARIABLE, "RMW_IMPLEMENTATION", "ROS_DOMAIN_ID"):
        monkeypatch.setenv(key, env[key])
    proc = start_node(domain_id, MULTITASK_CHECKPOINT, "input_size:=[0,0]")
    node, context = private_node("sam_mmseg_depth_probe")
    received: dict[int, object] = {}
    lock = threading.Lock()

    def record(msg):
        with lock:
            received[stamp_to_ns(msg.header.stamp)] = msg

    node.create_subscription(Image, "/sam_mmseg/output/depth", record,
                             QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE))
    try:
        # 2 s per frame: the node (one CPU thread, on a shared machine) never has to drop one.
        live = evaluate_live(bag, rate=0.05, node=node, ready_timeout_s=180, timeout_s=120, progress=False)
    finally:
        context.try_shutdown()
        proc.stop(timeout=30)
    assert "Traceback" not in proc.output, proc.output[-3000:]

    truth = {stamp_to_ns(m.header.stamp): np.array(image_to_numpy(m).array)
             for _, _, _, m in read_bag(bag, [GROUND_TRUTH_DEPTH_TOPIC])}
    assert live.frames == FRAMES and set(received) == set(truth)
    for msg in received.values():
        assert (msg.encoding, msg.width, msg.height, msg.header.frame_id) == ("32FC1", SIZE, SIZE, CAMERA_FRAME)
        depth = np.array(image_to_numpy(msg).array)
        assert np.isfinite(depth).any() and np.nanmin(depth) > 0  # NaN only where the model sees sky

    errors = live.depth[FULL]
    # Metres, not millimetres or inverse depth. The shipped multi-task model was trained on the
    # previous synthetic world (straight streets, one camera); on this world's streets its AbsRel
    # is 0.16-0.9 (docs/RESULTS.md), so this test checks the node, not the model's quality.
    assert errors.count > 0 and errors.abs_rel() < 1.0, errors.to_dict()
    offline = evaluate_bag(bag, TorchBackend.from_checkpoint(MULTITASK_CHECKPOINT), subsets={}, progress=False)
    assert offline.depth[FULL].abs_rel() == pytest.approx(errors.abs_rel(), rel=1e-4)
    assert offline.depth[FULL].count == errors.count  # the same pixels predicted (NaN = sky) live and offline
