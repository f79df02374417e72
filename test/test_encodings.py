"""Encodings: one name per way of encoding a modality, recorded in checkpoints, taken by the node
from the model it loads, and refused, naming both sides, where the node cannot produce it."""

from __future__ import annotations

import numpy as np
import pytest

from sam_mmseg_ros.contracts import MODALITIES, MODALITY_INDEX, EventArray, FrameBundle, ImageData, PointCloud
from sam_mmseg_ros.node_settings import NodeSettings
from sam_mmseg_ros.sensors.camera import CameraModel
from sam_mmseg_ros.sensors.encodings import DELIVER, ENCODINGS, NATIVE, PRESETS, EncodingError, resolve
from sam_mmseg_ros.sensors.preprocess import PreprocessConfig, preprocess

ALL_ON = {"enable.depth": True, "enable.event": True, "enable.lidar": True}


def test_registry_is_consistent():
    for preset in PRESETS.values():
        assert set(preset) == set(MODALITIES)
        assert all(ENCODINGS[name].modality == m for m, name in preset.items())
    assert all(e.image_resample in ("area", "max", "nearest_point") for e in ENCODINGS.values())
    assert NATIVE["event"] != DELIVER["event"] and NATIVE["depth"] == DELIVER["depth"] == "hha-v1"


def test_resolve_completes_old_records_and_refuses_unknown_names():
    assert resolve(None) == NATIVE  # checkpoints from before the record: the native encoders
    assert resolve({"event": "carla-dvs-v1"}) == {**NATIVE, "event": "carla-dvs-v1"}
    with pytest.raises(EncodingError, match=r"'hha-v9'.*hha-v1"):
        resolve({"depth": "hha-v9"}, "model x.pt")
    with pytest.raises(EncodingError, match="does not know"):
        resolve({"depth": "carla-dvs-v1"})  # an event encoding in the depth slot
    with pytest.raises(EncodingError, match="radar"):
        resolve({"radar": "hha-v1"})


def test_node_takes_the_model_encodings_and_refuses_what_it_cannot_produce():
    settings = NodeSettings.from_values(ALL_ON)
    config = settings.preprocess_config((32, 32), DELIVER, "model deliver.pt")
    assert config.encodings == DELIVER and config.input_size == (32, 32)

    paper = PRESETS["deliver-hha"]  # DELIVER's precomputed hha/ images: not computable from depth
    with pytest.raises(EncodingError) as refused:
        settings.preprocess_config((32, 32), paper, "model paper.pt")
    message = str(refused.value)
    assert "model paper.pt" in message and "'deliver-hha-v1'" in message and "'hha-v1'" in message
    assert "depth_input: depth" in message
    # Ready HHA images are passed through, and a disabled depth camera is not needed at all.
    assert NodeSettings.from_values({**ALL_ON, "depth_input": "image"}).preprocess_config((32, 32), paper).encodings \
        == paper
    NodeSettings.from_values({**ALL_ON, "enable.depth": False}).preprocess_config((32, 32), paper)
    with pytest.raises(EncodingError, match="'lidar-projection-v2'"):
        settings.preprocess_config((32, 32), {"lidar": "lidar-projection-v2"})


def _camera_bundle(size=(24, 32)) -> FrameBundle:
    h, w = size
    rng = np.random.default_rng(0)
    camera = CameraModel.from_fov(w, h, 90.0, "cam")
    depth = np.full((h, w), 8.0, np.float32)
    xyz = np.stack([rng.uniform(-4, 4, 300), rng.uniform(-3, 3, 300), rng.uniform(2, 150, 300)], axis=1)
    events = EventArray(rng.integers(0, w // 2, 50).astype(np.int32), rng.integers(0, h // 2, 50).astype(np.int32),
                        np.arange(50, dtype=np.int64), rng.choice(np.array([-1, 1], np.int8), 50), w // 2, h // 2)
    return FrameBundle(0, "cam", rgb=ImageData(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "rgb8"),
                       depth=ImageData(depth, "32FC1"), event=events,
                       lidar=PointCloud(xyz.astype(np.float32), np.ones(300, np.float32), "cam"), camera=camera)


def test_deliver_encodings_from_raw_sensor_data():
    bundle = _camera_bundle()
    native = preprocess(bundle, PreprocessConfig(input_size=(12, 16)))
    deliver = preprocess(bundle, PreprocessConfig(input_size=(12, 16), encodings=DELIVER))
    assert native.errors == deliver.errors == {}
    np.testing.assert_array_equal(native.model_input.images[0, :2], deliver.model_input.images[0, :2])
    event = deliver.model_input.images[0, MODALITY_INDEX["event"]]
    assert set(np.unique(event)) <= {0.0, 1.0} and not event[1].any() and event.any()  # any event: full
    lidar = deliver.model_input.images[0, MODALITY_INDEX["lidar"]]
    assert np.array_equal(lidar[0], lidar[1]) and lidar.max() <= 100 / 255  # grey range in metres / 255
    ranges = np.linalg.norm(bundle.lidar.xyz, axis=1)
    assert lidar[lidar > 0].min() >= np.floor(ranges.min()) / 255
    assert deliver.projected_lidar is not None and deliver.measurements["lidar"]["points_in_image"] > 0


def test_checkpoint_records_encodings_and_the_node_core_refuses_a_mismatch(tmp_path, monkeypatch):
    from sam_mmseg_ros.engine.torch_backend import TorchBackend
    from sam_mmseg_ros.model import build_model
    from sam_mmseg_ros.model.checkpoint import load_checkpoint, save_checkpoint
    from sam_mmseg_ros.runtime import SegmentationCore

    model = build_model("tiny", img_size=32, patch_size=8, depth=1, global_attn_indexes=[0], aux_block_indexes=[0],
                        embed_dim=32, num_heads=1, out_chans=32, decoder_heads=1, decoder_depth=1,
                        decoder_mlp_dim=32)
    path = save_checkpoint(tmp_path / "paper.pt", model, encodings=PRESETS["deliver-hha"])
    assert load_checkpoint(path)[1]["encodings"] == PRESETS["deliver-hha"]
    backend = TorchBackend.from_checkpoint(path)
    assert backend.metadata["encodings"] == PRESETS["deliver-hha"]

    import sam_mmseg_ros.engine as engine

    monkeypatch.setattr(engine, "create_backend", lambda kind, **options: backend)
    core = SegmentationCore(NodeSettings.from_values({**ALL_ON, "cpu_threads": 0}), now_ns=lambda: 0)
    assert not core.load_model() and core.pipeline is None
    assert "deliver-hha-v1" in core.model.error and "'hha-v1'" in core.model.error and str(path) in core.model.error
    ready = SegmentationCore(NodeSettings.from_values({**ALL_ON, "cpu_threads": 0, "depth_input": "image"}),
                             now_ns=lambda: 0)
    assert ready.load_model() and ready.pipeline.preprocess_config.encodings == PRESETS["deliver-hha"]
