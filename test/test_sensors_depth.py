"""Depth encoder: decoding, invalid values, nearest resizing, HHA geometry, inverse depth."""

import numpy as np
import pytest

from sam_mmseg_ros.contracts import ImageData, InputError
from sam_mmseg_ros.sensors.camera import CameraModel
from sam_mmseg_ros.sensors.depth import (
    HHA_DISPARITY_REF_M,
    HHA_HEIGHT_RANGE_M,
    _arccos_over_pi,
    depth_to_metres,
    encode_depth,
    hha,
    inverse_depth,
)

CAMERA = CameraModel.from_fov(64, 48, 90.0)
CAMERA_HEIGHT = 1.5


def _floor_depth(camera: CameraModel, height: float = CAMERA_HEIGHT) -> np.ndarray:
    """Depth of a level camera `height` m above a flat floor (NaN above the horizon: sky)."""
    _, yn = camera.pixel_rays()
    with np.errstate(divide="ignore"):
        z = np.where(yn > 1e-6, height / np.maximum(yn, 1e-6), np.nan)
    return z.astype(np.float32)


def test_32fc1_invalid_values_become_nan():
    raw = np.array([[1.5, 0.0, np.nan], [np.inf, -2.0, 30.0]], np.float32)
    metres = depth_to_metres(ImageData(raw, "32FC1"))
    assert metres.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(metres), [[False, True, True], [True, True, False]])
    assert metres[0, 0] == 1.5 and metres[1, 2] == 30.0
    assert raw[0, 1] == 0.0  # the message buffer is not modified


def test_16uc1_is_millimetres_and_zero_is_invalid():
    raw = np.array([[0, 1000], [2500, 65535]], np.uint16)
    metres = depth_to_metres(ImageData(raw, "16UC1"))
    assert np.isnan(metres[0, 0])
    np.testing.assert_allclose(metres[[0, 1, 1], [1, 0, 1]], [1.0, 2.5, 65.535], rtol=1e-6)


def test_other_encodings_are_rejected_by_name():
    with pytest.raises(InputError, match="mono16"):
        depth_to_metres(ImageData(np.zeros((2, 2), np.uint16), "mono16"))
    with pytest.raises(InputError, match="float32"):
        depth_to_metres(ImageData(np.zeros((2, 2), np.float64), "32FC1"))


def test_hha_shape_range_and_invalid_pixels():
    depth = np.random.default_rng(1).uniform(1, 60, (48, 64)).astype(np.float32)
    depth[5, 5] = np.nan
    out = hha(depth, CAMERA)
    assert out.shape == (48, 64, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out[5, 5], 0.0)


def _interior(valid: np.ndarray, step: int) -> np.ndarray:
    """Pixels whose normal has valid neighbours: not within `step` px of the border or of an
    invalid pixel."""
    interior = valid.copy()
    for shift in range(1, 2 * step + 1):
        interior[shift:] &= valid[:-shift]
        interior[:-shift] &= valid[shift:]
    interior[: 2 * step], interior[-2 * step:] = False, False
    interior[:, : 2 * step], interior[:, -2 * step:] = False, False
    return interior


@pytest.mark.parametrize("step", [1, 2])
def test_hha_on_a_flat_floor(step):
    depth = _floor_depth(CAMERA)
    out = hha(depth, CAMERA, camera_height_m=CAMERA_HEIGHT, normal_step=step)
    floor = np.isfinite(depth)
    inner = _interior(floor, step)
    # height above ground: 0 on every floor pixel, so constant along each row and down the image
    np.testing.assert_allclose(out[:, :, 1][floor], 0.0, atol=1e-4)
    # the floor's normal points along gravity-up: angle 0
    np.testing.assert_allclose(out[:, :, 2][inner], 0.0, atol=1e-2)
    assert inner.sum() > 0.3 * floor.sum()
    # disparity grows towards the bottom of the image (nearer floor)
    column = out[:, 32, 0][floor[:, 32]]
    assert np.all(np.diff(column) >= 0)
    np.testing.assert_allclose(out[40, 32, 0], min(1.0, HHA_DISPARITY_REF_M / depth[40, 32]), rtol=1e-5)
    # the ground estimate without camera_height_m finds the same floor
    estimated = hha(depth, CAMERA, normal_step=step)
    np.testing.assert_allclose(estimated[:, :, 1][floor], 0.0, atol=1e-3)
    # sky (invalid) is 0 in every channel
    np.testing.assert_array_equal(out[~floor], 0.0)


