"""Per-modality health: a small state machine fed once per camera frame.

States (contracts.HEALTH_STATES): `ok`; `missing` (disabled or never received); `stale` (nothing
within the sync tolerance, reason from the assembler); `frozen` (the same content in N successive
messages: a driver republishing its last frame with new stamps); `degraded` (present but poor:
exposure, NaN/Inf, few valid depth pixels, few LiDAR points in the image, event rate out of band);
`invalid` (the last message could not be decoded).

Entering `invalid` or `missing` is immediate; any other change, including leaving those two, needs
`hysteresis_frames` successive frames that agree, so a sensor at the edge of a threshold does not
flicker in diagnostics. `frozen` is already confirmed over `frozen_frames` messages, so it too is
reported as soon as it is detected.
"""

from __future__ import annotations

import threading
import zlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from sam_mmseg_ros.contracts import MODALITIES, MODALITY_INDEX, EventArray, FrameBundle, ImageData, PointCloud
from sam_mmseg_ros.settings import default

OK, WARN, ERROR = 0, 1, 2
"""diagnostic_msgs/DiagnosticStatus levels."""

_IMMEDIATE = frozenset({"invalid", "missing", "frozen"})


@dataclass
class HealthThresholds:
    """The `health.*` parameters (defaults and meanings in `sam_mmseg_ros.settings`)."""

    frozen_frames: int = default("health.frozen_frames")
    max_saturated_fraction: float = default("health.max_saturated_fraction")
    max_dark_fraction: float = default("health.max_dark_fraction")
    min_valid_fraction: float = default("health.min_valid_fraction")
    min_points_in_image: int = default("health.min_points_in_image")
    min_event_rate_hz: float = default("health.min_event_rate_hz")
    max_event_rate_hz: float = default("health.max_event_rate_hz")
    hysteresis_frames: int = default("health.hysteresis_frames")
    rate_window_s: float = default("health.rate_window_s")

    def __post_init__(self):
        if self.frozen_frames < 2 or self.hysteresis_frames < 1:
            raise ValueError("HealthThresholds needs frozen_frames >= 2 and hysteresis_frames >= 1")
        if not 0 < self.min_event_rate_hz < self.max_event_rate_hz:
            raise ValueError("HealthThresholds needs 0 < min_event_rate_hz < max_event_rate_hz")
        if self.rate_window_s <= 0:
            raise ValueError("HealthThresholds.rate_window_s must be > 0")


@dataclass
class ModalityHealth:
    name: str
    state: str  # one of contracts.HEALTH_STATES
    reason: str  # for the person reading diagnostics
    age_ms: float  # now - stamp of the newest message received, else of the one used (NaN if none)
    rate_hz: float  # receive rate over rate_window_s
    valid_fraction: float  # share of usable data (pixels, points in image); NaN where undefined
    router_weight: float  # the model's weight for this modality (NaN if unknown)
    measurements: dict[str, float] = field(default_factory=dict)


def diagnostic_level(health: ModalityHealth, enabled: bool) -> int:
    """OK / WARN / ERROR for one modality. RGB is the clock, so any RGB problem is an ERROR;
    a disabled modality is OK (nothing is expected of it); an undecodable one is an ERROR."""
    if not enabled:
        return OK
    if health.state == "ok":
        return OK
    if health.name == "rgb" or health.state == "invalid":
        return ERROR
    return WARN


