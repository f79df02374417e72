"""Benchmark: the extra inference cost of the depth task (GMAC and CPU milliseconds).

Four compositions of one model, same weights where they share parts:
- `semantic (experts)`: the single-task MoE-LoRA SAM (today's model);
- `semantic + depth, shared path`: adapters `experts`, tasks semantic and depth: one encoder pass,
  a second decoder;
- `semantic + depth (TA-LoRA)`: task-aware adapters, one encoder path per task (the batch is
  B x 2 tasks x M modalities) and the depth decoder;
- `TA-LoRA, depth_task off`: the same checkpoint restricted to the semantic task
  (`MoELoRASAM.with_tasks`, what the node runs with `depth_task:=false`).

GMAC: multiply-accumulates counted by torch's FlopCounterMode on one frame with all four
modalities (matmuls, convolutions, attention; elementwise ops are not counted), for the CPU-sized
model and, counted on the meta device without running it, for ViT-B at 1024. CPU ms: the
engine-contract forward in torch, one thread, and the exported graph in ONNX Runtime (CPU, one
thread), measured alternately in one run; medians and minima, with the load average.

    .venv/bin/python bench/bench_depth_task.py            # writes docs/benchmarks/depth_task.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from sam_mmseg_ros.model import build_model

ROOT = Path(__file__).resolve().parents[1]


def compositions(model_name: str, img_size: int) -> dict[str, torch.nn.Module]:
    """The four compositions; on the meta device (a `with torch.device("meta")` around the call)
    only their shapes exist, enough to count GMAC."""
    torch.manual_seed(0)
    multi = build_model(model_name, img_size=img_size, adapters="ta_lora", tasks=("semantic", "depth")).eval()
    shared = build_model(model_name, img_size=img_size, tasks=("semantic", "depth")).eval()
    if not next(multi.parameters()).is_meta:
        with torch.no_grad():
            for name, p in multi.named_parameters():
                if ".lora_b_" in name or ".lora_core_" in name:
                    p.normal_(0, 0.02)  # non-zero adapters, so every path really computes them
        shared.load_state_dict({k: v for k, v in multi.state_dict().items() if ".lora_core_" not in k})
    single = shared.with_tasks(("semantic",)).eval()
    return {"semantic (experts)": single, "semantic + depth, shared path": shared,
            "semantic + depth (TA-LoRA)": multi, "TA-LoRA, depth_task off": multi.with_tasks(("semantic",)).eval()}


def gmac(model: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    # Grad mode: the counter's module tracker needs autograd nodes. The router's eager check that
    # some modality is present reads a value, which meta tensors do not have: skipped as in export.
    with counter, mock.patch("sam_mmseg_ros.model.router.capturing_graph", return_value=images.is_meta):
        model(images, mask)
    return counter.get_total_flops() / 2e9


def meta_gmac(model_name: str, img_size: int) -> dict[str, float]:
    """GMAC of each composition of a model too big to run here, counted on the meta device."""
    with torch.device("meta"):
        models = compositions(model_name, img_size)
        images, mask = torch.zeros(1, 4, 3, img_size, img_size), torch.ones(1, 4)
    return {name: gmac(model, images, mask) for name, model in models.items()}


def onnx_session(model: torch.nn.Module, img_size: int, folder: Path):
    import onnxruntime as ort

    from sam_mmseg_ros.engine.export import export_model

    path = export_model(model, folder / f"{id(model)}.onnx", input_size=(img_size, img_size),
                        metadata={"model_hash": "bench"})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def measure(models: dict, sessions: dict, images: torch.Tensor, mask: torch.Tensor, rounds: int) -> dict:
    """Alternating rounds over the compositions: each round times every model once (torch, then ONNX Runtime)."""
    feeds = {"images": images.numpy(), "modality_mask": mask.numpy()}
    times = {name: {"torch": [], "onnxruntime": []} for name in models}
    with torch.inference_mode():
        for name, model in models.items():  # warm-up
            model(images, mask)
            sessions[name].run(None, feeds)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(images, mask)
                times[name]["torch"].append(time.perf_counter() - start)
                start = time.perf_counter()
                sessions[name].run(None, feeds)
                times[name]["onnxruntime"].append(time.perf_counter() - start)
    return times


def write_report(rows: list[dict], big: dict[str, float], args, load: tuple[float, float], output: Path) -> None:
    base = rows[0]
    big_base = next(iter(big.values()))
    lines = [
        "# The depth task's extra inference cost",
        "",
        f"Machine: {platform.machine()} CPU (2 cores shared with other jobs; load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after), one thread, Python {platform.python_version()}, "
        f"torch {torch.__version__}.",
        f"Command: `.venv/bin/python bench/bench_depth_task.py --model {args.model} --img-size {args.img_size} "
        f"--rounds {args.rounds} --big-model {args.big_model} --big-size {args.big_size}`",
        f"Model `{args.model}` at {args.img_size}x{args.img_size}, one frame with all 4 modalities; "
        f"{args.rounds} alternating rounds (median and minimum ms).",
        "",
        "| composition | outputs | GMAC | extra GMAC | torch ms (median / min) | ONNX Runtime ms (median / min) | "
        "ORT extra (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {', '.join(r['outputs'])} | {r['gmac']:.2f} | {r['gmac'] - base['gmac']:+.2f} "
            f"({100 * (r['gmac'] / base['gmac'] - 1):+.0f} %) | {r['torch'][0]:.1f} / {r['torch'][1]:.1f} | "
            f"{r['ort'][0]:.1f} / {r['ort'][1]:.1f} | {100 * (r['ort'][0] / base['ort'][0] - 1):+.0f} % |")
    lines += [
        "",
        f"GMAC of `{args.big_model}` at {args.big_size}x{args.big_size} (4 modalities, counted on the meta device):",
        "",
        "| composition | GMAC | extra |",
        "|---|---|---|",
        *(f"| {name} | {value:.0f} | {value - big_base:+.0f} ({100 * (value / big_base - 1):+.0f} %) |"
          for name, value in big.items()),
        "",
        "TA-LoRA gives each task its own encoder features, so the encoder runs once per task: that is "
        "where most of the extra cost is. The shared-path composition (one encoder pass, a depth "
        "decoder on the same features) costs only the decoder. With `depth_task:=false` the node runs "
        "the TA-LoRA checkpoint restricted to the semantic task, at the single-task cost.",
        "",
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--big-model", default="vit_b", help="GMAC only (meta device)")
    parser.add_argument("--big-size", type=int, default=1024)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks" / "depth_task.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    models = compositions(args.model, args.img_size)
    images = torch.randn(1, 4, 3, args.img_size, args.img_size)
    mask = torch.ones(1, 4)
    with tempfile.TemporaryDirectory() as folder:
        sessions = {name: onnx_session(model, args.img_size, Path(folder)) for name, model in models.items()}
        times = measure(models, sessions, images, mask, args.rounds)
    rows = []
    for name, model in models.items():
        torch_ms = np.asarray(times[name]["torch"]) * 1e3
        ort_ms = np.asarray(times[name]["onnxruntime"]) * 1e3
        rows.append({"name": name, "outputs": model.output_names, "gmac": gmac(model, images, mask),
                     "torch": (statistics.median(torch_ms), torch_ms.min()),
                     "ort": (statistics.median(ort_ms), ort_ms.min())})
    write_report(rows, meta_gmac(args.big_model, args.big_size), args, (load_before, os.getloadavg()[0]), args.output)
    print(args.output.read_text())


if __name__ == "__main__":
    main()
