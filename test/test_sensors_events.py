"""Event encoder: polarity counts by hand, sensor-to-input scaling, voxel grid, event images."""

import numpy as np
import pytest

from sam_mmseg_ros.contracts import EventArray, ImageData, InputError
from sam_mmseg_ros.sensors.events import encode_events, event_frame, voxel_grid
from sam_mmseg_ros.sensors.image_input import resize_sparse


def _events(xyp, width, height, t_ns=None):
    x, y, p = (np.array(c) for c in zip(*xyp, strict=True)) if xyp else (np.zeros(0),) * 3
    t = np.arange(len(x), dtype=np.int64) if t_ns is None else np.asarray(t_ns, np.int64)
    return EventArray(x.astype(np.int32), y.astype(np.int32), t, p.astype(np.int8), width, height)


def test_counts_per_polarity_per_pixel():
    events = _events([(1, 2, 1)] * 3 + [(1, 2, -1)] + [(3, 0, 1)] * 6, width=4, height=4)
    frame = event_frame(events, (4, 4))
    assert frame.shape == (3, 4, 4) and frame.dtype == np.float32
    assert frame[2, 2, 1] == 0.75  # 3 positive events / saturation 4
    assert frame[0, 2, 1] == 0.25  # 1 negative event
    assert frame[2, 0, 3] == 1.0  # 6 positive events saturate
    assert not frame[1].any()
    assert np.count_nonzero(frame) == 3


def test_sensor_resolution_differs_from_input_size():
    events = _events([(0, 0, 1), (7, 3, 1), (6, 2, -1), (3, 1, 1)], width=8, height=4)
    frame = event_frame(events, (2, 4))
    # sensor (x, y) -> input (floor((x + .5) * 4 / 8), floor((y + .5) * 2 / 4))
    assert frame[2, 0, 0] == 0.25 and frame[2, 1, 3] == 0.25 and frame[0, 1, 3] == 0.25
    assert frame[2, 0, 1] == 0.25
    upscaled = event_frame(_events([(1, 1, 1)], width=2, height=2), (4, 4))
    assert np.argwhere(upscaled[2]).tolist() == [[3, 3]]


def test_events_outside_the_sensor_are_dropped():
    events = _events([(-1, 0, 1), (4, 0, 1), (0, 4, 1), (0, -3, 1), (2, 2, 1)], width=4, height=4)
    frame = event_frame(events, (4, 4))
    assert np.argwhere(frame[2]).tolist() == [[2, 2]]


def test_empty_events():
    frame, stats = encode_events(EventArray.empty(640, 480), (8, 8), window_s=0.05)
    assert frame.shape == (3, 8, 8) and not frame.any()
    assert stats == {"event_count": 0.0, "event_rate_hz": 0.0}
    assert not voxel_grid(EventArray.empty(640, 480), 5, (8, 8)).any()


def test_voxel_grid_is_bilinear_in_time_and_sums_to_polarity():
    events = _events([(0, 0, 1), (1, 0, -1), (2, 0, 1), (3, 3, 1)], width=4, height=4,
                     t_ns=[0, 100, 50, 25])
    grid = voxel_grid(events, 3, (4, 4))
    assert grid.shape == (3, 4, 4) and grid.dtype == np.float32
    assert grid.sum() == pytest.approx(2.0)  # sum of polarities
    np.testing.assert_allclose(grid[:, 0, 0], [1, 0, 0])  # first event: first bin
    np.testing.assert_allclose(grid[:, 0, 1], [0, 0, -1])  # last event: last bin
    np.testing.assert_allclose(grid[:, 0, 2], [0, 1, 0])  # middle
    np.testing.assert_allclose(grid[:, 3, 3], [0.5, 0.5, 0])  # a quarter: split between bins 0 and 1
    rng = np.random.default_rng(5)
    n = 1000
    many = EventArray(rng.integers(0, 32, n), rng.integers(0, 24, n), rng.integers(0, 10**6, n),
                      rng.choice(np.array([-1, 1], np.int8), n), 32, 24)
    assert voxel_grid(many, 5, (12, 16)).sum() == pytest.approx(float(many.polarity.sum()), abs=1e-3)


