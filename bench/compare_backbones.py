"""MoE-LoRA SAM (ViT), MoE-LoRA SAM2 (Hiera) and MemorySAM trained with the same budget on the same
synthetic data, evaluated on the same held-out bag (docs/RESULTS.md, "SAM vs SAM2 backbones").

    nice -n 10 env OMP_NUM_THREADS=1 python bench/compare_backbones.py --out artifacts/compare_backbones

Protocol (every step is skipped when its output exists, so an interrupted run continues):
1. Backbones, standing in for the official pretrained weights (there is no download): the ViT
   encoder is stage 1 of the `synthetic-tiny` preset (the shipped model's frozen encoder, taken
   from it); the Hiera encoder (`tiny_hiera`) is trained by that same stage 1 recipe. Each is
   written in its official layout (SAM: `image_encoder.*`; SAM2: {"model": `image_encoder.*`}).
2. The compared training: `tiny`, `tiny_hiera` and `tiny_memorysam` start from their backbone
   file (`--sam-checkpoint`; encoder frozen, everything else from its init) and train with the
   preset's stage 2 settings (lr, warmup, modality dropout, batch 8) for `--steps` steps on the
   preset's frames (seed 0, 1024 frames at 128 x 128).
3. The held-out bag of docs/RESULTS.md (30 streets, seeds 9000-9029, 6 per condition, 4 frames
   each) is scored with `sam-mmseg eval` (torch backend, every modality subset) for each model.
4. CPU latency: the three models' torch forward (one frame, four modalities, 128 x 128, one
   thread) in interleaved rounds in this process; minimum and median, with the load average.
Writes `summary.json` and `summary.md` (the tables) into `--out`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import torch

from sam_mmseg_ros import cli
from sam_mmseg_ros.data.synthetic import SyntheticDataset
from sam_mmseg_ros.model.checkpoint import default_checkpoint_path, load_checkpoint
from sam_mmseg_ros.train import FINAL_CHECKPOINT, PRESETS, TrainConfig, train

LOG = logging.getLogger("compare_backbones")

MODELS = {"tiny": "MoE-LoRA SAM (ViT)", "tiny_hiera": "MoE-LoRA SAM2 (Hiera)", "tiny_memorysam": "MemorySAM"}
BACKBONE_OF = {"tiny": "vit", "tiny_hiera": "hiera", "tiny_memorysam": "hiera"}
SIZE = 128
TEST_CONDITIONS = ",".join(c for c in ("sun", "cloud", "fog", "rain", "night") for _ in range(6))
THIN_CLASSES = ("Pole", "Pedestrian", "TrafficSign", "TrafficLight", "TwoWheeler", "Fence")
CONDITIONS = ("sun", "cloud", "fog", "rain", "night")
WITHOUT = ("without depth", "without event", "without lidar")


def _datasets(out: Path) -> tuple[SyntheticDataset, SyntheticDataset]:
    data = PRESETS["synthetic-tiny"].dataset
    cache = out / "frames"
    return (SyntheticDataset(seed=0, num_frames=data["train_frames"], size=(SIZE, SIZE), cache_dir=cache),
            SyntheticDataset(seed=1_000_000, num_frames=data["val_frames"], size=(SIZE, SIZE), cache_dir=cache))


def _stage_config(stage: int, **fields) -> TrainConfig:
    preset = PRESETS["synthetic-tiny"]
    return TrainConfig.from_dict({**preset.base, **preset.stages[stage].overrides, "progress": True, **fields})


def backbone_files(out: Path, train_set, pretrain_steps: int | None) -> dict[str, Path]:
    """{"vit": SAM-layout file, "hiera": SAM2-layout file} of the pretrained image encoders."""
    folder = out / "backbones"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"vit": folder / "vit_tiny_sam_layout.pth", "hiera": folder / "hiera_tiny_sam2_layout.pt"}
    if not files["vit"].exists():
        shipped, _ = load_checkpoint(default_checkpoint_path())
        torch.save(_encoder_state(shipped), files["vit"])
    if not files["hiera"].exists():
        pretrain = out / "hiera_pretrain"
        if not (pretrain / FINAL_CHECKPOINT).exists():
            LOG.info("stage 1 recipe of synthetic-tiny on tiny_hiera (the Hiera backbone)")
            steps = {"steps": pretrain_steps} if pretrain_steps else {}
            train(_stage_config(0, model="tiny_hiera", out_dir=str(pretrain), **steps), train_set)
        model, _ = load_checkpoint(pretrain / FINAL_CHECKPOINT)
        torch.save({"model": _encoder_state(model)}, files["hiera"])
    return files


def _encoder_state(model) -> dict[str, torch.Tensor]:
    return {f"image_encoder.{k}": v for k, v in model.image_encoder.state_dict().items() if ".lora_" not in k}


def train_models(out: Path, steps: int, backbones: dict[str, Path], train_set, val_set) -> dict[str, dict]:
    results = {}
    for name in MODELS:
        folder = out / name
        summary = folder / "train_summary.json"
        if not summary.exists():
            config = _stage_config(1, model=name, steps=steps, out_dir=str(folder),
                                   sam_checkpoint=str(backbones[BACKBONE_OF[name]]))
            started = time.monotonic()
            result = train(config, train_set, val_set)
            trainable, total = result["model"].parameter_counts()
            summary.write_text(json.dumps({"steps": steps, "batch_size": config.batch_size,
                                           "minutes": round((time.monotonic() - started) / 60, 1),
                                           "val_miou": result.get("val_miou"), "trainable": trainable,
                                           "total": total, "load_average": os.getloadavg()}))
        results[name] = json.loads(summary.read_text())
    return results


def evaluate(out: Path, max_frames: int | None) -> dict[str, dict]:
    bag = out / "test_bag"
    if not bag.exists():
        assert cli.main(["make-bag", str(bag), "--size", f"{SIZE}x{SIZE}", "--conditions", TEST_CONDITIONS,
                         "--frames", "4", "--seed", "9000"]) == 0
    metrics = {}
    for name in MODELS:
        report = out / f"eval_{name}"
        if not (report / "metrics.json").exists():
            assert cli.main(["eval", str(bag), "--checkpoint", str(out / name / FINAL_CHECKPOINT), "--backend", "torch",
                             "--device", "cpu", "--out", str(report), "--no-progress"]
                            + (["--max-frames", str(max_frames)] if max_frames else [])) == 0
        metrics[name] = json.loads((report / "metrics.json").read_text())
    return metrics


def latency(out: Path, rounds: int = 20) -> dict:
    torch.set_num_threads(1)
    models = {name: load_checkpoint(out / name / FINAL_CHECKPOINT)[0].eval() for name in MODELS}
    images, mask = torch.rand(1, 4, 3, SIZE, SIZE), torch.ones(1, 4)
    times: dict[str, list[float]] = {name: [] for name in MODELS}
    load_before = os.getloadavg()
    with torch.inference_mode():
        for model in models.values():
            model(images, mask)  # warm up
        for _ in range(rounds):
            for name, model in models.items():
                started = time.perf_counter()
                model(images, mask)
                times[name].append((time.perf_counter() - started) * 1e3)
    return {"ms": {name: {"min": min(t), "median": statistics.median(t)} for name, t in times.items()},
            "rounds": rounds, "threads": 1, "load_average": [load_before, os.getloadavg()]}


def tables(training: dict, metrics: dict, timing: dict) -> str:
    rows = ["| model (config) | trainable / total params | mIoU RGB-D-E-L | RGB | "
            + " | ".join(CONDITIONS) + " | thin classes (" + ", ".join(THIN_CLASSES) + ") | "
            "cost of losing one modality (avg; depth, event, lidar) | CPU latency min / median (ms) | train min |",
            "|---" * 11 + "|"]
    for name, label in MODELS.items():
        m, t, ms = metrics[name], training[name], timing["ms"][name]
        full = m["miou"]["RGB-D-E-L"]
        per_condition = m["miou_per_condition"]["RGB-D-E-L"]
        costs = [full - m["miou"][w] for w in WITHOUT]
        thin = " / ".join("-" if m["class_iou"].get(c) is None else f"{m['class_iou'][c]:.1f}" for c in THIN_CLASSES)
        rows.append(f"| {label} (`{name}`) | {t['trainable'] / 1e6:.2f} M / {t['total'] / 1e6:.2f} M | {full:.1f} | "
                    f"{m['miou']['RGB']:.1f} | " + " | ".join("-" if per_condition.get(c) is None else f"{per_condition[c]:.1f}"
                                                          for c in CONDITIONS)
                    + f" | {thin} | {statistics.mean(costs):+.1f} ({', '.join(f'{c:+.1f}' for c in costs)}) | "
                    f"{ms['min']:.0f} / {ms['median']:.0f} | {t['minutes']:.0f} |")
    load = timing["load_average"]
    rows.append("")
    rows.append(f"Latency: torch eager, 1 thread, 1 frame x 4 modalities at {SIZE} x {SIZE}, {timing['rounds']} "
                f"interleaved rounds; load average {load[0][0]:.1f} before, {load[1][0]:.1f} after.")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("artifacts/compare_backbones"))
    parser.add_argument("--steps", type=int, default=250, help="training steps of each compared model (batch 8)")
    parser.add_argument("--pretrain-steps", type=int, help="Hiera backbone steps (default: the preset's stage 1); "
                        "with --eval-max-frames, for a quick check of the pipeline")
    parser.add_argument("--eval-max-frames", type=int, help="score only this many test frames")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    train_set, val_set = _datasets(args.out)
    backbones = backbone_files(args.out, train_set, args.pretrain_steps)
    training = train_models(args.out, args.steps, backbones, train_set, val_set)
    metrics = evaluate(args.out, args.eval_max_frames)
    timing = latency(args.out)
    summary = {"training": training, "timing": timing,
               "miou": {n: metrics[n]["miou"] for n in MODELS},
               "miou_per_condition": {n: metrics[n]["miou_per_condition"] for n in MODELS},
               "class_iou": {n: metrics[n]["class_iou"] for n in MODELS}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    text = tables(training, metrics, timing)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
