"""RGB encoder: every ROS encoding, normalization, resizing, exposure stats."""

import numpy as np
import pytest

from sam_mmseg_ros.contracts import IMAGENET_MEAN, IMAGENET_STD, ImageData, InputError
from sam_mmseg_ros.sensors.rgb import RGB_ENCODINGS, encode_rgb, rgb_to_uint8

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (4, 6), dtype=np.uint8)


def _message_array(encoding: str) -> np.ndarray:
    """The image as a driver would publish it in `encoding` (16-bit: low byte set to junk)."""
    if encoding.startswith("mono"):
        base = GRAY
    else:
        base = RGB[:, :, ::-1] if encoding.startswith("bgr") else RGB
        if "a" in encoding[:4]:
            base = np.concatenate([base, np.full((4, 6, 1), 7, np.uint8)], axis=2)
    if encoding.endswith("16"):
        return base.astype(np.uint16) * 256 + 0xAB
    return np.ascontiguousarray(base)


@pytest.mark.parametrize("encoding", RGB_ENCODINGS)
def test_every_encoding_decodes_to_rgb(encoding):
    out = rgb_to_uint8(ImageData(_message_array(encoding), encoding))
    expected = np.repeat(GRAY[:, :, None], 3, axis=2) if encoding.startswith("mono") else RGB
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_mono_accepts_trailing_channel_axis():
    out = rgb_to_uint8(ImageData(GRAY[:, :, None], "mono8"))
    np.testing.assert_array_equal(out[:, :, 2], GRAY)


def test_unknown_encoding_is_named():
    with pytest.raises(InputError, match="yuv420"):
        rgb_to_uint8(ImageData(RGB, "yuv420"))


@pytest.mark.parametrize("array, encoding", [
    (RGB.astype(np.uint16), "rgb8"),
    (RGB[:, :, :2], "rgb8"),
    (RGB, "rgba8"),
    (np.zeros((0, 4, 3), np.uint8), "rgb8"),
])
def test_layout_mismatch_raises(array, encoding):
    with pytest.raises(InputError):
        rgb_to_uint8(ImageData(array, encoding))


def test_encode_normalizes_with_imagenet_statistics():
    value = np.array([10, 128, 240], np.uint8)
    image = ImageData(np.broadcast_to(value, (8, 8, 3)).copy(), "rgb8")
    out, stats, _ = encode_rgb(image, (4, 4))
    assert out.shape == (3, 4, 4) and out.dtype == np.float32
    expected = (value / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-5)
    assert stats["nonfinite_count"] == 0


def test_area_averages_blocks_and_nearest_samples():
    image = np.zeros((4, 4, 3), np.uint8)
    image[0, 0] = 200  # one bright pixel in the top-left 2x2 block
    area, _, _ = encode_rgb(ImageData(image, "rgb8"), (2, 2), method="area")
    nearest, _, _ = encode_rgb(ImageData(image, "rgb8"), (2, 2), method="nearest")
    to_unit = area[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    np.testing.assert_allclose(to_unit, [[50 / 255, 0], [0, 0]], atol=1e-6)
    # nearest samples the pixel at the block centre (1, 1), which is dark
    np.testing.assert_allclose(nearest[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0], 0, atol=1e-6)


def test_non_integer_factor_resizes_bilinear():
    image = np.full((30, 40, 3), 100, np.uint8)
    out, _, _ = encode_rgb(ImageData(image, "bgr8"), (16, 24))
    assert out.shape == (3, 16, 24)
    np.testing.assert_allclose(out[1] * IMAGENET_STD[1] + IMAGENET_MEAN[1], 100 / 255, atol=1e-5)


def test_exposure_fractions():
    image = np.zeros((16, 16, 3), np.uint8)
    image[:8, :, 0] = 255  # top half: red channel saturated
    image[8:12] = 100  # a mid-grey quarter
    _, stats, _ = encode_rgb(ImageData(image, "rgb8"), (8, 8))
    assert stats["saturated_fraction"] == pytest.approx(0.5)
    assert stats["dark_fraction"] == pytest.approx(0.25)


@pytest.mark.parametrize("factors", [(3, 2), (1, 3), (4, 5)])
def test_area_matches_block_mean_for_any_integer_factors(factors):
    fy, fx = factors
    image = RNG.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    out, _, _ = encode_rgb(ImageData(image, "rgb8"), (60 // fy, 90 // fx))
    mean = image.reshape(60 // fy, fy, 90 // fx, fx, 3).mean(axis=(1, 3)) / 255.0
    expected = ((mean - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("encoding", RGB_ENCODINGS)
@pytest.mark.parametrize("size, method", [((2, 3), "area"), ((2, 3), "nearest"), ((4, 6), "area"),
                                          ((3, 4), "area")])
def test_every_encoding_encodes_like_its_rgb(encoding, size, method):
    """Encoding works on the message's channel layout; the result must equal encoding the RGB."""
    image = ImageData(_message_array(encoding), encoding)
    rgb = rgb_to_uint8(image)
    reference, _, _ = encode_rgb(ImageData(np.ascontiguousarray(rgb), "rgb8"), size, method)
    out, _, _ = encode_rgb(image, size, method)
    np.testing.assert_allclose(out, reference, atol=1e-5)


@pytest.mark.parametrize("width, out_width", [(100, 70), (120, 50), (128, 36)])
def test_non_integer_resize_keeps_a_ramp_linear(width, out_width):
    """Block stage + bilinear must sample at pixel centres: a linear ramp stays that ramp."""
    ramp = (2 * np.arange(width)).astype(np.uint8)
    image = np.broadcast_to(ramp[None, :, None], (90, width, 3)).copy()
    out, _, _ = encode_rgb(ImageData(image, "rgb8"), (40, out_width))
    value = (out[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
    position = (np.arange(out_width) + 0.5) * width / out_width - 0.5
    np.testing.assert_allclose(value, np.broadcast_to(2 * position, (40, out_width)), atol=1e-3)


def test_area_of_a_frame_processed_in_several_row_bands():
    # 600x1000 rgb8 at factor 2: bands of 43 output rows, the last one partial.
    image = RNG.integers(0, 256, (600, 1000, 3), dtype=np.uint8)
    out, _, _ = encode_rgb(ImageData(image, "bgr8"), (300, 500))
    mean = image[:, :, ::-1].reshape(300, 2, 500, 2, 3).mean(axis=(1, 3)) / 255.0
    expected = ((mean - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)
