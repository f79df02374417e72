"""Camera-triggered assembly: one FrameBundle per RGB frame, built from small ring buffers.

The camera is the clock. message_filters' ApproximateTimeSynchronizer fires only when every input
has a message, so one failed sensor would stop all output; here each RGB frame takes, per
modality, the buffered message nearest to its stamp if it lies within that modality's tolerance,
and otherwise records why the modality is left out. Assembly itself never waits: a sensor that
stops becomes an `absent` entry, never a stall, and every buffer is bounded whatever the input rate.

Live, a partner message with the camera's stamp often arrives a few ms after the camera image
(separate DDS topics). Widening the tolerances to hide that would let the previous frame's depth
pass as fresh, so the node's worker first calls `wait_for_partners`: it waits, at most
`max_wait_ms`, only for modalities that are alive and whose matching message is still to come
(`awaited`). Callbacks never wait; `add` only wakes the waiter.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import statistics
import threading
import time
from dataclasses import dataclass, field

from sam_mmseg_ros.contracts import EventArray, FrameBundle, ImageData, PointCloud, Stamped
from sam_mmseg_ros.settings import default

SYNCED_MODALITIES: tuple[str, ...] = ("depth", "event", "lidar")
"""Modalities matched to the camera; RGB itself triggers assembly."""

NEVER_RECEIVED = "never received"
NEVER_SINCE_RESET = "never received since the clock jumped back"

_EXPECTED_TYPES = {"depth": (ImageData,), "lidar": (PointCloud, ImageData), "event": (EventArray, ImageData)}


@dataclass
class SyncConfig:
    """Matching rules. Partial dicts are completed with the defaults, so a parameter file may set
    only what it changes."""

    # Nearest-message tolerance; for events it applies to event frames (ImageData), while event
    # chunks are cut to the window (stamp - event_window_ms, stamp].
    tolerance_ms: dict[str, float] = field(
        default_factory=lambda: {m: default(f"sync.tolerance_ms.{m}") for m in SYNCED_MODALITIES})
    event_window_ms: float = default("event_window_ms")
    buffer_size: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(SYNCED_MODALITIES, default("sync.buffer_size")))
    enabled: dict[str, bool] = field(default_factory=lambda: {m: default(f"enable.{m}") for m in SYNCED_MODALITIES})
    reset_on_backwards_s: float = default("sync.reset_on_backwards_s")
    # Event chunks come at up to kHz rates, so they get their own bounds: a count, and a time span
    # behind the newest event (long enough for a camera stamp that lags the event stream).
    event_chunk_limit: int = 1024
    event_history_ms: float = 500.0
    # Longest wait for partners of one camera frame (`wait_for_partners`); 0 disables waiting.
    max_wait_ms: float = default("sync.max_wait_ms")
    # An event window counts as complete once the stream has reached the camera stamp to within
    # this much: chunks usually end just before the camera stamp, and waiting a whole chunk period
    # for the last few events is not worth the latency.
    event_complete_slack_ms: float = 1.0

    def __post_init__(self):
        defaults = SyncConfig.__dataclass_fields__
        for name in ("tolerance_ms", "buffer_size", "enabled"):
            merged = defaults[name].default_factory()
            unknown = set(getattr(self, name)) - set(SYNCED_MODALITIES)
            if unknown:
                raise ValueError(f"SyncConfig.{name}: unknown modalities {sorted(unknown)} "
                                 f"(expected some of {SYNCED_MODALITIES})")
            merged.update(getattr(self, name))
            setattr(self, name, merged)
        if any(v < 0 for v in self.tolerance_ms.values()):
            raise ValueError(f"SyncConfig.tolerance_ms must be >= 0, got {self.tolerance_ms}")
        if any(int(v) < 1 for v in self.buffer_size.values()) or self.event_chunk_limit < 1:
            raise ValueError("SyncConfig buffer sizes must be >= 1")
        if self.event_window_ms <= 0 or self.event_history_ms < self.event_window_ms:
            raise ValueError("SyncConfig needs 0 < event_window_ms <= event_history_ms")
        if self.reset_on_backwards_s <= 0:
            raise ValueError("SyncConfig.reset_on_backwards_s must be > 0")
        if self.max_wait_ms < 0 or self.event_complete_slack_ms < 0:
            raise ValueError("SyncConfig.max_wait_ms and event_complete_slack_ms must be >= 0")


PERIOD_SAMPLES = 8
"""Stamp intervals (the newest ones buffered) whose median is a stream's typical period."""

ALIVE_PERIODS = 2.5
"""A stream whose newest stamp is more than this many typical periods (plus `max_wait_ms`) older
than the camera stamp has stopped (one dropped message is tolerated, two are not): it is not
waited for."""


