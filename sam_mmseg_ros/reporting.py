"""What the node tells people besides its outputs: problems in the log, output rate and latency.

`ProblemLog` is the one place that decides whether a problem is worth a log line. A sensor that
sends bad data at 30 Hz must not flood the log, yet a new kind of problem must show at once. A
problem's *kind* is its text with the numbers taken out ("14 of 200 events outside..." and "15 of
200 events outside..." are one kind), so changing counts do not defeat the "once".
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def problem_kind(text: str) -> str:
    """`text` with every number replaced by '#': what stays the same while a problem persists."""
    return _NUMBER.sub("#", text)


class ProblemLog:
    """Logs a source's problem once per kind: again only when the kind changes, or when the same
    kind comes back after `quiet_s` without being reported. Thread-safe (callbacks and the worker
    report into one log).

    `current` holds the latest problem text per source until `resolve` clears it, for reports and
    diagnostics that show what is wrong now.
    """

    def __init__(self, warn: Callable[[str], None], info: Callable[[str], None] | None = None,
                 quiet_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._warn, self._info = warn, info
        self.quiet_s = quiet_s
        self._clock = clock
        self._lock = threading.Lock()
        self._logged: dict[str, tuple[str, float]] = {}  # source -> (kind logged, last report time)
        self.current: dict[str, str] = {}

    def report(self, source: str, text: str) -> bool:
        """Record a problem of `source`; returns True when it was logged."""
        kind, now = problem_kind(text), self._clock()
        with self._lock:
            self.current[source] = text
            logged_kind, last = self._logged.get(source, (None, -np.inf))
            self._logged[source] = (kind, now)
            if kind == logged_kind and now - last < self.quiet_s:
                return False
        self._warn(f"{source}: {text}")
        return True

    def resolve(self, source: str, note: str | None = None) -> None:
        """`source` works again; `note` is logged (at info level) when it had a problem."""
        with self._lock:
            had_problem = self.current.pop(source, None) is not None
        if had_problem and note and self._info is not None:
            self._info(f"{source}: {note}")


class RateStats:
    """Output rate and latency percentiles over a sliding window of recent frames."""

    def __init__(self, window: int = 300):
        self.latencies_ms: deque[float] = deque(maxlen=window)
        self.publish_times_s: deque[float] = deque(maxlen=window)
        self.published = 0
        self.dropped = 0

    def record(self, latency_ms: float, now_s: float) -> None:
        self.latencies_ms.append(latency_ms)
        self.publish_times_s.append(now_s)
        self.published += 1

    def rate_hz(self, now_s: float, horizon_s: float = 5.0) -> float:
        recent = [t for t in self.publish_times_s if now_s - t <= horizon_s]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    def latency_percentiles(self) -> dict[str, float]:
        if not self.latencies_ms:
            return {"latency_p50_ms": float("nan"), "latency_p95_ms": float("nan")}
        p50, p95 = np.percentile(np.asarray(self.latencies_ms), [50, 95])
        return {"latency_p50_ms": float(p50), "latency_p95_ms": float(p95)}
