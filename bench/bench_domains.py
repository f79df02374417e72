"""Benchmark: what a pool of domain adapters (MoDA) costs at inference, next to the plain model.

The moda model runs the same encoder pass; the selector's GFT/GAT tokens read the first blocks,
and each frame's adapter is gathered and applied to the rest (`model/domain_adapters.py`). Both
models are timed alternately on the same input, torch eager on the CPU, one thread; the pool's
parameters are counted per domain.

    .venv/bin/python bench/bench_domains.py            # writes docs/benchmarks/domains.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from sam_mmseg_ros.model import build_model

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("sun", "cloud", "rain", "fog", "night")


def measure(name: str, img_size: int, rounds: int) -> dict:
    torch.manual_seed(0)
    plain = build_model(name, img_size=img_size).eval()
    moda = build_model(name, img_size=img_size, adapters="moda", domains=DOMAINS).eval()
    images = torch.randn(1, plain.config.num_modalities, 3, img_size, img_size)
    mask = torch.ones(1, plain.config.num_modalities)
    times: dict[str, list[float]] = {"plain": [], "moda": []}
    with torch.inference_mode():
        for model in (plain, moda):
            model(images, mask)  # warm-up
        for _ in range(rounds):
            for label, model in (("plain", plain), ("moda", moda)):
                start = time.perf_counter()
                model(images, mask)
                times[label].append(time.perf_counter() - start)
    pool = moda.domains
    per_domain = sum(p.numel() for p in pool.adapters[0].parameters())
    selector = sum(p.numel() for p in pool.selector.parameters())
    return {"model": name, "img_size": img_size, "rounds": rounds,
            **{f"{k}_median_ms": 1e3 * statistics.median(v) for k, v in times.items()},
            **{f"{k}_min_ms": 1e3 * min(v) for k, v in times.items()},
            "adapter_params": per_domain, "selector_params": selector,
            "total_params": sum(p.numel() for p in plain.parameters()),
            "selector_blocks": moda.config.selector_blocks, "depth": moda.config.depth}


def render(results: list[dict], command: str) -> str:
    lines = ["# Domain adapters (MoDA): inference cost", "",
             f"Command: `{command}`. Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}, torch {torch.__version__}, one thread, load average "
             f"{os.getloadavg()[0]:.1f} at the end. The plain and the moda model ({len(DOMAINS)} domains) run "
             "alternately on the same input (one frame, every modality), torch eager, fp32.", "",
             "| model | input | plain median / min (ms) | moda median / min (ms) | moda / plain (min) | "
             "params per domain | selector params | selector reads / adapters update |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['img_size']} | {r['plain_median_ms']:.1f} / {r['plain_min_ms']:.1f} | "
            f"{r['moda_median_ms']:.1f} / {r['moda_min_ms']:.1f} | {r['moda_min_ms'] / r['plain_min_ms']:.2f}x | "
            f"{r['adapter_params'] / 1e3:.1f} k ({100 * r['adapter_params'] / r['total_params']:.1f} % of the model) | "
            f"{r['selector_params'] / 1e3:.1f} k | blocks 0–{r['selector_blocks'] - 1} / "
            f"{r['selector_blocks']}–{r['depth'] - 1} |")
    lines += ["", "Choosing the adapter costs no second encoder pass: the selector's tokens read the blocks the "
              "frame passes anyway, and the choice is one gather of the chosen adapter's factors per frame. "
              "What remains is the tokens' attention over the RGB slot in the selector blocks and the low-rank "
              "update in the others.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--configs", default="tiny:128,tiny:256,vit_b:512", help="name:size list")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "domains.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for item in args.configs.split(","):
        name, size = item.split(":")
        results.append(measure(name, int(size), args.rounds))
        print(results[-1], flush=True)
    command = "python bench/bench_domains.py " + " ".join(
        f"--{k} {v}" for k, v in (("rounds", args.rounds), ("configs", args.configs)))
    Path(args.out).write_text(render(results, command))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
