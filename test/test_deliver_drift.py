"""Train on DELIVER, run on the car: the node's DELIVER-style encoders against DELIVER's files.

The synthetic generator has the raw data of a frame (metric depth, events, the LiDAR cloud) and
can also write the files DELIVER would hold for it (data/deliver_render.py). The live path
(FrameBundle -> sensors.preprocess in the DELIVER encodings) and the training path (those files ->
DeliverDataset) must give the model the same input, modality by modality; then the whole chain
on DELIVER's layout: train, export, make-bag, evaluate through the node's own stages.
"""

from __future__ import annotations

import numpy as np
import pytest

from sam_mmseg_ros.contracts import BAG_TOPICS, MODALITIES, MODALITY_INDEX
from sam_mmseg_ros.data.deliver import DeliverDataset, write_deliver_fixture
from sam_mmseg_ros.data.deliver_render import render_deliver_images, write_deliver_frame
from sam_mmseg_ros.data.synthetic import SequenceConfig, generate_sequence
from sam_mmseg_ros.sensors.encodings import DELIVER, NATIVE
from sam_mmseg_ros.sensors.preprocess import PreprocessConfig, preprocess

TOLERANCE = {"rgb": 1e-6, "depth": 1e-4, "event": 0.0, "lidar": 0.0}
"""Largest |live - training| per modality. RGB, events and LiDAR are the same numbers; depth
differs by the 24-bit depth files' quantization (1000 m / 2^24 = 0.06 mm), measured 4e-5 at most."""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Synthetic frames and their DELIVER files: a normal sequence and an event sensor at half and
    at 5/12 of the camera resolution (DELIVER's eventlowres case)."""
    root = tmp_path_factory.mktemp("deliver_rendered")
    frames = {}
    for condition, events in (("sun", None), ("night", (48, 32)), ("fog", (40, 30))):
        # DELIVER's cameras have a 90 degree field of view; the reader assumes it.
        config = SequenceConfig(width=96, height=64, num_frames=2, condition=condition, seed=1, hfov_deg=90.0,
                                event_width=events and events[0], event_height=events and events[1])
        for frame in generate_sequence(config):
            sequence = "MAP_1_point0" + ("_eventlowres" if events else "")
            written = write_deliver_frame(render_deliver_images(frame), root, condition, "test", sequence,
                                          f"{len(frames):06d}")
            frames[written.frame] = frame
    return root, frames


@pytest.mark.parametrize("size", [(32, 48), (40, 60)])  # integer and non-integer downscaling
def test_live_and_deliver_training_inputs_agree_per_modality(rendered, size):
    root, frames = rendered
    dataset = DeliverDataset(root, "test", size=size)
    assert {f.case for f in dataset.frames} == {"normal", "eventlowres"}
    for index, where in enumerate(dataset.frames):
        frame = frames[where.frame]
        live = preprocess(frame.to_bundle(), PreprocessConfig(input_size=size, encodings=DELIVER),
                          frame.T_camera_lidar).model_input.images[0]
        training = dataset[index]["images"].numpy()
        for modality in MODALITIES:
            slot = MODALITY_INDEX[modality]
            assert np.abs(live[slot] - training[slot]).max() <= TOLERANCE[modality], (modality, where)
            assert training[slot].any(), (modality, where)  # the comparison is not of empty slots


def test_the_native_encoders_would_drift(rendered):
    """What the test above guards against: the package's own event and LiDAR encoders are not
    what DELIVER's files hold."""
    root, frames = rendered
    dataset = DeliverDataset(root, "test", size=(32, 48))
    frame = frames[dataset.frames[-1].frame]
    native = preprocess(frame.to_bundle(), PreprocessConfig(input_size=(32, 48), encodings=NATIVE),
                        frame.T_camera_lidar).model_input.images[0]
    training = dataset[len(dataset) - 1]["images"].numpy()
    for modality in ("event", "lidar"):
        slot = MODALITY_INDEX[modality]
        assert np.abs(native[slot] - training[slot]).max() > 0.5, modality


@pytest.mark.slow
def test_deliver_folder_trains_exports_and_evaluates_through_the_node(tmp_path):
    """DELIVER's official layout with a sensor-failure case: `sam-mmseg train` (tiny budget),
    `export`, `make-bag --deliver`, then `eval` through the node's own stages with all four slots,
    inputs identical to the training path's; a model of other encodings is refused."""
    from sam_mmseg_ros.cli import main
    from sam_mmseg_ros.data.bags import read_bag
    from sam_mmseg_ros.engine import create_backend
    from sam_mmseg_ros.engine.export import read_metadata
    from sam_mmseg_ros.eval.offline import bag_inputs, evaluate_bag
    from sam_mmseg_ros.ingest import OfflineNode, topic_kinds
    from sam_mmseg_ros.node_settings import NodeSettings

    root = write_deliver_fixture(tmp_path / "DELIVER", frames_per_condition=2, size=(32, 48), splits=("train", "val"),
                                 conditions=("night", "sun"), class_ids=range(1, 7))
    run = tmp_path / "run"
    assert main(["train", "--dataset", "deliver", "--data-root", str(root), "--model", "tiny", "--img-size", "32",
                 "--steps", "3", "--batch-size", "2", "--device", "cpu", "--out", str(run), "--no-progress"]) == 0
    onnx = tmp_path / "deliver.onnx"
    assert main(["export", "--checkpoint", str(run / "model.pt"), "--output", str(onnx)]) == 0
    assert read_metadata(onnx)["encodings"] == DELIVER
    bag = tmp_path / "bag"
    assert main(["make-bag", str(bag), "--deliver", str(root), "--split", "val"]) == 0
    assert bag_inputs(bag) == {"event_input": "image", "lidar_input": "image", "depth_input": "depth"}

    # The node's stages on the bag see exactly what training on the folder sees.
    backend = create_backend("onnxruntime", onnx_path=onnx)
    node = OfflineNode(backend, NodeSettings.from_values(bag_inputs(bag)))
    dataset = DeliverDataset(root, "val", size=(32, 32))
    kinds, index = topic_kinds(BAG_TOPICS), 0
    for topic, stamp, _, msg in read_bag(bag):
        if topic in kinds and (bundle := node.feed(kinds[topic], msg, stamp)) is not None:
            result = node.segment(bundle, stamp)
            assert result.errors == {} and set(bundle.present()) == set(MODALITIES)
            sample = dataset[index]
            np.testing.assert_array_equal(node.pipeline._images[0], sample["images"].numpy())
            np.testing.assert_array_equal(node.pipeline._mask[0], sample["modality_mask"].numpy())
            index += 1
    assert index == len(dataset) == 6  # per condition two normal frames and one eventlowres

    evaluated = evaluate_bag(bag, backend, progress=False)
    assert evaluated.frames == 6 and set(evaluated.per_case["RGB-D-E-L"]) == {"normal", "eventlowres"}
    for modality in MODALITIES:
        assert evaluated.health_counts[modality]["missing"] == evaluated.health_counts[modality]["invalid"] == 0
    assert main(["eval", str(bag), "--checkpoint", str(run / "model.pt"), "--subsets", "RGB",
                 "--out", str(tmp_path / "report"), "--no-progress"]) == 0
    assert "per sensor-failure case" in (tmp_path / "report" / "report.md").read_text()
    # The shipped model (native encodings) cannot take DELIVER's event and LiDAR images.
    assert main(["eval", str(bag), "--out", str(tmp_path / "refused"), "--no-progress"]) == 2
