"""DiagnosticArray messages for modality health (every frame) and `/diagnostics` (1 Hz + on change).

One status per modality, named `<node>: <modality>`, plus `<node>: node` for the backend and the
output stream, so `rqt_robot_monitor` and aggregators group them under the node.
"""

from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from sam_mmseg_ros.health import diagnostic_level


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


def domain_status(node_name: str, domain) -> DiagnosticStatus:
    """The learned domain whose adapter ran on the frame (`status.DomainState`), and the
    selector's confidence in it."""
    values = {"domain": domain.name, "confidence": domain.confidence, "pinned": domain.pinned}
    return DiagnosticStatus(level=bytes([domain.level]), name=f"{node_name}: domain", message=domain.message,
                            hardware_id=node_name, values=key_values(values))


def node_status(node_name: str, level: int, message: str, values: dict) -> DiagnosticStatus:
    return DiagnosticStatus(level=bytes([level]), name=f"{node_name}: node", message=message,
                            hardware_id=node_name, values=key_values(values))


def diagnostic_array(stamp, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = statuses
    return msg
