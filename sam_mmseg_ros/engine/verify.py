"""Does an engine give what the fp32 model gives, how fast, and in how much GPU memory?

`sam-mmseg build-engine --verify` runs this on the machine that will use the engine: synthetic
multi-sensor frames (every weather condition) go through the node's own stages
(`pipeline.SegmentationPipeline`: encode -> infer -> postprocess) once with the engine and once
with the fp32 torch model, and the report gives label agreement and confidence difference at
camera resolution, latency percentiles of inference and of the whole pipeline, and the GPU
memory the engine holds. Backend-agnostic: the tests run it with ONNX Runtime on CPU.

Agreement is only meaningful on a trained model: an untrained one has near-tied class scores,
where any rounding flips labels (the report says so).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sam_mmseg_ros.contracts import FrameBundle
from sam_mmseg_ros.health import HealthMonitor
from sam_mmseg_ros.pipeline import SegmentationPipeline
from sam_mmseg_ros.sensors.preprocess import PreprocessConfig

LOG = logging.getLogger(__name__)

MIN_LABEL_AGREEMENT = {"fp32": 0.999, "fp16": 0.99}
"""Fraction of camera pixels whose label must equal the fp32 torch model's."""
PERCENTILES = (50, 95, 99)


@dataclass
class VerifyReport:
    backend: str
    precision: str
    reference: str
    input_size: tuple[int, int]
    camera_size: tuple[int, int]  # (height, width)
    frames: int
    trained: bool
    label_agreement: float  # over all camera pixels of all frames
    worst_frame_agreement: float
    confidence_abs_diff_mean: float
    confidence_abs_diff_max: float
    router_weight_abs_diff_max: float
    latency_ms: dict[str, dict[str, float]]  # "inference" / "pipeline" -> {"p50": ...}
    gpu_memory: dict[str, float] = field(default_factory=dict)
    machine: str = ""

    @property
    def required_agreement(self) -> float:
        return MIN_LABEL_AGREEMENT.get(self.precision, MIN_LABEL_AGREEMENT["fp16"])

    @property
    def passed(self) -> bool:
        return self.label_agreement >= self.required_agreement

    def to_dict(self) -> dict:
        data = {k: v for k, v in vars(self).items()}
        data.update(required_agreement=self.required_agreement, passed=self.passed)
        return data

    def to_markdown(self) -> str:
        h, w = self.input_size
        ch, cw = self.camera_size
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"# Engine verification: {verdict}",
            "",
            f"{self.backend} ({self.precision}), model input {h}x{w}, against {self.reference}, on "
            f"{self.frames} synthetic {cw}x{ch} frames (RGB, depth, events, LiDAR; every weather condition) "
            f"through the node's stages. Machine: {self.machine}.",
            "",
            "| what | value | meaning |",
            "| --- | ---: | --- |",
            f"| labels equal to fp32 torch | {100 * self.label_agreement:.3f} % | of all camera pixels; needs "
            f"≥ {100 * self.required_agreement:.1f} % for {self.precision} |",
            f"| worst frame | {100 * self.worst_frame_agreement:.3f} % | lowest per-frame agreement |",
            f"| confidence difference | {self.confidence_abs_diff_mean:.2e} mean, "
            f"{self.confidence_abs_diff_max:.2e} max | max-softmax probability, absolute |",
            f"| router weight difference | {self.router_weight_abs_diff_max:.2e} max | per modality |",
        ]
        for stage, meaning in (("inference", "`Backend.infer`: host buffers, GPU, outputs back"),
                               ("pipeline", "encode + infer + postprocess of one camera frame")):
            p = self.latency_ms[stage]
            lines.append(f"| {stage} latency p50 / p95 / p99 | {p['p50']:.2f} / {p['p95']:.2f} / {p['p99']:.2f} ms "
                         f"| {meaning} ({int(p['samples'])} runs) |")
        for key, value in self.gpu_memory.items():
            lines.append(f"| {key.replace('_', ' ')} | {value:.0f} MiB | |")
        if not self.gpu_memory:
            lines.append("| GPU memory | not reported | this backend does not run on a GPU |")
        if not self.trained:
            lines += ["", "**The model is untrained**: its class scores are near ties, so label agreement "
                      "says little; verify with the trained checkpoint the vehicle runs."]
        return "\n".join(lines) + "\n"

    def write(self, markdown_path: str | os.PathLike) -> tuple[Path, Path]:
        """The report as Markdown at `markdown_path` and JSON next to it."""
        markdown_path = Path(markdown_path)
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(self.to_markdown())
        json_path = markdown_path.with_suffix(".json")
        json_path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, default=list) + "\n")
        return markdown_path, json_path