def test_encode_events_stats_and_voxel_representation():
    events = _events([(1, 1, 1)] * 10, width=4, height=4, t_ns=np.linspace(0, 10**7, 10))
    frame, stats = encode_events(events, (4, 4), window_s=0.05)
    assert stats == {"event_count": 10.0, "event_rate_hz": pytest.approx(200.0)}
    assert frame[2, 1, 1] == 1.0
    voxels, _ = encode_events(events, (4, 4), window_s=0.05, encoding="event-voxel-v1")
    assert voxels.shape == (3, 4, 4) and voxels.min() >= 0 and voxels.max() <= 1
    assert voxels[0, 0, 0] == 0.5 and voxels[:, 1, 1].sum() > 1.5  # 0.5 = no event
    _, no_window = encode_events(events, (4, 4))
    assert no_window["event_rate_hz"] == pytest.approx(10 / 0.01)


def test_accumulated_event_images():
    mono = np.zeros((8, 8), np.uint8)
    mono[5, 6] = 255  # one event pixel survives 2x down-scaling (max-pooling)
    frame, stats = encode_events(ImageData(mono, "mono8"), (4, 4), window_s=0.05)
    assert frame.shape == (3, 4, 4)
    np.testing.assert_array_equal(frame[:, 2, 3], [1.0, 1.0, 1.0])
    assert np.count_nonzero(frame) == 3 and stats["event_count"] == 1.0
    rgb = np.zeros((6, 9, 3), np.uint8)
    rgb[:, :, 2] = 255
    frame, _ = encode_events(ImageData(rgb, "rgb8"), (4, 4))
    np.testing.assert_array_equal(frame[2], 1.0)
    assert not frame[:2].any()
    with pytest.raises(InputError, match="rgb16"):
        encode_events(ImageData(np.zeros((4, 4, 3), np.uint16), "rgb16"), (4, 4))


def test_carla_dvs_encoding_full_intensity_per_polarity_at_sensor_resolution():
    # Five events on one pixel and one on another: DVS images hold "any event", not counts.
    events = _events([(1, 2, 1)] * 5 + [(3, 0, -1), (1, 2, -1)], width=6, height=4)
    image = np.zeros((4, 6, 3), np.uint8)  # as CARLA draws it: img[y, x, pol * 2] = 255
    image[2, 1] = (255, 0, 255)  # both polarities: red and blue
    image[0, 3, 0] = 255  # darker: red
    # Into the model input as a DELIVER event file of the same window: a 2x upscaled sensor
    # repeats pixels, and a single event survives a non-integer downscale.
    frame, stats = encode_events(events, (8, 12), window_s=0.1, encoding="carla-dvs-v1")
    np.testing.assert_array_equal(frame[:, 4:6, 2:4], np.broadcast_to([[[1.0]], [[0.0]], [[1.0]]], (3, 2, 2)))
    assert np.count_nonzero(frame) == 3 * 4 and set(np.unique(frame)) == {0.0, 1.0}
    assert stats == {"event_count": 7.0, "event_rate_hz": pytest.approx(70.0)}
    for size in ((8, 12), (3, 5), (4, 6)):
        from_events, _ = encode_events(events, size, encoding="carla-dvs-v1")
        from_file, file_stats = encode_events(ImageData(image, "rgb8"), size, encoding="carla-dvs-v1")
        np.testing.assert_array_equal(from_events, from_file)
    assert file_stats["event_count"] == 2  # pixels with any event
    small, _ = encode_events(events, (3, 5), encoding="carla-dvs-v1")
    assert small[0].sum() == 2 and small[2].sum() == 1


def test_sparse_resize_keeps_events_and_nearest_points():
    image = np.zeros((7, 10, 1), np.uint8)
    image[0, 0], image[0, 1], image[6, 9] = 40, 12, 200
    np.testing.assert_array_equal(resize_sparse(image, (3, 4), "max")[:, :, 0],
                                  [[40, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 200]])
    np.testing.assert_array_equal(resize_sparse(image, (3, 4), "nearest_point")[:, :, 0],
                                  [[12, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 200]])
    up = resize_sparse(image, (14, 20), "nearest_point")
    assert up.shape == (14, 20, 1) and (up[:2, :2, 0] == 40).all()


def test_malformed_events_raise_input_error():
    with pytest.raises(InputError, match="invalid size"):
        event_frame(EventArray.empty(0, 480), (4, 4))
    bad = EventArray(np.zeros(3), np.zeros(2), np.zeros(3, np.int64), np.ones(3, np.int8), 4, 4)
    with pytest.raises(InputError, match="lengths"):
        event_frame(bad, (4, 4))


def test_non_integer_coordinates_are_refused():
    events = EventArray(np.array([1.5]), np.array([2.0]), np.zeros(1, np.int64), np.ones(1, np.int8), 4, 4)
    with pytest.raises(InputError, match="integers"):
        event_frame(events, (4, 4))
