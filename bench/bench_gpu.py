"""GPU benchmark: the 4-modality vit_b at 512x512 and 1024x1024 on one GPU, in one run: torch CUDA
fp32 and fp16 (autocast), and TensorRT fp16 and fp32 when tensorrt and pycuda are installed.
Per backend: `Backend.infer` latency p50/p95/p99 (host buffers, GPU, outputs back; inputs are
synthetic frames encoded by the node's preprocessing), label agreement with torch CUDA fp32,
and GPU memory. Writes docs/benchmarks/gpu.md.

    .venv/bin/python bench/bench_gpu.py [--sizes 512 1024] [--runs 50] [--sam-checkpoint sam_vit_b.pth]

vit_b's weights are random unless `--sam-checkpoint` gives SAM's (the heads stay random either
way), so its class scores are near ties and the agreement column says more about rounding than
about segmentation; `sam-mmseg build-engine --verify` scores a trained model. Without a CUDA
device nothing is measured: the script says so and exits 0 (`make bench` runs every script).
`--device cpu --model tiny --sizes 64` runs the torch fp32 column on CPU, to check the script.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sam_mmseg_ros.engine.torch_backend import TorchBackend
from sam_mmseg_ros.engine.verify import synthetic_frames
from sam_mmseg_ros.model import build_model
from sam_mmseg_ros.sensors.preprocess import PreprocessConfig, preprocess

ROOT = Path(__file__).resolve().parents[1]


def encoded_inputs(size: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Synthetic frames rendered at the model size and encoded as the node encodes them."""
    inputs = []
    for bundle, transform in synthetic_frames(count, (size, size)):
        encoded = preprocess(bundle, PreprocessConfig(input_size=(size, size)), transform)
        inputs.append((encoded.model_input.images.copy(), encoded.model_input.modality_mask.copy()))
    return inputs


def measure(backend, inputs, runs: int) -> tuple[dict, list[dict]]:
    backend.warmup(3)
    times = []
    for i in tqdm(range(runs), desc=f"{backend.name} {backend.precision}", leave=False):
        images, mask = inputs[i % len(inputs)]
        start = time.perf_counter()
        backend.infer(images, mask)
        times.append(1e3 * (time.perf_counter() - start))
    outputs = [backend.infer(images, mask) for images, mask in inputs]
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"p50": p50, "p95": p95, "p99": p99}, outputs


def agreement(outputs: list[dict], reference: list[dict]) -> float:
    return float(np.mean([(o["labels"] == r["labels"]).mean() for o, r in zip(outputs, reference, strict=True)]))


def tensorrt_backends(model, metadata: dict, size: int, folder: Path):
    """TensorRT fp16 and fp32 engines of `model` at `size`, or a reason why there are none."""
    from sam_mmseg_ros.engine import tensorrt_backend
    from sam_mmseg_ros.engine.export import convert_file_to_fp16, export_model

    try:
        tensorrt_backend.probe()
    except tensorrt_backend.TensorRTUnavailable as exc:
        return [], str(exc)
    fp32 = export_model(model, folder / f"vit_b-{size}-fp32.onnx", input_size=(size, size), metadata=metadata)
    fp16 = convert_file_to_fp16(fp32, folder / f"vit_b-{size}-fp16.onnx")
    return [tensorrt_backend.TensorRTBackend.from_onnx(path, cache_dir=folder) for path in (fp16, fp32)], ""


def bench_size(args, size: int, folder: Path) -> tuple[list[dict], str]:
    torch.manual_seed(0)
    model = build_model(args.model, img_size=size)
    if args.sam_checkpoint:
        from sam_mmseg_ros.model.checkpoint import load_sam_weights

        load_sam_weights(model, args.sam_checkpoint)
    inputs = encoded_inputs(size, args.frames)
    rows, note = [], ""
    reference_outputs = None
    precisions = ("fp32", "fp16") if args.device.startswith("cuda") else ("fp32",)
    for precision in precisions:
        backend = TorchBackend(model, args.device, precision)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        latency, outputs = measure(backend, inputs, args.runs)
        reference_outputs = outputs if reference_outputs is None else reference_outputs
        memory = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else float("nan")
        rows.append({"backend": f"torch {args.device}", "precision": precision, "size": size, **latency,
                     "agreement": agreement(outputs, reference_outputs), "memory_mib": memory})
    metadata = TorchBackend(model, "cpu").metadata
    if args.tensorrt and args.device.startswith("cuda"):
        engines, note = tensorrt_backends(model.cpu(), metadata, size, folder)
        for engine in engines:
            latency, outputs = measure(engine, inputs, args.runs)
            rows.append({"backend": "TensorRT", "precision": engine.precision, "size": size, **latency,
                         "agreement": agreement(outputs, reference_outputs),
                         "memory_mib": engine.memory_report()["device_memory_in_use"]})
            engine.close()
    return rows, note


def write_report(rows: list[dict], notes: list[str], args, out: Path) -> None:
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine() + " CPU"
    lines = [
        f"# GPU benchmark: 4-modality {args.model}",
        "",
        f"Device: {device}; torch {torch.__version__}; {args.runs} timed runs per row after 3 warm-up runs, "
        f"inputs: {args.frames} synthetic frames encoded by the node's preprocessing; weights: "
        f"{'SAM encoder from ' + args.sam_checkpoint if args.sam_checkpoint else 'random'} (heads random: near-tied "
        f"scores, so agreement measures rounding, not segmentation). Load average at the end: "
        f"{'/'.join(f'{v:.1f}' for v in os.getloadavg())}. Command: `{' '.join(['bench/bench_gpu.py', *sys.argv[1:]])}`.",
        "",
        "| backend | precision | input | p50 (ms) | p95 (ms) | p99 (ms) | labels = torch fp32 | GPU memory (MiB) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['size']}² | {r['p50']:.2f} | {r['p95']:.2f} | "
                     f"{r['p99']:.2f} | {100 * r['agreement']:.2f} % | {r['memory_mib']:.0f} |")
    lines += ["", "GPU memory: torch, the peak allocated by torch; TensorRT, the whole device in use with the engine "
              "loaded.", *[f"TensorRT not measured: {n}" for n in notes if n], ""]
    out.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sam-checkpoint", default=None, help="SAM ViT-B checkpoint for the encoder weights")
    parser.add_argument("--no-tensorrt", dest="tensorrt", action="store_false", help="torch only")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "gpu.md")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: torch sees no CUDA device here; nothing measured (run it on the GPU machine)")
        return 0
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            size_rows, note = bench_size(args, size, Path(folder))
            rows += size_rows
            notes.append(note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_report(rows, sorted(set(notes)), args, args.out)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