def typical_period_ns(stamps: list[int]) -> int | None:
    """Median interval between the newest buffered stamps; None before two distinct stamps."""
    intervals = [b - a for a, b in itertools.pairwise(stamps[-PERIOD_SAMPLES - 1:]) if b > a]
    return int(statistics.median(intervals)) if intervals else None


class _StampBuffer:
    """Messages of one stream kept in stamp order (late arrivals are inserted in place); when full
    the oldest stamp goes first."""

    def __init__(self, maxlen: int):
        self.maxlen = maxlen
        self.stamps: list[int] = []
        self.items: list[Stamped] = []

    def __len__(self) -> int:
        return len(self.items)

    def insert(self, item: Stamped) -> None:
        i = bisect.bisect_right(self.stamps, item.stamp_ns)
        self.stamps.insert(i, item.stamp_ns)
        self.items.insert(i, item)
        if len(self.items) > self.maxlen:
            del self.stamps[0], self.items[0]

    def nearest(self, stamp_ns: int) -> Stamped | None:
        """The item closest in time on either side; the older one on a tie (it was already there
        when the camera exposed)."""
        if not self.items:
            return None
        i = bisect.bisect_left(self.stamps, stamp_ns)
        candidates = [j for j in (i - 1, i) if 0 <= j < len(self.items)]
        best = min(candidates, key=lambda j: (abs(self.stamps[j] - stamp_ns), self.stamps[j]))
        return self.items[best]

    def clear(self) -> None:
        self.stamps.clear()
        self.items.clear()


class _EventChunks:
    """Event chunks ordered by their first event time, bounded by count and by time span behind
    the newest event. Each chunk's time range is computed once on arrival."""

    def __init__(self, max_chunks: int, history_ns: int):
        self.max_chunks = max_chunks
        self.history_ns = history_ns
        self.starts: list[int] = []
        self.chunks: list[tuple[int, int, EventArray]] = []  # (t_first, t_last, events)
        self.newest_ns: int | None = None

    def __len__(self) -> int:
        return len(self.chunks)

    def insert(self, item: Stamped) -> None:
        events: EventArray = item.data
        if len(events):
            t_first, t_last = int(events.t_ns.min()), int(events.t_ns.max())
        else:  # an empty chunk still says the stream is alive up to its stamp
            t_first = t_last = item.stamp_ns
        i = bisect.bisect_right(self.starts, t_first)
        self.starts.insert(i, t_first)
        self.chunks.insert(i, (t_first, t_last, events))
        self.newest_ns = t_last if self.newest_ns is None else max(self.newest_ns, t_last)
        horizon = self.newest_ns - self.history_ns
        while len(self.chunks) > self.max_chunks or (len(self.chunks) > 1 and self.chunks[0][1] < horizon):
            del self.starts[0], self.chunks[0]

    def overlapping(self, start_ns: int, end_ns: int) -> list[EventArray]:
        """Chunks with at least one event time in (start_ns, end_ns]."""
        last = bisect.bisect_right(self.starts, end_ns)
        return [ev for t_first, t_last, ev in self.chunks[:last] if t_last > start_ns and len(ev)]

    def span(self) -> tuple[int, int] | None:
        if not self.chunks:
            return None
        return self.chunks[0][0], int(self.newest_ns)

    def clear(self) -> None:
        self.starts.clear()
        self.chunks.clear()
        self.newest_ns = None


