"""event_camera_msgs/EventPacket -> EventArray: the `evt3`, `libcaer_cmp` and `libcaer` encodings.

EventPacket is what metavision_driver (evt3) and libcaer_driver (libcaer_cmp, libcaer) publish:
the sensor's own compact binary stream. The formats are those of ros-event-camera's
event_camera_codecs (its decoders are the reference these are tested against):

- evt3 (Prophesee): 16-bit little-endian words, 4-bit code in the top bits. TIME_HIGH (8) sets
  bits 12-23 of the microsecond time, TIME_LOW (6) bits 0-11; a TIME_HIGH smaller than the
  previous one by more than 10 is a wrap of the 24-bit time (+2^24 us). ADDR_Y (0) sets the row;
  ADDR_X (2) is one event (x, polarity bit 11); VECT_BASE_X (3) sets x and polarity for the
  following VECT_12 (4) / VECT_8 (5) words, whose set bits are events at x + bit, each advancing
  x by 12 / 8. EXT_TRIGGER, OTHERS and CONTINUED words carry no pixel events. The stream is
  stateful across packets (a packet may start with events of the row and time set in the last
  one), and nothing counts before the first TIME_HIGH followed by a TIME_LOW.
- libcaer_cmp (iniVation): the same idea with codes TIME_HIGH 0, TIME_LOW 1, ADDR_X 2 (sets x),
  ADDR_Y 3 (one event at y, polarity bit 11), VECT_BASE_Y 4 and VECT_8 5 (events at y + bit);
  times are microseconds after the packet's `time_base` (ns), restarting at 0 in every packet.
- libcaer: 8 bytes per event, a 32-bit word (x bits 17-31, y bits 2-16, polarity bit 1) and a
  signed 32-bit microsecond timestamp added to `time_base`; a decreasing timestamp is a 2^31 us
  wrap.

Events outside the packet's width x height are dropped, as the reference decoders drop them.
Decoding is vectorized; nothing loops per event in Python. The running state a sequential decoder
keeps (time, row, vector base) is one cumulative sum of per-word changes: every state word adds
the difference to the previous value of its kind, and kinds that cannot overflow into each other
share one int64 sum (time * 2048 + row), so the words are scanned once, plus once more for
packets with vector words.

Times: sensor clocks (evt3's starts at camera power-up and wraps every 16.7 s; libcaer's drifts
from the host's) are put on the ROS clock the way event_camera_msgs documents for ROS time:
header.stamp + (event sensor time - sensor time of the packet's first event).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sam_mmseg_ros.contracts import EventArray, InputError
from sam_mmseg_ros.decoders.common import message_bytes, stamp_to_ns

ENCODINGS = ("evt3", "libcaer_cmp", "libcaer")

_POPCOUNT = np.array([bin(v).count("1") for v in range(4096)], np.int64)
_BITS = np.arange(12, dtype=np.uint16)
_ROW_BITS = 11  # rows and columns are 11-bit fields


@dataclass
class _StreamState:
    """What a stateful encoding carries from one packet of a stream to the next."""

    valid: bool = False  # evt3: a TIME_HIGH then TIME_LOW has been seen
    time_high: int = 0  # evt3: bits 12 and up of the microsecond time, wraps included
    time_low: int = 0
    row: int = 0  # evt3 y / libcaer_cmp x of the following events
    vector_base: int = 0  # evt3 x / libcaer_cmp y of the next vector word
    polarity: int = 0


@dataclass
class SensorEvents:
    """Decoded events in sensor time (ns), before they are put on the ROS clock."""

    x: np.ndarray  # int32
    y: np.ndarray  # int32
    t_ns: np.ndarray  # int64
    polarity: np.ndarray  # 0 / 1 as the sensor reports it


class EventPacketDecoder:
    """Decodes one stream (topic) of EventPackets; keep one per stream: evt3 carries state from
    packet to packet. `fallback_size` (width, height) is used when a packet leaves its size 0."""

    def __init__(self):
        self.state = _StreamState()
        self._encoding: str | None = None

    def reset(self) -> None:
        self.state = _StreamState()

    def decode(self, msg, fallback_size: tuple[int, int] | None = None) -> EventArray:
        """EventPacket -> EventArray on the ROS clock (see the module docstring)."""
        width, height = int(msg.width), int(msg.height)
        if (width <= 0 or height <= 0) and fallback_size is not None:
            width, height = fallback_size
        if width <= 0 or height <= 0:
            raise InputError(f"EventPacket has no sensor size ({msg.width}x{msg.height}); set event_sensor_size")
        events = self.decode_sensor_time(msg, width, height)
        if not len(events.t_ns):
            return EventArray.empty(width, height)
        t_ns = events.t_ns + (stamp_to_ns(msg.header.stamp) - int(events.t_ns[0]))
        polarity = events.polarity.astype(np.int8)
        polarity *= 2
        polarity -= 1
        return EventArray(events.x, events.y, t_ns, polarity, width, height)

    def decode_sensor_time(self, msg, width: int, height: int) -> SensorEvents:
        """The packet's events with their sensor times, as event_camera_codecs' decoders give them."""
        encoding = str(msg.encoding)
        if encoding not in ENCODINGS:
            raise InputError(f"unsupported EventPacket encoding '{encoding}' (supported: {', '.join(ENCODINGS)})")
        if encoding != self._encoding:  # a stream that changes encoding starts over
            self.reset()
            self._encoding = encoding
        data = message_bytes(msg.events)
        order = ">" if bool(msg.is_bigendian) else "<"
        if encoding == "libcaer":
            if data.size % 8:
                raise InputError(f"libcaer EventPacket has {data.size} bytes, not a multiple of 8 (truncated)")
            events = _decode_libcaer(data, order, int(msg.time_base))
        else:
            if data.size % 2:
                raise InputError(f"{encoding} EventPacket has an odd number of bytes ({data.size}): truncated")
            words = data.view(np.dtype(f"{order}u2"))
            if encoding == "evt3":
                events = _decode_evt3(words, self.state)
            else:
                events = _decode_libcaer_cmp(words, self.state, int(msg.time_base))
        if events.x.size and (events.x.max() >= width or events.y.max() >= height):
            inside = (events.x < width) & (events.y < height)
            events = SensorEvents(events.x[inside], events.y[inside], events.t_ns[inside], events.polarity[inside])
        return events


def _changes(positions: np.ndarray, values: np.ndarray, carried: int, scale: int, out: np.ndarray) -> None:
    """Add to `out` (one entry per word) the changes that make its cumulative sum `scale` x the running value:
    at each position the difference to the value before it (`carried` before the first)."""
    if positions.size:
        values = values.astype(np.int64)
        delta = np.empty(values.size, np.int64)
        delta[0] = values[0] - carried
        np.subtract(values[1:], values[:-1], out=delta[1:])
        out[positions] += delta * scale


def _empty() -> SensorEvents:
    return SensorEvents(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int8))


def _running_vectors(state: _StreamState, is_base: np.ndarray, payload: np.ndarray, event_words: np.ndarray,
                     vector: np.ndarray, step) -> tuple[np.ndarray, np.ndarray]:
    """(coordinate, polarity) for the vector words among `event_words`: the last vector base word's
    coordinate (or the one carried in) advanced by `step` per vector word since it; updates the
    carried base and polarity.

    Over the base and vector words only, in stream order: with C the cumulative steps, a vector word
    j after base word k sits at base_k + C(j) - step_j - C(k); the per-base constant base_k - C(k)
    (and the base's polarity) is itself a running value, so two cumulative sums do it."""
    base_at = np.flatnonzero(is_base)
    vector_at = event_words[vector]
    merged = np.concatenate((base_at, vector_at))
    order = np.argsort(merged, kind="stable")  # a merge of two sorted runs
    is_vector = order >= base_at.size
    steps = np.zeros(merged.size, np.int64)
    steps[is_vector] = step
    cumulative = np.cumsum(steps)
    bases = payload[base_at].astype(np.int64)
    offset = 1 << 20  # keeps base - C positive, so polarity can share the sum as its lowest bit
    per_base = ((bases & 0x7FF) - cumulative[~is_vector] + offset) * 2 + ((bases >> 11) & 1)
    carried = (state.vector_base + offset) * 2 + state.polarity
    changes = np.zeros(merged.size, np.int64)
    _changes(np.flatnonzero(~is_vector), per_base, carried, 1, changes)
    running = np.cumsum(changes)
    running += carried
    coordinate = (running[is_vector] >> 1) - offset + cumulative[is_vector] - steps[is_vector]
    if merged.size:
        state.vector_base = int((running[-1] >> 1) - offset + cumulative[-1])
        state.polarity = int(running[-1] & 1)
    return coordinate, running[is_vector] & 1


def _expand(x: np.ndarray, y: np.ndarray, t_ns: np.ndarray, polarity: np.ndarray, vector: np.ndarray,
            masks: np.ndarray, along_x: bool) -> SensorEvents:
    """Events of the event words in stream order: one per single-event word, one per set bit of a
    vector word's mask (lowest bit first, at coordinate + bit along x or y)."""
    if not vector.any():
        return SensorEvents(x.astype(np.int32), y.astype(np.int32), t_ns, polarity.astype(np.int8))
    counts = np.where(vector, _POPCOUNT[masks], 1)
    owner = np.repeat(np.arange(counts.size), counts)
    bit = np.zeros(owner.size, np.int32)
    bit[np.repeat(vector, counts)] = np.nonzero((masks[vector, None] >> _BITS) & 1)[1]
    x, y = x[owner].astype(np.int32), y[owner].astype(np.int32)
    (x if along_x else y)[:] += bit
    return SensorEvents(x, y, t_ns[owner], polarity[owner].astype(np.int8))


def _decode_evt3(words: np.ndarray, state: _StreamState) -> SensorEvents:
    code = words >> 12
    counts = np.bincount(code, minlength=16)
    if counts[[1, 9, 11, 12, 13]].any():
        at = int(np.flatnonzero(np.isin(code, (1, 9, 11, 12, 13)))[0])
        raise InputError(f"evt3 EventPacket has unsupported word code {int(code[at])} at word {at}")
    payload = words & 0xFFF
    n = words.size
    # Time high words with wrap detection (a drop of more than 10 steps, as the reference allows
    # for small backward glitches); they count before the stream is valid too.
    high_at = np.flatnonzero(code == 8)
    low_at = np.flatnonzero(code == 6)
    high12 = payload[high_at].astype(np.int64)
    previous = np.concatenate((((state.time_high >> 12) & 0xFFF,), high12[:-1]))
    wraps = np.cumsum((high12 < previous) & (previous - high12 > 10))
    high = (state.time_high & ~((1 << 24) - 1)) + (wraps << 24) + (high12 << 12)
    lows = payload[low_at].astype(np.int64)
    start = 0
    if not state.valid:  # nothing counts before a TIME_HIGH followed by a TIME_LOW
        after = low_at[low_at > high_at[0]] if high_at.size else low_at[:0]
        if not after.size:
            _carry_time(state, high, lows)
            return _empty()
        start = int(after[0]) + 1
        state.valid = True
    has_vectors = bool(counts[4] or counts[5] or counts[3])
    event_at = np.flatnonzero((code == 2) | (code == 4) | (code == 5) if has_vectors else code == 2)
    row_at = np.flatnonzero(code == 0)
    if start:
        event_at, row_at = event_at[event_at >= start], row_at[row_at >= start]
    # One running sum: time (us, relative to the carried time) * 2048 + row.
    base_time = state.time_high + state.time_low
    changes = np.zeros(n, np.int64)
    _changes(high_at, high - state.time_high, 0, 1 << _ROW_BITS, changes)
    _changes(low_at, lows, state.time_low, 1 << _ROW_BITS, changes)
    _changes(row_at, payload[row_at] & 0x7FF, state.row, 1, changes)
    running = np.cumsum(changes)
    running += state.row
    value = running[event_at]
    t_ns = ((value >> _ROW_BITS) + base_time) * 1000
    y = value & 0x7FF
    word = payload[event_at]
    x, polarity = word & 0x7FF, (word >> 11) & 1
    _carry_time(state, high, lows)
    state.row = int(running[-1] & 0x7FF) if n else state.row
    if not has_vectors:
        return SensorEvents(x.astype(np.int32), y.astype(np.int32), t_ns, polarity.astype(np.int8))
    event_code = code[event_at]
    vector = event_code != 2
    is_base = code == 3
    is_base[:start] = False
    x, polarity = x.astype(np.int64), polarity.astype(np.int64)
    x[vector], polarity[vector] = _running_vectors(state, is_base, payload, event_at, vector,
                                                   np.where(event_code[vector] == 4, 12, 8))
    masks = np.where(event_code == 4, word, word & 0xFF)
    return _expand(x, y, t_ns, polarity, vector, masks, along_x=True)


def _carry_time(state: _StreamState, high: np.ndarray, lows: np.ndarray) -> None:
    state.time_high = int(high[-1]) if high.size else state.time_high
    state.time_low = int(lows[-1]) if lows.size else state.time_low


def _decode_libcaer_cmp(words: np.ndarray, state: _StreamState, time_base: int) -> SensorEvents:
    code = words >> 12
    payload = words & 0xFFF
    # One running sum: time (us after time_base; high and low restart at 0 in every packet) * 2048
    # + the column set by ADDR_X.
    high_at, low_at, column_at = (np.flatnonzero(code == c) for c in (0, 1, 2))
    changes = np.zeros(words.size, np.int64)
    _changes(high_at, payload[high_at].astype(np.int64) << 12, 0, 1 << _ROW_BITS, changes)
    _changes(low_at, payload[low_at], 0, 1 << _ROW_BITS, changes)
    _changes(column_at, payload[column_at] & 0x7FF, state.row, 1, changes)
    running = np.cumsum(changes)
    running += state.row
    event_at = np.flatnonzero((code == 3) | (code == 5))  # ADDR_Y (one event), VECT_8
    value = running[event_at]
    t_ns = time_base + (value >> _ROW_BITS) * 1000
    x = value & 0x7FF
    word = payload[event_at].astype(np.int64)
    y, polarity = word & 0x7FF, (word >> 11) & 1
    vector = code[event_at] == 5
    is_base = code == 4
    if vector.any() or is_base.any():
        y[vector], polarity[vector] = _running_vectors(state, is_base, payload, event_at, vector, 8)
    state.row = int(running[-1] & 0x7FF) if words.size else state.row
    return _expand(x, y, t_ns, polarity, vector, word & 0xFF, along_x=False)


def _decode_libcaer(data: np.ndarray, order: str, time_base: int) -> SensorEvents:
    events = data.view(np.dtype([("word", f"{order}u4"), ("stamp_us", f"{order}i4")]))
    word = events["word"]
    stamp_us = events["stamp_us"].astype(np.int64)
    t_ns = stamp_us * 1000
    t_ns += time_base
    wrapped = np.flatnonzero(stamp_us[1:] < stamp_us[:-1]) + 1
    for at in wrapped:  # a 2^31 us (35 min) wrap: at most one per packet in practice
        t_ns[at:] += (1 << 31) * 1000
    return SensorEvents(((word >> 17) & 0x7FFF).astype(np.int32), ((word >> 2) & 0x7FFF).astype(np.int32), t_ns,
                        ((word >> 1) & 1).astype(np.int8))
