"""What real drivers publish, built from their documented formats and decoded to known values:
usb_cam's YUV 4:2:2 (yuyv / uyvy), NV12 / NV21, a machine-vision camera's Bayer mosaics (8 and 16
bit), image_transport's `compressed` (JPEG, PNG, every `format` string it has written) and
`compressedDepth` (PNG with its config header), and EventPacket from metavision_driver (evt3) and
libcaer_driver (libcaer_cmp, libcaer)."""

from types import SimpleNamespace

import numpy as np
import pytest
from event_packets import evt3_words, libcaer_cmp_packet, libcaer_packet, random_events, word

from sam_mmseg_ros.contracts import ImageData, InputError
from sam_mmseg_ros.decoders.compressed import compressed_depth_to_numpy, compressed_image_to_numpy
from sam_mmseg_ros.decoders.event_packet import EventPacketDecoder
from sam_mmseg_ros.decoders.image import image_to_numpy
from sam_mmseg_ros.sensors.rgb import encode_rgb, rgb_to_uint8

cv2 = pytest.importorskip("cv2")

H, W = 48, 64
STAMP_NS = 1_700_000_000_123_456_789


def header(stamp_ns=STAMP_NS, frame_id="camera"):
    sec, nanosec = divmod(stamp_ns, 10**9)
    return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id=frame_id)


def smooth_rgb(height=H, width=W):
    """A colour gradient: chroma subsampling and demosaicing are near exact on it, and R, G and B
    differ everywhere, so a swapped channel or Bayer phase shows as a large error."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([40 + 2.0 * xx, 60 + 2.5 * yy, 220 - xx - 0.8 * yy], -1).clip(0, 255).astype(np.uint8)


def image_msg(data: np.ndarray, encoding: str, height: int, width: int, bigendian=False):
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(data.shape[0], -1)
    return SimpleNamespace(header=header(), height=height, width=width, encoding=encoding,
                           is_bigendian=int(bigendian), step=raw.shape[1], data=raw.tobytes())


def bt601(rgb):
    """RGB -> limited-range BT.601 Y, Cb, Cr (what V4L2 YUV cameras deliver)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return y, u, v


# -------------------------------------------------------------------------- raw camera layouts


@pytest.mark.parametrize("encoding", ["yuv422_yuy2", "yuyv", "yuv422", "uyvy"])
def test_usb_cam_yuv422_decodes_to_the_rgb_it_was_made_from(encoding):
    """usb_cam publishes pixel_format yuyv as yuv422_yuy2 (Y0 U Y1 V) and uyvy as yuv422 (U Y0 V Y1)."""
    rgb = smooth_rgb()
    y, u, v = bt601(rgb)
    packed = np.empty((H, W, 2), np.uint8)
    packed[..., 0] = np.round(y)
    packed[:, 0::2, 1] = np.round((u[:, 0::2] + u[:, 1::2]) / 2)
    packed[:, 1::2, 1] = np.round((v[:, 0::2] + v[:, 1::2]) / 2)
    if encoding in ("yuv422", "uyvy"):
        packed = packed[..., ::-1]
    decoded = rgb_to_uint8(image_to_numpy(image_msg(packed, encoding, H, W)))
    assert decoded.shape == (H, W, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - rgb).max() <= 3


