"""`sam-mmseg train`: the command over the training library (`train.py`) and the continual
trainer (`continual.py`): options, datasets, presets, resume, and the `--continual` mode."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from torch.utils.data import Dataset

from sam_mmseg_ros.model.config import ADAPTERS, MODEL_CONFIGS, TASKS
from sam_mmseg_ros.train import LAST_CHECKPOINT, PRESETS, Preset, TrainConfig, run_preset, train

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Train MoE-LoRA SAM. Single process: `sam-mmseg train ...`; several: "
                          "`torchrun --nproc_per_node N -m sam_mmseg_ros.cli train ...`.")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="multi-stage recipe; the options below override its values in every stage. "
                             + " ".join(f"{name}: {p.description}." for name, p in sorted(PRESETS.items())))
    parser.add_argument("--until", metavar="STAGE", help="with --preset: stop after this stage")
    parser.add_argument("--dataset", choices=("deliver", "synthetic"), help="default: the preset's, else deliver")
    parser.add_argument("--data-root", help="DELIVER folder (with img/, hha/, event/, lidar/, semantic/)")
    parser.add_argument("--conditions", nargs="+", help="DELIVER conditions (default: all five)")
    parser.add_argument("--cases", nargs="+", help="DELIVER cases: normal, motionblur, overexposure, underexposure, "
                        "lidarjitter, eventlowres (default: all)")
    parser.add_argument("--encodings", choices=("native", "deliver", "deliver-hha"),
                        help="how the slots are encoded (recorded in the checkpoint; the node encodes its inputs "
                             "the same way): synthetic data native (default) or deliver; DELIVER data deliver "
                             "(default: depth/ through the package's HHA, deployable) or deliver-hha (DELIVER's hha/ "
                             "images, as in papers; a node can then only take ready HHA images)")
    parser.add_argument("--train-frames", type=int, help="synthetic: number of training frames")
    parser.add_argument("--val-frames", type=int, help="synthetic: number of validation frames (0: none)")
    parser.add_argument("--data-cache", metavar="DIR",
                        help="synthetic: keep the encoded frames in DIR (.npz), so later runs do not render again")
    parser.add_argument("--model", help="model config name: " + ", ".join(MODEL_CONFIGS)
                        + " (SAM ViT; MoE-LoRA on SAM2 Hiera; MemorySAM; CPU-sized ones)")
    parser.add_argument("--img-size", type=int, help="square model input size (multiple of 16; 32 for hiera and memorysam)")
    parser.add_argument("--sam-checkpoint", help="official SAM (.pth, vit models) or SAM2/SAM2.1 (.pt, hiera and "
                                                 "memorysam models) checkpoint for the image encoder and SAM's parts")
    parser.add_argument("--init-checkpoint", help="start from the weights of one of our checkpoints")
    parser.add_argument("--steps", type=int, help="optimizer steps (with --preset: of every stage; with "
                        "--continual: per domain)")
    parser.add_argument("--warmup-steps", type=int, help="steps of linear LR warmup")
    parser.add_argument("--batch-size", type=int, help="per process")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--adapters", choices=[a for a in ADAPTERS if a != "moda"],
                        help="encoder adapters: experts (one LoRA per modality) or ta_lora (experts with "
                             "task-shared and task-specific factors, one path per task); domain adapters (moda) "
                             "come with --continual")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, help="what the model predicts (semantic first)")
    parser.add_argument("--depth-weight", type=float, help="weight of the depth loss")
    parser.add_argument("--depth-holes", type=float, metavar="P",
                        help="probability of punching a depth camera's holes into a sample's depth input")
    parser.add_argument("--modality-dropout", type=float, metavar="P",
                        help="probability of dropping each modality in a sample (never all)")
    parser.add_argument("--rgb-alone", type=float, metavar="P",
                        help="share of samples (after dropout) given RGB only, the node's last fallback")
    parser.add_argument("--train-encoder", action="store_true", default=None,
                        help="also train the SAM encoder (pretraining, or a small encoder with its experts)")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"),
                        help="mixed precision: auto = bf16/fp16 on CUDA, off on the CPU (said in the log); bf16 also "
                             "works on the CPU (fast with AMX); fp16 needs CUDA")
    parser.add_argument("--augment", action="store_true", default=None,
                        help="flips, random resized crops, colour jitter and blur (RGB only for the last two)")
    parser.add_argument("--class-balance", type=float, metavar="P",
                        help="class-balanced OHEM: weight classes by training-label frequency^-P (0.5: 1/sqrt)")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto, cpu, cuda (torchrun: cuda:LOCAL_RANK)")
    parser.add_argument("--out", dest="out_dir", default="train_output", help="output folder")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                        help=f"continue a run (default checkpoint: OUT/{LAST_CHECKPOINT}; with --preset: "
                             f"skip finished stages, continue the interrupted one)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    continual = parser.add_argument_group(
        "continual learning", "learn domains one after another (sam_mmseg_ros/continual.py); the options "
        "above apply to every domain's run, --init-checkpoint may be a moda checkpoint to add domains to")
    continual.add_argument("--continual", metavar="DOMAINS",
                           help="comma list of domains in learning order: synthetic conditions "
                                "(sun,cloud,rain,fog,night; the default --dataset here) or DELIVER conditions; "
                                "--train-frames/--val-frames per domain (default 128/32)")
    continual.add_argument("--continual-method", choices=("moda", "naive", "joint"), default="moda",
                           help="moda: an adapter per domain and a selector (CoSAM); naive: fine-tune one model "
                                "in turn; joint: one model on all domains at once, steps x domains steps")
    continual.add_argument("--first-steps", type=int,
                           help="steps of the first domain (the vehicle's first model; with moda it also trains "
                                "the shared experts, router and heads), default --steps")
    continual.add_argument("--buffer-size", type=int, default=10,
                           help="moda: replay frames kept per domain to train the selector")


_CONFIG_ARGS = ("model", "img_size", "sam_checkpoint", "init_checkpoint", "steps", "warmup_steps", "batch_size",
                "lr", "modality_dropout", "rgb_alone", "train_encoder", "amp", "augment", "class_balance", "checkpoint_every",
                "num_workers", "seed", "device", "out_dir", "progress", "depth_weight", "depth_holes")
_MODEL_ARGS = ("adapters", "tasks")
"""Options that are ModelConfig fields (TrainConfig.model_overrides)."""


def _has_depth_task(overrides: dict, preset: Preset | None) -> bool:
    """Whether the model being trained predicts depth (so DELIVER must read its depth folder)."""
    from sam_mmseg_ros.model import MODEL_CONFIGS

    base = {**(preset.base if preset else {}), **overrides}
    model_overrides = base.get("model_overrides", {})
    if "tasks" in model_overrides:
        return "depth" in model_overrides["tasks"]
    if base.get("init_checkpoint"):
        from sam_mmseg_ros.model.checkpoint import load_checkpoint

        return "depth" in load_checkpoint(base["init_checkpoint"])[0].config.tasks
    name = base.get("model", TrainConfig.model)
    return name in MODEL_CONFIGS and "depth" in MODEL_CONFIGS[name].tasks


def _datasets(kind: str, args: argparse.Namespace, img_size: int, data: dict,
              depth_target: bool = False) -> tuple[Dataset, Dataset | None]:
    from sam_mmseg_ros.sensors.encodings import PRESETS, live_encodings

    size = (img_size, img_size)
    if kind == "synthetic":
        from sam_mmseg_ros.data.synthetic import SyntheticDataset

        train_frames = args.train_frames or data.get("train_frames", 512)
        val_frames = args.val_frames if args.val_frames is not None else data.get("val_frames", 64)
        encodings = PRESETS[args.encodings or "native"]
        if not all(name in live_encodings(m) for m, name in encodings.items()):
            raise SystemExit(f"--encodings {args.encodings}: synthetic data is encoded from raw sensor data "
                             "(native or deliver)")
        # Other camera shapes, squeezed into the model input as the node squeezes them.
        shapes = {"render_sizes": [tuple(s) for s in data.get("render_sizes", [size])],
                  "frames_per_sequence": data.get("frames_per_sequence", 4), "encodings": encodings,
                  "cache_dir": getattr(args, "data_cache", None)}
        train_set = SyntheticDataset(seed=args.seed or 0, num_frames=train_frames, size=size, **shapes)
        val_set = SyntheticDataset(seed=(args.seed or 0) + 1_000_000, num_frames=val_frames, size=size, **shapes) \
            if val_frames else None
        return train_set, val_set
    from sam_mmseg_ros.data.deliver import DeliverDataset

    if not args.data_root:
        raise SystemExit("--dataset deliver needs --data-root")
    encodings = args.encodings or "deliver"
    return (DeliverDataset(args.data_root, "train", args.conditions, size, cases=args.cases, encodings=encodings,
                           depth_target=depth_target),
            DeliverDataset(args.data_root, "val", args.conditions, size, cases=args.cases, encodings=encodings,
                           depth_target=depth_target))


def run(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in _CONFIG_ARGS if getattr(args, name, None) is not None}
    if getattr(args, "continual", None):
        if args.preset or args.resume is not None:
            raise SystemExit("--continual runs its own stages: it takes neither --preset nor --resume")
        from sam_mmseg_ros import continual

        return continual.run(args, overrides)
    preset = PRESETS[args.preset] if args.preset else None
    model_overrides = {name: getattr(args, name) for name in _MODEL_ARGS if getattr(args, name, None) is not None}
    if model_overrides:
        overrides["model_overrides"] = {**(preset.base.get("model_overrides", {}) if preset else {}),
                                        **model_overrides}
    kind = args.dataset or (preset.dataset["dataset"] if preset else "deliver")
    img_size = overrides.get("img_size") or (preset.base.get("img_size") if preset else TrainConfig.img_size)
    from sam_mmseg_ros.sensors.encodings import EncodingError

    try:
        train_set, val_set = _datasets(kind, args, img_size, preset.dataset if preset else {},
                                       depth_target=_has_depth_task(overrides, preset))
    except EncodingError as exc:
        log.error("%s", exc)
        return 2
    if preset is not None:
        result = run_preset(args.preset, overrides, train_set, val_set, resume=args.resume is not None,
                            until=args.until)
    else:
        config = TrainConfig.from_dict(overrides)
        if args.resume is not None:
            resume = Path(config.out_dir) / LAST_CHECKPOINT if args.resume == "auto" else Path(args.resume)
            config = replace(config, resume=str(resume))
        result = train(config, train_set, val_set)
    if "checkpoint" in result:
        summary = f"trained to step {result['step']}: {result['checkpoint']}"
        if "val_miou" in result:
            summary += f", validation mIoU {result['val_miou']:.4f}"
        log.info(summary)
    return 0
