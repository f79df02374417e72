"""Benchmark: batched MoE-LoRA experts vs a per-modality Python loop, and parameter counts.

The batched encoder runs all M modality images as one batch of M, each sample using its own
expert through one batched matmul. The loop alternative runs M single-expert encoders (same
weights, expert m copied in) one after the other. Both give the same features (checked here);
the question is speed. Parameter counts need no forward, so the big configs are built on the
meta device.

    .venv/bin/python bench/bench_moe_lora.py            # writes docs/benchmarks/model.md + .png
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from sam_mmseg_ros.model import MODEL_CONFIGS, build_model
from sam_mmseg_ros.model.image_encoder import ImageEncoderViT

ROOT = Path(__file__).resolve().parents[1]


def single_expert_copies(encoder: ImageEncoderViT, config) -> list[ImageEncoderViT]:
    """M encoders holding one expert each, sharing nothing but identical weights."""
    copies = []
    for m in range(config.num_modalities):
        copy = ImageEncoderViT(
            img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim, depth=config.depth,
            num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, out_chans=config.out_chans,
            window_size=config.window_size, global_attn_indexes=config.global_attn_indexes,
            feature_indexes=config.aux_block_indexes, num_experts=1, lora_rank=config.lora_rank,
            lora_alpha=config.lora_alpha,
        ).eval()
        copy.load_state_dict({k: (v[m:m + 1] if "lora_" in k else v) for k, v in encoder.state_dict().items()})
        copies.append(copy)
    return copies


def timed(fn, iterations: int, label: str) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in tqdm(range(iterations), desc=label, leave=False):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_encoder(name: str, img_size: int, iterations: int) -> dict:
    torch.manual_seed(0)
    model = build_model(name, img_size=img_size).eval()
    config = model.config
    encoder = model.image_encoder
    with torch.no_grad():
        for p in encoder.lora_parameters():
            p.normal_(0, 0.02)  # non-zero experts, so both paths really apply them
    copies = single_expert_copies(encoder, config)
    images = torch.randn(config.num_modalities, 3, img_size, img_size)

    def batched():
        return encoder(images)[0]

    def looped():
        return torch.cat([copy(images[m:m + 1])[0] for m, copy in enumerate(copies)])

    with torch.inference_mode():
        max_diff = (batched() - looped()).abs().max().item()
        batched_times = timed(batched, iterations, f"{name} batched")
        looped_times = timed(looped, iterations, f"{name} loop")
    return {"name": name, "img_size": img_size, "modalities": config.num_modalities, "iterations": iterations,
            "batched": statistics.median(batched_times), "looped": statistics.median(looped_times),
            "max_diff": max_diff}


def parameter_table(names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        with torch.device("meta"):
            model = build_model(name)
        trainable, total = model.parameter_counts()
        experts = sum(p.numel() for p in model.image_encoder.lora_parameters())
        rows.append({"name": name, "img_size": model.config.img_size, "trainable": trainable, "total": total,
                     "experts": experts, "frozen": total - trainable})
    return rows


def write_report(results: list[dict], params: list[dict], threads: int, output: Path) -> None:
    lines = [
        "# MoE-LoRA SAM: batched experts and model size",
        "",
        f"Machine: {platform.machine()} CPU, {threads} torch threads (2-core machine shared with other jobs "
        f"while measured, so absolute times are noisy), Python {platform.python_version()}, torch {torch.__version__}.",
        "Command: `.venv/bin/python bench/bench_moe_lora.py`",
        "",
        "## Image encoder forward, 4 modalities (median seconds per frame)",
        "",
        "| config | input | iterations | batched experts | per-modality loop | loop / batched | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['img_size']}x{r['img_size']} | {r['iterations']} | {r['batched']:.3f} | "
                     f"{r['looped']:.3f} | {r['looped'] / r['batched']:.2f}x | {r['max_diff']:.1e} |")
    lines += [
        "",
        "Batched: one encoder pass over a batch of M images, sample m using expert m via one batched "
        "matmul per projection. Loop: M passes of one image through single-expert copies with the same "
        "weights. Identical features (last column).",
        "",
        "## Parameters (default input size, 4 modalities, LoRA rank from the config)",
        "",
        "| config | input | total | frozen (SAM) | trainable | of which LoRA experts | trainable share |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in params:
        lines.append(f"| {p['name']} | {p['img_size']} | {p['total'] / 1e6:.2f} M | {p['frozen'] / 1e6:.2f} M | "
                     f"{p['trainable'] / 1e6:.2f} M | {p['experts'] / 1e6:.2f} M | "
                     f"{100 * p['trainable'] / p['total']:.1f} % |")
    lines += ["", "![encoder forward time](model_moe_lora.png)", ""]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines))


def write_plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.2))
    for ax, r in zip(axes if len(results) > 1 else [axes], results, strict=True):
        ax.bar(["batched", "loop"], [r["batched"], r["looped"]], color=["tab:blue", "tab:gray"])
        ax.set_title(f"{r['name']} {r['img_size']}px, {r['modalities']} modalities")
        ax.set_ylabel("s / frame")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, nargs=2, default=(10, 2), metavar=("TINY", "VIT_B"))
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks" / "model.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [bench_encoder("tiny", args.img_size, args.iterations[0]),
               bench_encoder("vit_b", args.img_size, args.iterations[1])]
    params = parameter_table([n for n in ("tiny", "vit_b", "vit_l", "vit_h") if n in MODEL_CONFIGS])
    write_report(results, params, args.threads, args.output)
    write_plot(results, args.output.with_name("model_moe_lora.png"))
    print(args.output.read_text())


if __name__ == "__main__":
    main()
