"""Event-camera encoders: an event window -> 3-channel image in [0, 1] at the model input size.

Three encodings (named in sensors/encodings.py, recorded in every checkpoint):

`event-count-v1` (the package's own, `event_frame`), laid out like the CARLA DVS renders DELIVER's
event images come from (red = darker, blue = brighter):

| ch | meaning | scaling |
|----|---------|---------|
| 0 | negative (darker) events per pixel | min(count, 4) / 4 |
| 1 | unused, as in DELIVER | 0 |
| 2 | positive (brighter) events per pixel | min(count, 4) / 4 |

Counts saturate at `EVENT_COUNT_SATURATION` so that a few very active pixels (flicker, hot
pixels) do not push every other event towards zero, as a per-frame maximum would.

`event-voxel-v1`: 3 time bins, events spread bilinearly in time and weighted by polarity, mapped
to 0.5 + 0.5 * clip(sum / 4, -1, 1) (0.5 = no event).

`carla-dvs-v1` (what DELIVER's event images hold, `dvs_pixels`): CARLA's DVS sensor output drawn as
CARLA's own examples draw it, `image[y, x, polarity * 2] = 255`: any event, however many, sets
its polarity's channel to full intensity, red (ch0) darker, blue (ch2) brighter, green unused,
at the event sensor's own resolution; DELIVER's `eventlowres` case is a lower sensor resolution.
That image is pooled to the model input by `image_input.pool_sparse` ("max": an event pixel
survives any downscale), exactly as a DELIVER event file or a ready event image is. Known: the loader
reads these files as 3-channel images and resizes low-resolution ones nearest-neighbour to the
RGB size; CARLA's DVS draws red/blue at 255 on black; DELIVER's figures show such red/blue
images. Assumed: the files keep CARLA's RGB channel order (red darker), and one image holds the
events of one camera frame period (the node uses `event_window_ms`).

The event sensor may have another resolution than the model input (and the RGB camera): sensor
pixel (x, y) goes to input pixel floor((x + 0.5) * W / width), same for rows, so the whole
sensor maps onto the whole input. Accumulation is one vectorized np.add.at (no Python loop).
"""

from __future__ import annotations

import numpy as np

from sam_mmseg_ros.contracts import EventArray, ImageData, InputError
from sam_mmseg_ros.sensors.encodings import ENCODINGS, live_encodings
from sam_mmseg_ros.sensors.image_input import encode_image_input, pool_sparse, sparse_to_unit

EVENT_COUNT_SATURATION = 4.0
VOXEL_BINS = 3