@pytest.mark.parametrize("encoding", ["nv12", "nv21"])
def test_nv12_and_nv21_decode_to_the_rgb_they_were_made_from(encoding):
    rgb = smooth_rgb()
    y, u, v = bt601(rgb)
    sub = lambda c: np.round(c.reshape(H // 2, 2, W // 2, 2).mean(axis=(1, 3)))  # noqa: E731
    uv = np.stack([sub(u), sub(v)] if encoding == "nv12" else [sub(v), sub(u)], -1).reshape(H // 2, W)
    planes = np.concatenate([np.round(y), uv]).astype(np.uint8)
    decoded = rgb_to_uint8(image_to_numpy(image_msg(planes, encoding, H, W)))
    assert decoded.shape == (H, W, 3)
    assert np.abs(decoded.astype(int) - rgb).max() <= 4


BAYER_PHASES = {"rggb": ("R", "G", "G", "B"), "bggr": ("B", "G", "G", "R"),
                "gbrg": ("G", "B", "R", "G"), "grbg": ("G", "R", "B", "G")}


def mosaic(rgb, pattern, dtype=np.uint8):
    """The raw frame of a Bayer sensor: the pattern names the 2x2 cell row by row."""
    scale = 257 if dtype == np.uint16 else 1
    out = np.zeros(rgb.shape[:2], dtype)
    for (dy, dx), colour in zip(((0, 0), (0, 1), (1, 0), (1, 1)), BAYER_PHASES[pattern], strict=True):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "RGB".index(colour)].astype(np.uint32) * scale
    return out


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("pattern", list(BAYER_PHASES))
def test_bayer_mosaics_demosaic_to_the_scene(pattern, bits):
    rgb = smooth_rgb()
    dtype = np.uint16 if bits == 16 else np.uint8
    raw = mosaic(rgb, pattern, dtype)
    msg = image_msg(raw.astype(raw.dtype.newbyteorder(">")) if bits == 16 else raw, f"bayer_{pattern}{bits}",
                    H, W, bigendian=bits == 16)
    decoded = rgb_to_uint8(image_to_numpy(msg))
    inner = np.abs(decoded.astype(int) - rgb)[2:-2, 2:-2]  # demosaicing borders are approximate
    assert inner.max() <= 2


def test_camera_layout_is_encoded_for_the_model_like_the_same_scene_in_rgb8():
    rgb = smooth_rgb(96, 128)
    from_bayer = encode_rgb(ImageData(mosaic(rgb, "rggb"), "bayer_rggb8"), (48, 64))[0]
    from_rgb = encode_rgb(ImageData(rgb, "rgb8"), (48, 64))[0]
    assert np.abs(from_bayer - from_rgb).max() < 0.05


def test_rgb8_stays_a_view_of_the_message_buffer():
    msg = image_msg(smooth_rgb(), "rgb8", H, W)
    decoded = rgb_to_uint8(image_to_numpy(msg))
    assert not decoded.flags.owndata and not decoded.flags.writeable


@pytest.mark.parametrize(("encoding", "height", "width", "reason"), [
    ("yuv422_yuy2", 4, 5, "even width"), ("nv12", 5, 4, "even width and height"), ("nv21", 4, 4, "truncated")])
def test_bad_camera_layouts_raise_input_error(encoding, height, width, reason):
    msg = SimpleNamespace(header=header(), height=height, width=width, encoding=encoding, is_bigendian=0,
                          step=width * (2 if encoding.startswith("yuv") else 1), data=b"\0" * 20)
    with pytest.raises(InputError, match=reason):
        image_to_numpy(msg)


# -------------------------------------------------------------------------- image_transport


def compressed(data: bytes, fmt: str):
    return SimpleNamespace(header=header(), format=fmt, data=data)


def encode(image_bgr, ext, params=()):
    ok, buf = cv2.imencode(ext, image_bgr, list(params))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("fmt", ["bgr8; jpeg compressed bgr8", "rgb8; jpeg compressed bgr8", "jpeg"])
def test_jpeg_from_image_transport_decodes_to_the_scene(fmt):
    """image_transport's publisher converts colour to BGR before compressing and says so in the
    format ("<original>; jpeg compressed bgr8"); ROS 1 era bags say only "jpeg"."""
    rgb = smooth_rgb(96, 128)
    image = compressed_image_to_numpy(compressed(encode(rgb[..., ::-1], ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 95)), fmt))
    assert image.encoding == "bgr8"
    decoded = rgb_to_uint8(image)
    error = np.abs(decoded.astype(int) - rgb)
    assert error.mean() < 1.5 and error.max() <= 12


def test_old_format_without_bgr_target_holds_rgb_bytes():
    """Older publishers compressed rgb8 data as it was and wrote "rgb8; jpeg compressed " (no bgr
    target); image_transport's subscriber then reads the decoded channels as RGB."""
    rgb = smooth_rgb(96, 128)
    image = compressed_image_to_numpy(compressed(encode(rgb, ".png"), "rgb8; png compressed "))
    assert image.encoding == "rgb8"
    np.testing.assert_array_equal(rgb_to_uint8(image), rgb)


@pytest.mark.parametrize(("array", "fmt", "encoding"), [
    (smooth_rgb()[..., ::-1], "bgr8; png compressed bgr8", "bgr8"),
    (smooth_rgb()[..., 0], "mono8; png compressed mono8", "mono8"),
    ((smooth_rgb()[..., 1].astype(np.uint16) * 250), "mono16; png compressed mono16", "mono16"),
    (np.dstack([smooth_rgb()[..., ::-1], np.full((H, W), 200, np.uint8)]), "bgra8; png compressed bgra8", "bgra8"),
])
def test_png_from_image_transport_is_lossless(array, fmt, encoding):
    image = compressed_image_to_numpy(compressed(encode(np.ascontiguousarray(array), ".png"), fmt))
    assert image.encoding == encoding
    np.testing.assert_array_equal(image.array, array)


def test_broken_compressed_images_raise_input_error():
    jpeg = encode(smooth_rgb(96, 128), ".jpg")
    for data, reason in ((jpeg[: len(jpeg) // 2], "truncated"), (b"", "empty"), (b"\x89PNG\r\n\x1a\n garbage", "could not be decoded"),
                         (bytes(range(200)), "could not be decoded")):
        with pytest.raises(InputError, match=reason):
            compressed_image_to_numpy(compressed(data, "rgb8; jpeg compressed bgr8"))


def compressed_depth(depth, encoding, depth_max=10.0, depth_quantization=100.0):
    """What compressed_depth_image_transport publishes (its defaults: depth_max 10 m, quantization
    100): the 12-byte ConfigHeader (format INV_DEPTH = 0, quantization A and B as float32), then a
    PNG; 32FC1 depth is stored as the inverse depth q = A / d + B in uint16, 0 for no depth."""
    quant_a = np.float32(depth_quantization * (depth_quantization + 1.0))
    quant_b = np.float32(1.0 - quant_a / np.float32(depth_max))
    if encoding == "32FC1":
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = quant_a / depth.astype(np.float32) + quant_b
        stored = np.where(depth < depth_max, inverse, 0).astype(np.uint16)
    else:
        stored = np.where(depth > depth_max * 1000, 0, depth).astype(np.uint16)
    config = np.array([(0, quant_a, quant_b)], [("f", "<i4"), ("a", "<f4"), ("b", "<f4")]).tobytes()
    return compressed(config + encode(stored, ".png"), f"{encoding}; compressedDepth png"), stored, quant_a, quant_b


def test_compressed_depth_16uc1_is_exact():
    depth = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 3) + 400
    msg, stored, _, _ = compressed_depth(depth, "16UC1")
    image = compressed_depth_to_numpy(msg)
    assert image.encoding == "16UC1"
    np.testing.assert_array_equal(image.array, stored)


def test_compressed_depth_32fc1_inverts_the_publishers_quantization():
    depth = np.linspace(0.3, 12.0, H * W, dtype=np.float32).reshape(H, W)
    depth[0, :5] = np.nan
    msg, stored, quant_a, quant_b = compressed_depth(depth, "32FC1")
    image = compressed_depth_to_numpy(msg)
    assert image.encoding == "32FC1" and image.array.dtype == np.float32
    expected = np.where(stored > 0, quant_a / (stored.astype(np.float32) - quant_b), np.nan).astype(np.float32)
    np.testing.assert_array_equal(image.array, expected)
    near = depth < 10.0  # beyond depth_max the publisher stores "no depth"
    assert np.isnan(image.array[~near]).all() and np.isnan(image.array[0, :5]).all()
    relative = np.abs(image.array[near] - depth[near]) / depth[near]
    assert relative.max() < 0.012  # the quantization step at 10 m


def test_compressed_depth_refuses_rvl_and_cut_payloads():
    msg, *_ = compressed_depth(np.ones((H, W), np.float32), "32FC1")
    for fmt, data, reason in (("32FC1; compressedDepth rvl", msg.data, "RVL"), (msg.format, msg.data[:10], "truncated"),
                              (msg.format, msg.data[:40], "could not be decoded"), ("rgb8; compressedDepth png", msg.data, "unsupported")):
        with pytest.raises(InputError, match=reason):
            compressed_depth_to_numpy(compressed(data, fmt))


# -------------------------------------------------------------------------- EventPacket


def packet(encoding, data, width, height, stamp_ns=STAMP_NS, time_base=0):
    return SimpleNamespace(header=header(stamp_ns, "event_camera"), width=width, height=height, seq=0,
                           time_base=time_base, encoding=encoding, is_bigendian=False, events=data)


def decode_stream(decoder, packets, size=None):
    parts = [decoder.decode_sensor_time(p, *(size or (p.width, p.height))) for p in packets]
    return {k: np.concatenate([getattr(e, k) for e in parts]) for k in ("t_ns", "x", "y", "polarity")}


def test_evt3_from_metavision_driver_decodes_every_event_across_packets():
    """Vector words, time-high wrap past 2^24 us, non-event words, and packets cut anywhere (the
    driver forwards USB buffers, so a packet may start with events of the last one's row)."""
    width, height = 640, 480
    events = random_events(6000, width, height, t0_us=(1 << 24) - 20_000, span_us=60_000, seed=1)
    words = evt3_words(events)
    cuts = np.sort(np.random.default_rng(2).choice(np.arange(1, len(words)), 25, replace=False))
    packets = [packet("evt3", chunk.tobytes(), width, height) for chunk in np.split(words, cuts)]
    decoded = decode_stream(EventPacketDecoder(), packets)
    np.testing.assert_array_equal(decoded["t_ns"], events["t_us"] * 1000)
    np.testing.assert_array_equal(decoded["x"], events["x"])
    np.testing.assert_array_equal(decoded["y"], events["y"])
    np.testing.assert_array_equal(decoded["polarity"], events["p"])
    assert (np.diff(decoded["t_ns"]) >= 0).all() and decoded["t_ns"].max() > (1 << 24) * 1000


def test_evt3_ignores_everything_before_the_first_time_and_drops_events_off_the_sensor():
    valid_from = [word(0, 7), word(2, 5), word(8, 1), word(2, 6), word(6, 10)]  # events before time: ignored
    events = [word(0, 3), word(2, 100), word(2, 700 | (1 << 11)), word(3, 630), word(4, 0b1011)]
    decoded = EventPacketDecoder().decode_sensor_time(packet("evt3", np.array(valid_from + events, np.uint16).tobytes(),
                                                             640, 480), 640, 480)
    # (100, 3) at time 1 << 12 | 10 us; x 700 is off the sensor; the vector gives 630, 631, 633 (634+ cut).
    assert decoded.x.tolist() == [100, 630, 631, 633]
    assert decoded.y.tolist() == [3] * 4 and decoded.polarity.tolist() == [0, 0, 0, 0]
    assert decoded.t_ns.tolist() == [((1 << 12) + 10) * 1000] * 4


def test_event_packets_go_on_the_ros_clock_from_the_header_stamp():
    events = random_events(500, 640, 480, t0_us=5_000_000, span_us=10_000, seed=3)
    decoder = EventPacketDecoder()
    array = decoder.decode(packet("evt3", evt3_words(events).tobytes(), 640, 480))
    first = int(events["t_us"][0]) * 1000
    np.testing.assert_array_equal(array.t_ns, STAMP_NS + events["t_us"] * 1000 - first)
    np.testing.assert_array_equal(array.polarity, np.where(events["p"] > 0, 1, -1))
    assert (array.width, array.height) == (640, 480) and array.polarity.dtype == np.int8


def test_libcaer_cmp_from_libcaer_driver_decodes_to_time_base_plus_offsets():
    width, height = 346, 260  # DAVIS346
    events = random_events(8000, width, height, t0_us=2_000_000, span_us=20_000, seed=4)
    order = np.lexsort((events["y"], events["p"], events["x"], events["t_us"]))  # libcaer readout order
    events = {k: v[order] for k, v in events.items()}
    epoch_ns = 1_702_669_729_000_000_000
    packets, expected = [], []
    for low in range(2_000_000, 2_020_000, 1000):  # one message per ms
        keep = (events["t_us"] >= low) & (events["t_us"] < low + 1000)
        part = {k: v[keep] for k, v in events.items()}
        base_us = int(part["t_us"][0])
        packets.append(packet("libcaer_cmp", libcaer_cmp_packet(part, base_us).tobytes(), width, height,
                              time_base=epoch_ns + base_us * 1000))
        expected.append(part)
    decoded = decode_stream(EventPacketDecoder(), packets)
    want = {k: np.concatenate([e[k] for e in expected]) for k in ("t_us", "x", "y", "p")}
    np.testing.assert_array_equal(decoded["t_ns"], epoch_ns + want["t_us"] * 1000)
    np.testing.assert_array_equal(decoded["x"], want["x"])
    np.testing.assert_array_equal(decoded["y"], want["y"])
    np.testing.assert_array_equal(decoded["polarity"], want["p"])


def test_libcaer_decodes_with_its_31_bit_wrap():
    width, height = 346, 260
    events = random_events(3000, width, height, t0_us=(1 << 31) - 1000, span_us=3000, seed=5, dense_rows=False)
    base_ns = 1_702_309_120_000_000_000
    decoded = EventPacketDecoder().decode_sensor_time(
        packet("libcaer", libcaer_packet(events, 0), width, height, time_base=base_ns), width, height)
    np.testing.assert_array_equal(decoded.t_ns, base_ns + events["t_us"] * 1000)
    np.testing.assert_array_equal(decoded.x, events["x"])
    np.testing.assert_array_equal(decoded.y, events["y"])
    np.testing.assert_array_equal(decoded.polarity, events["p"])


def test_bad_event_packets_raise_input_error():
    decoder = EventPacketDecoder()
    for msg, reason in ((packet("evt2", b"\0\0", 640, 480), "unsupported EventPacket encoding"),
                        (packet("evt3", b"\0\0\0", 640, 480), "odd number of bytes"),
                        (packet("libcaer", b"\0" * 12, 346, 260), "multiple of 8"),
                        (packet("evt3", np.array([word(8, 1), word(6, 2), word(9, 0)], np.uint16).tobytes(), 640, 480),
                         "unsupported word code 9"),
                        (packet("evt3", b"", 0, 0), "no sensor size")):
        with pytest.raises(InputError, match=reason):
            decoder.decode(msg)
    empty = EventPacketDecoder().decode(packet("evt3", b"", 0, 0), fallback_size=(320, 240))
    assert len(empty) == 0 and (empty.width, empty.height) == (320, 240)