@pytest.mark.parametrize("step", [1, 2])
def test_hha_of_a_fisheye_camera_uses_each_pixels_true_ray(step):
    K = np.array([[30.0, 0, 31.5], [0, 30.0, 23.5], [0, 0, 1]])  # 150 degrees across the diagonal
    fisheye = CameraModel(64, 48, K, np.array([0.05, -0.01, 0.0, 0.0]), "equidistant")
    _, yn = fisheye.pixel_rays(undistort=True)
    with np.errstate(divide="ignore"):
        depth = np.where(yn > 1e-6, CAMERA_HEIGHT / np.maximum(yn, 1e-6), np.nan).astype(np.float32)
    floor = np.isfinite(depth)
    out = hha(depth, fisheye, camera_height_m=CAMERA_HEIGHT, normal_step=step)
    np.testing.assert_allclose(out[:, :, 1][floor], 0.0, atol=1e-4)  # the floor is at height 0 everywhere
    np.testing.assert_allclose(out[:, :, 2][_interior(floor, step)], 0.0, atol=1e-2)  # normal = up
    # The same image read through pinhole rays puts the floor off 0 towards the edges.
    pinhole = CameraModel(64, 48, K, np.zeros(5), "plumb_bob")
    assert np.abs(hha(depth, pinhole, camera_height_m=CAMERA_HEIGHT)[:, :, 1][floor]).max() > 0.05


@pytest.mark.parametrize("step", [1, 2])
def test_hha_on_a_wall_facing_the_camera(step):
    depth = np.full((48, 64), 10.0, np.float32)
    out = hha(depth, CAMERA, camera_height_m=CAMERA_HEIGHT, normal_step=step)
    inner = _interior(np.ones(depth.shape, bool), step)
    np.testing.assert_allclose(out[:, :, 2][inner], 0.5, atol=1e-3)  # normal horizontal: 90 deg
    _, yn = CAMERA.pixel_rays()
    expected_height = np.clip((CAMERA_HEIGHT - yn[:, 0] * 10.0) / HHA_HEIGHT_RANGE_M, 0, 1)
    np.testing.assert_allclose(out[:, 10, 1], expected_height, atol=1e-5)


def test_hha_with_camera_at_another_resolution_matches_resized_camera():
    depth = _floor_depth(CAMERA.resized(32, 24))
    np.testing.assert_allclose(hha(depth, CAMERA, camera_height_m=1.5),
                               hha(depth, CAMERA.resized(32, 24), camera_height_m=1.5))


def test_inverse_depth():
    out = inverse_depth(np.array([[0.0, 40.0, 100.0, np.nan]], np.float32), max_depth=80.0)
    assert out.shape == (1, 4, 3)
    np.testing.assert_allclose(out[0, :, 0], [1.0, 0.5, 0.0, 0.0])


def test_encode_depth_resizes_nearest_without_mixing_invalid_pixels():
    raw = np.random.default_rng(2).uniform(1, 50, (48, 64)).astype(np.float32)
    raw[::2] = np.nan  # every other row invalid
    raw[1, 1] = np.inf
    out, stats = encode_depth(ImageData(raw, "32FC1"), None, (24, 32), method="inverse", max_depth=80.0)
    assert out.shape == (3, 24, 32) and out.dtype == np.float32
    # every kept value is one real measurement, never an average with an invalid neighbour
    expected = 1 - raw[1::2, 1::2] / 80.0
    expected[0, 0] = 0.0  # the Inf pixel
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    assert stats["nonfinite_count"] == 24 * 64 + 1
    assert stats["valid_fraction"] == pytest.approx(1 - 1 / (24 * 32))


def test_encode_depth_16uc1_hha_with_non_integer_factor():
    raw = np.nan_to_num(_floor_depth(CAMERA) * 1000).astype(np.uint16)  # NaN -> 0: invalid
    out, stats = encode_depth(ImageData(raw, "16UC1"), CAMERA, (20, 30))
    assert out.shape == (3, 20, 30) and 0.0 <= out.min() and out.max() <= 1.0
    assert stats["nonfinite_count"] == 0
    assert 0.4 < stats["valid_fraction"] < 0.6  # the floor is the bottom half


def test_hha_needs_a_camera_and_a_registered_image():
    image = ImageData(np.ones((48, 64), np.float32), "32FC1")
    with pytest.raises(InputError, match="camera_info"):
        encode_depth(image, None, (24, 32))
    with pytest.raises(InputError, match="not registered"):
        encode_depth(ImageData(np.ones((48, 48), np.float32), "32FC1"), CAMERA, (24, 32))


def test_fast_arccos_matches_numpy_on_both_signs_and_keeps_nan():
    cos = np.concatenate([np.linspace(-1.2, 1.2, 2001), [np.nan]]).astype(np.float32)
    out = np.empty_like(cos)
    _arccos_over_pi(cos, out)
    expected = np.arccos(np.clip(cos[:-1], -1, 1)) / np.pi
    np.testing.assert_allclose(out[:-1], expected, atol=3e-5)
    assert np.isnan(out[-1])
