"""Synthetic generator benchmark: time per 512x512 frame (RGB, depth camera, labels, 32-beam
LiDAR, events) per condition, and per 256x256 training sample (frame + `preprocess`).

CPU time (process time, so waiting for a core on a shared machine does not count) and wall time
per frame, over `--streets` streets of `--frames` frames each (a sequence also renders one frame
before its first for the event camera, and builds its street: both are counted). Prints a
Markdown table and writes docs/benchmarks/synthetic.md.

    .venv/bin/python bench/bench_synthetic.py [--streets 3] [--frames 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from sam_mmseg_ros.data.synthetic import CONDITIONS, SequenceConfig, SyntheticDataset, generate_sequence

REPORT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "synthetic.md"


def per_frame(condition: str, size: int, streets: int, frames: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for street in range(streets):
        for _ in generate_sequence(SequenceConfig(width=size, height=size, num_frames=frames, condition=condition,
                                                  seed=500 + street)):
            pass
    n = streets * frames
    return (time.process_time() - cpu) / n, (time.perf_counter() - wall) / n


def training_sample(streets: int, frames: int) -> tuple[float, float]:
    dataset = SyntheticDataset(seed=7, num_frames=streets * frames * len(CONDITIONS), size=(256, 256),
                               render_sizes=[(256, 256), (240, 320), (180, 320)], frames_per_sequence=frames)
    dataset[0]  # imports torch: not the generator's cost
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(frames, len(dataset)):
        dataset[i]
    n = len(dataset) - frames
    return (time.process_time() - cpu) / n, (time.perf_counter() - wall) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streets", type=int, default=3)
    parser.add_argument("--frames", type=int, default=4)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = [(c, *per_frame(c, 512, args.streets, args.frames)) for c in CONDITIONS]
    sample = training_sample(args.streets, args.frames)
    load_after = os.getloadavg()[0]
    lines = ["# Synthetic generator", "",
             f"`python bench/bench_synthetic.py --streets {args.streets} --frames {args.frames}` on "
             f"{platform.machine()} ({os.cpu_count()} cores), Python {platform.python_version()}; load average "
             f"{load_before:.1f} before, {load_after:.1f} after. CPU time excludes waiting for a core.", "",
             "| what | CPU s / frame | wall s / frame |", "|---|---|---|"]
    lines += [f"| 512x512 frame, {c} | {cpu:.2f} | {wall:.2f} |" for c, cpu, wall in rows]
    lines.append(f"| 256x256 training sample (frame at 256x256, 240x320 or 180x320 + preprocess), all "
                 f"conditions in turn | {sample[0]:.2f} | {sample[1]:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)


if __name__ == "__main__":
    main()
