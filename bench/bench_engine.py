"""Benchmark on CPU only: torch eager against ONNX Runtime (CPU, fp32 export) on the full
MoE-LoRA SAM, 4 modalities, 512x512, for the `tiny` and `vit_b` configs. Also checks that both
give the same labels, and reports export time. Target: ONNX Runtime at least 1.3x faster than
torch eager. It runs no GPU backend, on any machine: `bench/bench_gpu.py` measures torch CUDA
and TensorRT, `sam-mmseg build-engine --verify` the engine a vehicle runs.

    .venv/bin/python bench/bench_engine.py        # writes docs/benchmarks/engine.md + .png
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sam_mmseg_ros.engine.export import export_model
from sam_mmseg_ros.engine.onnxruntime_backend import OnnxRuntimeBackend
from sam_mmseg_ros.engine.torch_backend import TorchBackend
from sam_mmseg_ros.model import build_model

ROOT = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 1.3


def timed_alternating(runners: dict, images, mask, iterations: int, label: str) -> dict[str, list[float]]:
    """Run each backend once per round, in turn, so a load change on the shared machine hits
    every backend alike (one warm-up each first)."""
    for infer in runners.values():
        infer(images, mask)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in tqdm(range(iterations), desc=label, leave=False):
        for name, infer in runners.items():
            start = time.perf_counter()
            infer(images, mask)
            times[name].append(time.perf_counter() - start)
    return times


def bench_model(name: str, size: int, iterations: int, threads: int, folder: Path) -> dict:
    torch.manual_seed(0)
    reference = TorchBackend(build_model(name, img_size=size), "cpu", "fp32")
    start = time.perf_counter()
    onnx_path = export_model(reference.model, folder / f"{name}.onnx", input_size=(size, size),
                             metadata=reference.metadata)
    export_s = time.perf_counter() - start
    ort_backend = OnnxRuntimeBackend(onnx_path, "cpu", threads=threads)

    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, reference.input_shape).astype(np.float32)
    mask = np.ones(reference.input_shape[:2], np.float32)
    times = timed_alternating({"torch": reference.infer, "onnxruntime": ort_backend.infer}, images, mask,
                              iterations, name)
    torch_times, ort_times = times["torch"], times["onnxruntime"]
    got, want = ort_backend.infer(images, mask), reference.infer(images, mask)
    return {
        "name": name, "size": size, "iterations": iterations, "export_s": export_s,
        "onnx_mb": onnx_path.stat().st_size / 1e6,
        "torch_ms": 1e3 * statistics.median(torch_times), "ort_ms": 1e3 * statistics.median(ort_times),
        "label_agreement": float((got["labels"] == want["labels"]).mean()),
        "confidence_max_diff": float(np.abs(got["confidence"] - want["confidence"]).max()),
    }


def write_report(rows: list[dict], threads: int, out: Path, command: str) -> None:
    import onnxruntime

    load = os.getloadavg()
    machine = f"{platform.machine()} CPU, {threads} threads, Python {platform.python_version()}"
    lines = [
        "# Engine benchmark: torch eager vs ONNX Runtime (CPU)",
        "",
        f"Full MoE-LoRA SAM forward (encoder with 4 LoRA experts, router, fusion, decoder, argmax), "
        f"batch 1 x 4 modalities, fp32, median of N runs after one warm-up, torch and ONNX Runtime "
        f"alternating run by run. Machine: {machine}; torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) at "
        "the end of the run. ONNX export: `torch.onnx.export(dynamo=True)`, opset 18. "
        f"Command: `{command}`.",
        "",
        "| model | input | torch eager (ms) | ONNX Runtime CPU (ms) | speed-up | labels equal | max conf. diff | export (s) | ONNX (MB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        speedup = r["torch_ms"] / r["ort_ms"]
        lines.append(
            f"| {r['name']} | {r['size']}x{r['size']} | {r['torch_ms']:.0f} | {r['ort_ms']:.0f} | "
            f"{speedup:.2f}x {'(meets' if speedup >= TARGET_SPEEDUP else '(misses'} {TARGET_SPEEDUP}x) | "
            f"{100 * r['label_agreement']:.2f}% | {r['confidence_max_diff']:.1e} | {r['export_s']:.0f} | {r['onnx_mb']:.0f} |")
    lines += [
        "",
        "Attention: torch eager runs `scaled_dot_product_attention` with the decomposed "
        "relative-position bias as mask. The export cannot (torch 2.13's exporter breaks on "
        "SDPA-with-mask), so the graph folds the bias into the score matmul instead: "
        "[q*scale | rel_h | rel_w] . [k | one-hot row | one-hot column], V zero-padded to the same "
        "width, then Softmax and MatMul, which avoids the [tokens x tokens] bias tensor and the "
        "broadcast adds over it (SAM's explicit form cost ViT-B about 8% in ONNX Runtime). Both run "
        "in query chunks of bounded size (see export.md). The ONNX Runtime backend also lets idle "
        "intra-op threads sleep instead of spinning (`session.intra_op.allow_spinning=0`), worth "
        "about 13% on this shared machine.",
        "",
        "This script runs CPU backends only, on any machine; GPU figures come from "
        "`bench/bench_gpu.py`. The machine is shared, so absolute times carry noise; the speed-up is "
        "measured back to back on the same input.",
        "",
    ]
    out.write_text("\n".join(lines))


def write_plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["torch_ms"] for r in rows], 0.4, label="torch eager")
    ax.bar(x + 0.2, [r["ort_ms"] for r in rows], 0.4, label="ONNX Runtime CPU")
    ax.set_xticks(x, [f"{r['name']} {r['size']}²" for r in rows])
    ax.set_ylabel("ms per frame (4 modalities)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("MoE-LoRA SAM inference on CPU")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "vit_b"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iterations", type=int, nargs="+", default=[10, 3], help="runs per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "engine.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    counts = args.iterations + [args.iterations[-1]] * (len(args.models) - len(args.iterations))
    iterations = dict(zip(args.models, counts, strict=False))
    with tempfile.TemporaryDirectory() as folder:
        rows = [bench_model(m, args.size, iterations[m], args.threads, Path(folder)) for m in args.models]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_report(rows, args.threads, args.out, " ".join([".venv/bin/python bench/bench_engine.py", *sys.argv[1:]]))
    write_plot(rows, args.out.with_suffix(".png"))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