def fingerprint(data, blank_means_nothing: bool = False) -> object | None:
    """A cheap content signature to spot frozen streams: crc32 of ~16 full rows of an image (a live
    sensor's noise changes every row), of ~4096 points of a cloud, or the count and first/last
    event of an event array. None where sameness means nothing: no events, or a blank image when
    `blank_means_nothing` (an event frame of a static scene)."""
    if isinstance(data, ImageData):
        array = data.array
        if blank_means_nothing and not array.any():
            return None
        return array.shape, array.dtype.str, zlib.crc32(np.ascontiguousarray(array[:: max(1, array.shape[0] // 16)]))
    if isinstance(data, PointCloud):
        return len(data), zlib.crc32(np.ascontiguousarray(data.xyz[:: max(1, len(data) // 4096)]))
    if isinstance(data, EventArray):
        if not len(data):
            return None
        return len(data), int(data.t_ns[0]), int(data.t_ns[-1]), int(data.x[0]), int(data.y[-1])
    return None


@dataclass
class _Track:
    """What the monitor remembers about one modality between frames."""

    state: str | None = None
    reason: str = ""
    candidate: str | None = None  # a different state waiting for hysteresis
    candidate_count: int = 0
    invalid_reason: str | None = None
    content: object | None = None
    content_stamp: int | None = None
    identical: int = 0  # successive distinct messages with the same content
    newest_stamp_ns: int | None = None
    receive_ns: deque = field(default_factory=lambda: deque(maxlen=4096))


class HealthMonitor:
    """Feed `on_message` from subscriber callbacks (after a successful decode) and `mark_invalid`
    on decode errors; call `update` once per camera frame. Thread-safe."""

    def __init__(self, thresholds: HealthThresholds | None = None, enabled: dict[str, bool] | None = None):
        self.thresholds = thresholds or HealthThresholds()
        self.enabled = {m: True for m in MODALITIES}
        self.enabled.update(enabled or {})
        self._tracks = {m: _Track() for m in MODALITIES}
        self._last: dict[str, ModalityHealth] = {}
        self._lock = threading.Lock()

    def set_thresholds(self, thresholds: HealthThresholds) -> None:
        """New thresholds (a run-time parameter change); they apply from the next frame."""
        with self._lock:
            self.thresholds = thresholds

    def on_message(self, modality: str, stamp_ns: int, receive_ns: int) -> None:
        """A message of `modality` decoded fine: count it for the rate, and clear `invalid`."""
        with self._lock:
            track = self._tracks[modality]
            track.receive_ns.append(int(receive_ns))
            track.newest_stamp_ns = int(stamp_ns)
            track.invalid_reason = None

    def mark_invalid(self, modality: str, reason: str, now_ns: int) -> None:
        """A message of `modality` could not be used; it stays `invalid` until a good one arrives."""
        with self._lock:
            self._tracks[modality].invalid_reason = reason

    def update(self, bundle: FrameBundle, measurements: dict[str, dict[str, float]], now_ns: int,
               router_weights=None) -> dict[str, ModalityHealth]:
        """Health of every modality for this frame, in MODALITIES order. `router_weights` is the
        engine's [M] (or [1, M]) array, or a {modality: weight} dict, or None."""
        with self._lock:
            result = {}
            for m in MODALITIES:
                track = self._tracks[m]
                values = {k: float(v) for k, v in (measurements or {}).get(m, {}).items()}
                raw_state, raw_reason = self._classify(m, bundle, values, track)
                state, reason = self._debounce(track, raw_state, raw_reason)
                used = bundle.stamps.get(m)
                if used is not None:
                    values["offset_ms"] = (used - bundle.stamp_ns) * 1e-6
                result[m] = ModalityHealth(
                    name=m, state=state, reason=reason,
                    age_ms=_age_ms(track.newest_stamp_ns if track.newest_stamp_ns is not None else used, now_ns),
                    rate_hz=self._rate(track, now_ns),
                    valid_fraction=_valid_fraction(m, values, bundle.get(m) is not None),
                    router_weight=_weight(router_weights, m), measurements=values)
            self._last = result
            return result

    def summary(self) -> tuple[int, str]:
        """Worst level over the last update and a one-line message, e.g. for the node's status."""
        with self._lock:
            last = dict(self._last)
        if not last:
            return WARN, "no frame processed yet"
        levels = {m: diagnostic_level(h, self.enabled.get(m, True)) for m, h in last.items()}
        problems = [f"{m} {h.state}" for m, h in last.items() if levels[m] > OK]
        return max(levels.values()), (", ".join(problems) if problems else "all enabled modalities ok")

    def _classify(self, m: str, bundle: FrameBundle, values: dict[str, float], track: _Track) -> tuple[str, str]:
        if not self.enabled.get(m, True):
            return "missing", "disabled"
        if track.invalid_reason is not None:
            return "invalid", track.invalid_reason
        data = bundle.get(m)
        if data is None:
            why = bundle.absent.get(m, "absent")
            if why.startswith("stale"):
                return "stale", why
            if why.startswith("no events"):
                return "degraded", why
            return "missing", why
        identical = self._identical_count(track, data, bundle.stamps.get(m), blank_means_nothing=m == "event")
        values["identical_messages"] = float(identical)
        if identical >= self.thresholds.frozen_frames:
            return "frozen", f"content identical over the last {identical} messages"
        problems = self._problems(m, values)
        return ("degraded", "; ".join(problems)) if problems else ("ok", "")

    def _problems(self, m: str, v: dict[str, float]) -> list[str]:
        """Threshold checks on the encoders' measurements; missing keys are skipped."""
        th = self.thresholds
        problems = []
        if m == "rgb":
            if v.get("saturated_fraction", 0.0) > th.max_saturated_fraction:
                problems.append(f"overexposed: {v['saturated_fraction']:.0%} of pixels saturated "
                                f"(max {th.max_saturated_fraction:.0%})")
            if v.get("dark_fraction", 0.0) > th.max_dark_fraction:
                problems.append(f"underexposed: {v['dark_fraction']:.0%} of pixels dark (max {th.max_dark_fraction:.0%})")
            if v.get("nonfinite_count", 0.0) > 0:
                problems.append(f"{v['nonfinite_count']:.0f} NaN/Inf pixels")
        elif m == "depth":
            # NaN/Inf mark pixels without a return in depth images (REP 117), so they count
            # through the valid fraction rather than on their own.
            if v.get("valid_fraction", 1.0) < th.min_valid_fraction:
                problems.append(f"only {v['valid_fraction']:.0%} of depth pixels valid "
                                f"(min {th.min_valid_fraction:.0%})")
        elif m == "lidar":
            # Organized clouds use NaN for missing returns; what matters is what lands in the image.
            if v.get("points_in_image", np.inf) < th.min_points_in_image:
                problems.append(f"only {v['points_in_image']:.0f} LiDAR points in the image "
                                f"(min {th.min_points_in_image})")
        elif m == "event" and "event_rate_hz" in v:
            rate = v["event_rate_hz"]
            if rate < th.min_event_rate_hz:
                problems.append(f"event rate {rate:.3g} Hz below {th.min_event_rate_hz:.3g} Hz")
            elif rate > th.max_event_rate_hz:
                problems.append(f"event rate {rate:.3g} Hz above {th.max_event_rate_hz:.3g} Hz")
        return problems

    def _identical_count(self, track: _Track, data, stamp: int | None, blank_means_nothing: bool) -> int:
        """Successive distinct messages with the same content. A slow sensor's message reused for
        several camera frames (same stamp) is one message, not a frozen stream."""
        if stamp is not None and stamp == track.content_stamp:
            return track.identical
        content = fingerprint(data, blank_means_nothing)
        track.content_stamp = stamp
        if content is not None and content == track.content:
            track.identical += 1
        else:
            track.identical = 0 if content is None else 1
        track.content = content
        return track.identical

    def _debounce(self, track: _Track, raw: str, reason: str) -> tuple[str, str]:
        if track.state is None or raw == track.state or raw in _IMMEDIATE:
            track.state, track.reason = raw, reason
            track.candidate, track.candidate_count = None, 0
            return raw, reason
        if raw == track.candidate:
            track.candidate_count += 1
        else:
            track.candidate, track.candidate_count = raw, 1
        needed = self.thresholds.hysteresis_frames
        if track.candidate_count >= needed:
            track.state, track.reason = raw, reason
            track.candidate, track.candidate_count = None, 0
            return raw, reason
        pending = f"{raw}{': ' + reason if reason else ''} for {track.candidate_count}/{needed} frames"
        return track.state, (f"{track.reason} (now {pending})" if track.reason else f"now {pending}")

    def _rate(self, track: _Track, now_ns: int) -> float:
        times = track.receive_ns
        horizon = now_ns - self.thresholds.rate_window_s * 1e9
        while times and times[0] < horizon:
            times.popleft()
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / ((times[-1] - times[0]) * 1e-9)


def _age_ms(stamp_ns: int | None, now_ns: int) -> float:
    """Age of the newest message seen via on_message, else of the one in the bundle (offline runs
    that do not report receptions)."""
    return np.nan if stamp_ns is None else (now_ns - stamp_ns) * 1e-6


def _valid_fraction(m: str, v: dict[str, float], present: bool) -> float:
    if not present:
        return 0.0
    if m == "rgb" and ("saturated_fraction" in v or "dark_fraction" in v):
        return max(0.0, 1.0 - v.get("saturated_fraction", 0.0) - v.get("dark_fraction", 0.0))
    if m == "depth":
        return v.get("valid_fraction", np.nan)
    if m == "lidar":
        return v.get("in_image_fraction", np.nan)
    return np.nan


def _weight(router_weights, m: str) -> float:
    if router_weights is None:
        return np.nan
    if isinstance(router_weights, dict):
        return float(router_weights.get(m, np.nan))
    flat = np.asarray(router_weights, np.float64).reshape(-1)
    return float(flat[MODALITY_INDEX[m]]) if flat.size == len(MODALITIES) else np.nan