class FrameAssembler:
    """Ring buffers per modality, filled by subscriber callbacks (`add`, `set_camera`) on any
    executor thread, read by `assemble` for each camera frame. All methods are thread-safe.

    A stamp older than the newest one seen on the same stream by more than `reset_on_backwards_s`
    (a looping bag, a restarted simulator) clears every buffer: mixing two timelines would pair
    unrelated messages. `resets` counts these, `last_reset_reason` says what happened, and
    `on_reset(reason)` (optional) is called once per reset, outside the lock, whichever call found it.
    """

    def __init__(self, config: SyncConfig | None = None, on_reset=None):
        self.config = config or SyncConfig()
        self.on_reset = on_reset
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # notified by `add`, waited on by `wait_for_partners`
        self._buffers = {m: _StampBuffer(int(self.config.buffer_size[m])) for m in SYNCED_MODALITIES}
        self._event_chunks = _EventChunks(self.config.event_chunk_limit,
                                          int(self.config.event_history_ms * 1e6))
        self._newest_ns: dict[str, int] = {}  # per stream (rgb and the synced modalities)
        self._camera = None
        self.resets = 0
        self.last_reset_reason: str | None = None

    def set_tolerances(self, tolerance_ms: dict[str, float]) -> None:
        """New nearest-message tolerances (a run-time parameter change); applies from the next frame."""
        with self._lock:
            self.config = dataclasses.replace(self.config, tolerance_ms=dict(tolerance_ms))

    def set_camera(self, camera) -> None:
        """Keep the latest camera_info (a CameraModel); intrinsics rarely change, so no buffer."""
        with self._lock:
            self._camera = camera

    def add(self, modality: str, item: Stamped) -> str | None:
        """Buffer one converted message. Returns the reason when this stamp reset the buffers
        (for the caller's log), else None. A disabled modality is dropped without storing."""
        if modality not in SYNCED_MODALITIES:
            raise ValueError(f"unknown modality '{modality}' (expected one of {SYNCED_MODALITIES})")
        if not isinstance(item.data, _EXPECTED_TYPES[modality]):
            raise TypeError(f"{modality} expects {' or '.join(t.__name__ for t in _EXPECTED_TYPES[modality])}, "
                            f"got {type(item.data).__name__}")
        if not self.config.enabled[modality]:
            return None
        with self._lock:
            reset = self._check_time(modality, item.stamp_ns)
            if modality == "event" and isinstance(item.data, EventArray):
                self._event_chunks.insert(item)
            else:
                self._buffers[modality].insert(item)
            self._arrived.notify_all()
        self._report_reset(reset)
        return reset

    def awaited(self, camera_stamp_ns: int) -> set[str]:
        """Enabled modalities whose message for this camera stamp has probably not arrived yet but
        is expected soon (exact rules in `_awaited`)."""
        with self._lock:
            return self._awaited(camera_stamp_ns)

    def wait_for_partners(self, camera_stamp_ns: int, timeout_s: float | None = None) -> set[str]:
        """Block until no modality is `awaited` for this camera stamp, or `timeout_s` (default:
        `max_wait_ms`) has passed; returns the modalities still awaited. Only the worker calls
        this; `add` wakes it up on every message."""
        timeout_s = self.config.max_wait_ms * 1e-3 if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            missing = self._awaited(camera_stamp_ns)
            while missing and (left := deadline - time.monotonic()) > 0:
                self._arrived.wait(left)
                missing = self._awaited(camera_stamp_ns)
            return missing

    def assemble(self, rgb: Stamped) -> FrameBundle:
        """The bundle for this camera frame, from whatever is buffered now (never blocks)."""
        stamp = rgb.stamp_ns
        event_parts: list[EventArray] | None = None
        with self._lock:
            reset = self._check_time("rgb", stamp)
            bundle = FrameBundle(stamp_ns=stamp, frame_id=rgb.frame_id, rgb=rgb.data, camera=self._camera,
                                 stamps={"rgb": stamp})
            never = NEVER_SINCE_RESET if self.resets else NEVER_RECEIVED
            for m in SYNCED_MODALITIES:
                if not self.config.enabled[m]:
                    bundle.absent[m] = "disabled"
                elif m == "event" and len(self._event_chunks):
                    event_parts = self._match_event_window(bundle)
                else:
                    self._match_nearest(bundle, m, never)
        if event_parts is not None:  # concatenate outside the lock: chunks are never modified
            window_ns = int(self.config.event_window_ms * 1e6)
            width, height = event_parts[-1].width, event_parts[-1].height
            bundle.event = EventArray.concatenate(event_parts, width, height).window(stamp - window_ns, stamp)
            if len(bundle.event):
                bundle.stamps["event"] = int(bundle.event.t_ns.max())
            else:  # chunks overlapped the window by their range but no event fell inside it
                bundle.event = None
                bundle.absent["event"] = f"no events in the {self.config.event_window_ms:g} ms window"
        self._report_reset(reset)
        return bundle

    def _report_reset(self, reason: str | None) -> None:
        if reason and self.on_reset is not None:
            self.on_reset(reason)

    def buffered(self) -> dict[str, int]:
        """Messages (event chunks for events) held per modality, for diagnostics and tests."""
        with self._lock:
            counts = {m: len(self._buffers[m]) for m in SYNCED_MODALITIES}
            counts["event"] += len(self._event_chunks)
            return counts

    # Everything below runs with the lock held.

    def _awaited(self, stamp: int) -> set[str]:
        """A modality is awaited for camera stamp S when all of these hold:

        - it is enabled and has at least two buffered stamps, so its typical period P is known;
        - it is alive: its newest stamp n is at most ALIVE_PERIODS * P + max_wait_ms before S;
        - its match is not final yet: n < S for nearest matching (once a message at or after S
          is in, every later one is farther from S), n < S - event_complete_slack_ms for the
          event window (S - window, S];
        - the message that would change the match can still come in time. Its expected stamp e
          is on the stream's grid n + k P (k >= 1): for nearest matching the grid point nearest
          S, which must be within tolerance and nearer than the best buffered match; for the
          event window the first grid point at or after S (the chunk that reaches S). Either way
          e - S <= max_wait_ms, since a message is not published before its stamp.
        """
        awaited = set()
        for m in SYNCED_MODALITIES:
            if not self.config.enabled[m]:
                continue
            if m == "event" and len(self._event_chunks):
                if self._window_awaited(stamp):
                    awaited.add(m)
            elif self._nearest_awaited(m, stamp):
                awaited.add(m)
        return awaited

    def _alive_period(self, stamps: list[int], newest: int, stamp: int) -> int | None:
        """The stream's typical period when it is alive at this camera stamp, else None."""
        period = typical_period_ns(stamps)
        if period is None or stamp - newest > ALIVE_PERIODS * period + self.config.max_wait_ms * 1e6:
            return None
        return period

    def _nearest_awaited(self, m: str, stamp: int) -> bool:
        buffer = self._buffers[m]
        if not buffer.stamps or buffer.stamps[-1] >= stamp:
            return False
        newest = buffer.stamps[-1]
        period = self._alive_period(buffer.stamps, newest, stamp)
        if period is None:
            return False
        expected = newest + period * max(1, round((stamp - newest) / period))
        tolerance_ns = self.config.tolerance_ms[m] * 1e6
        best_offset = abs(buffer.nearest(stamp).stamp_ns - stamp)
        if best_offset > tolerance_ns:
            best_offset = float("inf")
        offset = abs(expected - stamp)
        return offset <= tolerance_ns and offset < best_offset and expected - stamp <= self.config.max_wait_ms * 1e6

    def _window_awaited(self, stamp: int) -> bool:
        chunks = self._event_chunks
        newest = chunks.newest_ns
        if newest >= stamp - self.config.event_complete_slack_ms * 1e6:
            return False
        period = self._alive_period(chunks.starts, newest, stamp)
        if period is None:
            return False
        reaching = newest + period * -(-(stamp - newest) // period)  # first grid point at or after S
        return reaching - stamp <= self.config.max_wait_ms * 1e6

    def _check_time(self, stream: str, stamp_ns: int) -> str | None:
        newest = self._newest_ns.get(stream)
        if newest is not None and newest - stamp_ns > self.config.reset_on_backwards_s * 1e9:
            reason = (f"{stream} stamp jumped back {(newest - stamp_ns) * 1e-9:.3f} s "
                      f"(from {newest} to {stamp_ns} ns): all buffers cleared (looping bag?)")
            self._reset(reason)
            self._newest_ns[stream] = stamp_ns
            return reason
        self._newest_ns[stream] = stamp_ns if newest is None else max(newest, stamp_ns)
        return None

    def _reset(self, reason: str) -> None:
        for buffer in self._buffers.values():
            buffer.clear()
        self._event_chunks.clear()
        self._newest_ns.clear()
        self.resets += 1
        self.last_reset_reason = reason

    def _match_nearest(self, bundle: FrameBundle, m: str, never: str) -> None:
        item = self._buffers[m].nearest(bundle.stamp_ns)
        if item is None:
            bundle.absent[m] = never
            return
        offset_ms = abs(item.stamp_ns - bundle.stamp_ns) * 1e-6
        tolerance = self.config.tolerance_ms[m]
        if offset_ms > tolerance:
            bundle.absent[m] = (f"stale: nearest {m} is {offset_ms:.0f} ms from the camera stamp "
                                f"(tolerance {tolerance:g} ms)")
            return
        setattr(bundle, m, item.data)
        bundle.stamps[m] = item.stamp_ns

    def _match_event_window(self, bundle: FrameBundle) -> list[EventArray] | None:
        """Chunks overlapping (stamp - window, stamp], or None with the reason in `absent`."""
        stamp = bundle.stamp_ns
        window_ns = int(self.config.event_window_ms * 1e6)
        parts = self._event_chunks.overlapping(stamp - window_ns, stamp)
        if parts:
            return parts
        first, last = self._event_chunks.span()
        window = f"{self.config.event_window_ms:g} ms window"
        if last <= stamp - window_ns:
            bundle.absent["event"] = (f"stale: newest event is {(stamp - last) * 1e-6:.0f} ms before the "
                                      f"camera stamp ({window})")
        elif first > stamp:
            bundle.absent["event"] = (f"stale: oldest event is {(first - stamp) * 1e-6:.0f} ms after the "
                                      f"camera stamp ({window})")
        else:
            bundle.absent["event"] = f"no events in the {window}"
        return None
