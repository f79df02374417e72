"""preprocess: the ModelInput contract, absent slots, and one failing modality not affecting others."""

import numpy as np
import pytest

from sam_mmseg_ros.contracts import (
    MODALITIES,
    MODALITY_INDEX,
    EventArray,
    FrameBundle,
    ImageData,
    PointCloud,
)
from sam_mmseg_ros.sensors.camera import CameraModel
from sam_mmseg_ros.sensors.encodings import NATIVE
from sam_mmseg_ros.sensors.preprocess import (
    NO_CAMERA_LIDAR,
    PreprocessConfig,
    allocate_images,
    preprocess,
)

CAMERA = CameraModel.from_fov(64, 48, 90.0, frame_id="camera")
CONFIG = PreprocessConfig(input_size=(24, 32))


def _bundle(**overrides) -> FrameBundle:
    rng = np.random.default_rng(6)
    fields = dict(
        rgb=ImageData(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "bgr8"),
        depth=ImageData(rng.uniform(1, 40, (48, 64)).astype(np.float32), "32FC1"),
        event=EventArray(rng.integers(0, 80, 500), rng.integers(0, 60, 500),
                         np.sort(rng.integers(0, 5 * 10**7, 500)),
                         rng.choice(np.array([-1, 1], np.int8), 500), 80, 60),
        lidar=PointCloud(rng.uniform([-10, -2, 1], [10, 2, 50], (300, 3)).astype(np.float32),
                         rng.uniform(0, 255, 300).astype(np.float32)),
        camera=CAMERA,
    )
    fields.update(overrides)
    return FrameBundle(stamp_ns=1, frame_id="camera", **fields)


def test_contract_shapes_dtypes_and_measurements():
    encoded = preprocess(_bundle(), CONFIG)
    model_input = encoded.model_input
    assert model_input.images.shape == (1, len(MODALITIES), 3, 24, 32)
    assert model_input.images.dtype == np.float32
    assert model_input.modality_mask.shape == (1, len(MODALITIES))
    assert model_input.modality_mask.dtype == np.float32
    np.testing.assert_array_equal(model_input.modality_mask, 1.0)
    assert encoded.errors == {}
    assert set(encoded.measurements) == set(MODALITIES)
    assert encoded.measurements["event"]["event_rate_hz"] == pytest.approx(500 / 0.05)
    assert encoded.measurements["lidar"]["points_total"] == 300
    others = model_input.images[0, 1:]
    assert others.min() >= 0 and others.max() <= 1  # non-RGB modalities in [0, 1]
    assert encoded.rgb_uint8.shape == (48, 64, 3)
    assert len(encoded.projected_lidar) == encoded.measurements["lidar"]["points_in_image"]


def test_absent_modalities_are_zero_slots_with_mask_zero():
    buffer = np.full((1, len(MODALITIES), 3, 24, 32), 7.0, np.float32)  # stale content
    encoded = preprocess(_bundle(depth=None, event=None, lidar=None), CONFIG, out=buffer)
    assert encoded.model_input.images is buffer
    np.testing.assert_array_equal(encoded.model_input.modality_mask, [[1, 0, 0, 0]])
    assert not buffer[0, 1:].any()
    assert encoded.projected_lidar is None and encoded.errors == {}


def test_input_error_in_one_modality_leaves_the_others_intact():
    good = preprocess(_bundle(), CONFIG)
    bad_depth = ImageData(np.zeros((48, 64), np.int16), "16SC1")
    encoded = preprocess(_bundle(depth=bad_depth), CONFIG)
    depth = MODALITY_INDEX["depth"]
    assert "16SC1" in encoded.errors["depth"] and set(encoded.errors) == {"depth"}
    assert encoded.model_input.modality_mask[0, depth] == 0
    assert not encoded.model_input.images[0, depth].any()
    keep = [MODALITY_INDEX[m] for m in MODALITIES if m != "depth"]
    np.testing.assert_array_equal(encoded.model_input.images[0, keep], good.model_input.images[0, keep])
    assert "depth" not in encoded.measurements


def test_missing_camera_info_makes_lidar_and_hha_absent():
    encoded = preprocess(_bundle(camera=None), CONFIG)
    assert encoded.errors["lidar"] == NO_CAMERA_LIDAR
    assert "camera_info" in encoded.errors["depth"]
    np.testing.assert_array_equal(encoded.model_input.modality_mask, [[1, 0, 1, 0]])
    assert encoded.projected_lidar is None
    inverse = preprocess(_bundle(camera=None), PreprocessConfig(input_size=(24, 32), encodings={**NATIVE, "depth": "inverse-depth-v1"}))
    assert inverse.model_input.modality_mask[0, MODALITY_INDEX["depth"]] == 1


def test_buffer_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="buffer"):
        preprocess(_bundle(), CONFIG, out=allocate_images((48, 64)))