def event_pixels(events: EventArray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(flat pixel index at `size`, mask of the events kept): events outside the sensor drop."""
    _check_events(events)
    h, w = size
    x, y = np.asarray(events.x), np.asarray(events.y)
    if x.dtype.kind not in "iu" or y.dtype.kind not in "iu":
        raise InputError(f"event coordinates must be integers, got {x.dtype} and {y.dtype}")
    inside = (x >= 0) & (x < events.width) & (y >= 0) & (y < events.height)
    if not inside.all():
        x, y = x[inside], y[inside]
    # Per-column and per-row tables, then two gathers (np.take: 3x faster than indexing
    # here): integer division of every event's coordinates is not vectorized and cost more.
    col_of = (2 * np.arange(events.width) + 1) * w // (2 * events.width)
    row_start = (2 * np.arange(events.height) + 1) * h // (2 * events.height) * w
    return np.take(row_start, y) + np.take(col_of, x), inside


def event_frame(events: EventArray, size: tuple[int, int] = (512, 512),
                count_saturation: float = EVENT_COUNT_SATURATION,
                out: np.ndarray | None = None) -> np.ndarray:
    """Polarity frame float32 [3, H, W] in [0, 1] (channels in the module docstring)."""
    h, w = size
    flat, inside = event_pixels(events, size)
    positive = np.asarray(events.polarity)[inside] > 0
    if out is None:
        out = np.empty((3, h, w), np.float32)
    elif not out.flags.c_contiguous:
        raise ValueError("event_frame needs a C-contiguous output buffer")
    # Each event adds 1 / saturation to its pixel in channel 0 (negative) or 2 (positive), then
    # the frame is clipped at 1. np.add.at into the float32 output measured 1.6 ms at 1024x1024
    # against 11 ms for np.bincount, whose int64 [2, H, W] histogram is 16 MB to fill and read.
    out.fill(0.0)
    np.add.at(out.reshape(-1), flat + positive * (2 * h * w), np.float32(1.0 / count_saturation))
    np.minimum(out[0::2], 1.0, out=out[0::2])  # channel 1 stays 0
    return out


def voxel_grid(events: EventArray, bins: int = VOXEL_BINS,
               size: tuple[int, int] = (512, 512)) -> np.ndarray:
    """Polarity-weighted voxel grid float32 [bins, H, W]: each event splits its polarity between
    the two nearest time bins (bilinear in time), so the grid sums to the polarity sum."""
    h, w = size
    flat, inside = event_pixels(events, size)
    grid = np.zeros(bins * h * w, np.float64)
    if flat.size:
        t = np.asarray(events.t_ns, np.int64)[inside]
        polarity = np.where(np.asarray(events.polarity)[inside] > 0, 1.0, -1.0)  # as event_frame
        t0, t1 = int(t.min()), int(t.max())
        position = (t - t0) * ((bins - 1) / (t1 - t0)) if t1 > t0 else np.zeros(t.shape)
        lower = np.minimum(np.floor(position).astype(np.int64), bins - 1)
        upper_weight = position - lower
        upper = np.minimum(lower + 1, bins - 1)
        grid += np.bincount(lower * (h * w) + flat, polarity * (1 - upper_weight), bins * h * w)
        grid += np.bincount(upper * (h * w) + flat, polarity * upper_weight, bins * h * w)
    return grid.astype(np.float32).reshape(bins, h, w)


def dvs_pixels(events: EventArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `carla-dvs-v1` image of an event window as its lit entries: (row, column at the
    sensor's resolution, channel 0 for darker or 2 for brighter); each is 255 in the image."""
    _check_events(events)
    x, y = np.asarray(events.x), np.asarray(events.y)
    inside = (x >= 0) & (x < events.width) & (y >= 0) & (y < events.height)
    if not inside.all():
        x, y = x[inside], y[inside]
    brighter = np.asarray(events.polarity) > 0
    return y, x, np.multiply(brighter if inside.all() else brighter[inside], 2, dtype=np.int32)


def encode_events(data: EventArray | ImageData, size: tuple[int, int] = (512, 512),
                  window_s: float | None = None, encoding: str = "event-count-v1",
                  out: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """float32 [3, H, W] in [0, 1] plus stats `event_count` and `event_rate_hz`.

    `window_s` is the length of the accumulation window (the rate is count / window_s; without
    it, the span of the event timestamps). An ImageData is an event frame rendered upstream in
    `encoding` (e.g. a DELIVER event image); its `event_count` is the number of pixels with any
    event.
    """
    if encoding not in live_encodings("event"):
        raise ValueError(f"unknown event encoding '{encoding}' (use {', '.join(live_encodings('event'))})")
    if isinstance(data, ImageData):
        out, active = encode_image_input(data, size, ENCODINGS[encoding].image_resample, out)
        return out, {"event_count": float(active), "event_rate_hz": active / window_s if window_s else 0.0}
    if encoding == "event-count-v1":
        frame = event_frame(data, size, out=out)
    elif encoding == "carla-dvs-v1":
        # Pooled from the lit pixels as an image of them would be (sensors/image_input.py).
        rows, cols, channels = dvs_pixels(data)
        lit = pool_sparse(rows, cols, channels, 255, (data.height, data.width), size, "max", 3)
        frame = sparse_to_unit(lit, out if out is not None else np.empty((3, *size), np.float32))
    else:
        grid = voxel_grid(data, VOXEL_BINS, size)
        frame = out if out is not None else np.empty((VOXEL_BINS, *size), np.float32)
        np.clip(grid * np.float32(0.5 / EVENT_COUNT_SATURATION), -0.5, 0.5, out=frame)
        frame += 0.5
    count = len(data)
    return frame, {"event_count": float(count), "event_rate_hz": _rate(count, data.t_ns, window_s)}


def _rate(count: int, t_ns: np.ndarray, window_s: float | None) -> float:
    if window_s:
        return count / window_s
    if count < 2:
        return 0.0
    span_s = (int(np.max(t_ns)) - int(np.min(t_ns))) * 1e-9
    return count / span_s if span_s > 0 else 0.0


def _check_events(events: EventArray) -> None:
    if events.width <= 0 or events.height <= 0:
        raise InputError(f"event sensor has invalid size {events.width}x{events.height}")
    n = len(events)
    lengths = {len(events.x), len(events.y), len(events.polarity)}
    if lengths != {n}:
        raise InputError(f"event arrays have different lengths: x {len(events.x)}, y {len(events.y)}, "
                         f"t {n}, polarity {len(events.polarity)}")