def synthetic_frames(count: int, camera_size: tuple[int, int] = (480, 640),
                     seed: int = 0) -> list[tuple[FrameBundle, np.ndarray]]:
    """`count` frames with every modality present, conditions taken in turn: (bundle, T_camera_lidar)."""
    from sam_mmseg_ros.data.synthetic import CONDITIONS, SequenceConfig, generate_sequence

    height, width = camera_size
    frames = []
    for i in tqdm(range(count), desc="rendering synthetic frames", leave=False):
        config = SequenceConfig(width=width, height=height, num_frames=1, condition=CONDITIONS[i % len(CONDITIONS)],
                                seed=seed + i)
        frame = next(generate_sequence(config))
        frames.append((frame.to_bundle(), frame.T_camera_lidar))
    return frames


def _percentiles(samples: list[float]) -> dict[str, float]:
    values = np.percentile(np.asarray(samples), PERCENTILES)
    return {**{f"p{p}": float(v) for p, v in zip(PERCENTILES, values, strict=True)}, "samples": float(len(samples))}


def verify_backend(backend, reference, frames: list[tuple[FrameBundle, np.ndarray]], *,
                   latency_runs: int = 100, machine: str = "") -> VerifyReport:
    """Compare `backend` with `reference` (the fp32 torch backend) frame by frame through the
    node's pipeline, then time `backend` alone over `latency_runs` pipeline runs."""
    size = tuple(int(v) for v in backend.input_shape[-2:])
    if tuple(reference.input_shape) != tuple(backend.input_shape):
        raise ValueError(f"reference input {reference.input_shape} differs from the engine's {backend.input_shape}")
    engine = SegmentationPipeline(backend, PreprocessConfig(input_size=size), HealthMonitor())
    fp32 = SegmentationPipeline(reference, PreprocessConfig(input_size=size), HealthMonitor())
    equal = pixels = 0
    worst, conf_sum, conf_max, router_max = 1.0, 0.0, 0.0, 0.0
    for bundle, transform in tqdm(frames, desc="comparing with fp32 torch", leave=False):
        got, want = engine.run(bundle, bundle.stamp_ns, transform), fp32.run(bundle, bundle.stamp_ns, transform)
        same = int((got.labels == want.labels).sum())
        equal, pixels = equal + same, pixels + got.labels.size
        worst = min(worst, same / got.labels.size)
        diff = np.abs(got.confidence - want.confidence)
        conf_sum, conf_max = conf_sum + float(diff.sum()), max(conf_max, float(diff.max()))
        router_max = max(router_max, float(np.abs(got.router_weights - want.router_weights).max()))

    inference, pipeline_ms = [], []
    for i in tqdm(range(latency_runs), desc="timing", leave=False):
        bundle, transform = frames[i % len(frames)]
        result = engine.run(bundle, bundle.stamp_ns, transform)
        inference.append(result.timings_ms["infer"])
        pipeline_ms.append(result.timings_ms["total"])
    memory = getattr(backend, "memory_report", None)
    height, width = frames[0][0].rgb.array.shape[:2]
    return VerifyReport(
        backend=backend.name, precision=backend.precision,
        reference=f"{reference.name} fp32 on {getattr(reference, 'device', 'cpu')}",
        input_size=size, camera_size=(height, width), frames=len(frames),
        trained=bool(backend.metadata.get("trained", True)),
        label_agreement=equal / pixels, worst_frame_agreement=worst,
        confidence_abs_diff_mean=conf_sum / pixels, confidence_abs_diff_max=conf_max,
        router_weight_abs_diff_max=router_max,
        latency_ms={"inference": _percentiles(inference), "pipeline": _percentiles(pipeline_ms)},
        gpu_memory=memory() if memory is not None else {},
        machine=machine or f"{platform.node()} {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}",
    )
