"""DiagnosticArray messages for modality health (every frame) and `/diagnostics` (1 Hz + on change).

One status per modality, named `<node>: <modality>`, plus `<node>: node` for the backend and the
output stream, so `rqt_robot_monitor` and aggregators group them under the node.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from sam_mmseg_ros.health import ERROR, OK, WARN, diagnostic_level  # noqa: F401 - levels re-exported


def _fmt(value) -> str:
    if isinstance(value, float | np.floating):
        return "nan" if not np.isfinite(value) else f"{float(value):.4g}"
    return str(value)


def key_values(values: dict) -> list[KeyValue]:
    return [KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()]


def modality_status(node_name: str, health, enabled: bool) -> DiagnosticStatus:
    """One modality's state, reason and the numbers behind it."""
    level = diagnostic_level(health, enabled)
    message = health.state if not health.reason else f"{health.state}: {health.reason}"
    values = {"state": health.state, "reason": health.reason or "", "enabled": enabled,
              "age_ms": health.age_ms, "rate_hz": health.rate_hz, "valid_fraction": health.valid_fraction,
              "router_weight": health.router_weight}
    values.update({f"measurement.{k}": v for k, v in (health.measurements or {}).items()})
    return DiagnosticStatus(level=bytes([level]), name=f"{node_name}: {health.name}", message=message,
                            hardware_id=node_name, values=key_values(values))


def node_status(node_name: str, level: int, message: str, values: dict) -> DiagnosticStatus:
    return DiagnosticStatus(level=bytes([level]), name=f"{node_name}: node", message=message,
                            hardware_id=node_name, values=key_values(values))


def diagnostic_array(stamp, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = statuses
    return msg


def status_signature(statuses: list[DiagnosticStatus]) -> tuple:
    """What 'changed' means for publishing on change: levels and messages, not the live numbers."""
    return tuple((s.name, s.level, s.message) for s in statuses)


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
