"""The node's own state for `/diagnostics`: is the model usable, is the camera (the clock) alive.

Per-modality health (`health.py`) is judged once per camera frame, so it cannot notice that camera
frames stopped coming; `CameraWatchdog` does, on the wall clock, and turns silence into an ERROR
and an rgb state of `stale`. `ModelState` follows the backend from loading to ready or failed.
`node_status` combines both into the one status line an operator reads first.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sam_mmseg_ros.health import ERROR, OK, WARN, ModalityHealth

LOADING, READY, FAILED = "loading model", "ready", "failed"
UNTRAINED = "output is untrained: no trained weights were found (random model); set checkpoint"


@dataclass
class ModelState:
    """Where the model is: `state` is LOADING until `ready(backend)` or `failed(reason)`."""

    requested_backend: str
    state: str = LOADING
    error: str = ""
    backend: object | None = None

    def ready(self, backend) -> None:
        self.backend, self.state, self.error = backend, READY, ""

    def failed(self, reason: str) -> None:
        self.backend, self.state, self.error = None, FAILED, reason

    @property
    def trained(self) -> bool:
        return bool(self.backend is not None and self.backend.metadata.get("trained", False))

    def problem(self) -> tuple[int, str] | None:
        if self.state == LOADING:
            return WARN, f"loading model (backend={self.requested_backend})"
        if self.state == FAILED:
            return ERROR, self.error
        if not self.trained:
            return ERROR, UNTRAINED
        return None

    def values(self, precision: str) -> dict:
        """`fallbacks`: why better backends were skipped (`create_backend`'s fallback_reasons)."""
        backend = self.backend
        return {"backend": backend.name if backend else self.requested_backend,
                "precision": backend.precision if backend else precision,
                "input_size": "x".join(str(v) for v in backend.input_shape[-2:]) if backend else "",
                "model_state": self.state, "trained": self.trained,
                "fallbacks": " | ".join(getattr(backend, "fallback_reasons", ()))}


@dataclass
class CameraWatchdog:
    """When the last camera message arrived (decodable or not), on a monotonic clock that sim time
    cannot stop, and why it could not be decoded when it could not."""

    timeout_s: float
    clock: Callable[[], float] = time.monotonic
    last_seen: float | None = field(default=None)
    undecodable: str | None = None  # the reason, while the latest camera message cannot be decoded

    def seen(self, undecodable: str | None = None) -> None:
        self.last_seen = self.clock()
        self.undecodable = undecodable

    def silence_s(self) -> float | None:
        return None if self.last_seen is None else self.clock() - self.last_seen

    def problem(self) -> tuple[int, str] | None:
        silence = self.silence_s()
        if silence is None:
            return WARN, "waiting for the first camera image"
        if silence > self.timeout_s:
            return ERROR, f"camera stopped: no image for {silence:.1f} s, no output"
        if self.undecodable is not None:
            return ERROR, f"camera images cannot be decoded, no segmentation: {self.undecodable}"
        return None

    def rgb_health(self, health: ModalityHealth | None) -> ModalityHealth | None:
        """The last frame's rgb health; `invalid` with the reason as soon as a camera message cannot
        be decoded (before the worker gets to it, even before any frame was processed); `stale`
        with weight 0 once the camera has been silent for longer than the timeout (no frame comes
        to say so)."""
        silence = self.silence_s()
        if silence is not None and silence > self.timeout_s and health is not None:
            return dataclasses.replace(health, state="stale", reason=f"no image for {silence:.1f} s",
                                       age_ms=silence * 1e3, router_weight=0.0)
        if self.undecodable is not None:
            if health is None:
                return ModalityHealth("rgb", "invalid", self.undecodable, math.nan, 0.0, 0.0, 0.0)
            return dataclasses.replace(health, state="invalid", reason=self.undecodable, router_weight=0.0)
        return health


@dataclass(frozen=True)
class NodeStatus:
    level: int
    message: str
    values: dict


def node_status(model: ModelState, camera: CameraWatchdog, values: dict,
                inputs: list[tuple[int, str]] = ()) -> NodeStatus:
    """The worst of the model's, the camera's and the inputs' problems (incompatible QoS, a refused
    camera_info...), all of them in the message."""
    problems = [p for p in (model.problem(), camera.problem(), *inputs) if p is not None]
    level = max((lvl for lvl, _ in problems), default=OK)
    return NodeStatus(level, "; ".join(text for _, text in problems) or "running", values)
