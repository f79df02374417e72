"""Training of the MoE-LoRA experts, router and heads (DESIGN.md §4); the command is
`train_command.py`.

A model with the depth task (config.tasks) learns both tasks at once: OHEM cross-entropy on the
labels plus `depth_weight` x the log-depth L1 on the dataset's metric depth, under the same
modality dropout, so depth is also learned without the depth sensor, and with `depth_holes` the
depth camera's input loses patches and far pixels (data/depth_holes.py) while the target keeps
them, so the model learns to fill its holes. `init_checkpoint` with
`model_overrides` starts a model that extends the checkpoint's (task-aware adapters, more tasks)
from its weights.

One loop for one process or many: started with `torchrun --nproc_per_node N`, every process
trains on its shard (DistributedSampler) under DistributedDataParallel (nccl on CUDA, gloo on
the CPU); rank 0 alone writes checkpoints, the metrics log and the progress bar.

A run is reproducible and resumable: the data order comes from (seed, epoch), the modality
dropout draws from (seed, rank, step), and checkpoints carry the optimizer, LR schedule, AMP
scaler, step and per-rank RNG states, so a resumed run takes the same next step an
uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from sam_mmseg_ros.contracts import IGNORE_LABEL, MODALITY_INDEX
from sam_mmseg_ros.data.dataset import augment, modality_dropout, rgb_alone
from sam_mmseg_ros.model.checkpoint import DEFAULT_CHECKPOINT
from sam_mmseg_ros.model.domain_adapters import learn_domain
from sam_mmseg_ros.model.losses import LogDepthL1, SegmentationLoss

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
FINAL_CHECKPOINT = "model.pt"
METRICS_LOG = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in every checkpoint (plain types only)."""

    model: str = "tiny"
    img_size: int = 256
    num_classes: int = 25
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {"depth": 2}
    sam_checkpoint: str | None = None  # official SAM / SAM2 weights for the encoder (and SAM's parts)
    init_checkpoint: str | None = None  # start from our checkpoint's weights (a previous stage)
    steps: int = 2000
    batch_size: int = 8  # per process
    lr: float = 6e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    warmup_start: float = 0.1  # LR factor at step 0, rising linearly to 1 over warmup_steps
    poly_power: float = 0.9
    grad_clip: float = 1.0  # max gradient L2 norm; 0 disables
    amp: str = "auto"  # auto (CUDA: bf16 where supported, else fp16; CPU: off) | bf16 (CUDA or CPU) | fp16 (CUDA) | off
    modality_dropout: float = 0.0
    rgb_alone: float = 0.0  # share of samples (after dropout) given RGB only: the path every failure falls back to
    augment: bool = False  # flips, random resized crops, colour jitter, blur (data.dataset.Augmentation)
    class_balance: float = 0.0  # OHEM class weights frequency^-p over the training labels (0: none, 0.5: 1/sqrt)
    rgb_only: bool = False  # feed only the RGB slot (encoder pretraining)
    train_encoder: bool = False  # False: SAM encoder frozen, only experts, router and heads train
    train_experts: bool = True  # False keeps the LoRA experts at their init (encoder pretraining)
    domain: str | None = None  # moda models: train this domain's adapter on its frames (continual.py)
    aux_weight: float = 0.4
    depth_weight: float = 1.0  # weight of the depth loss (models with the depth task)
    depth_holes: float = 0.0  # probability that a sample's depth input gets a depth camera's holes
    ohem_thresh: float = 0.7
    checkpoint_every: int = 500
    log_every: int = 10
    out_dir: str = "train_output"
    resume: str | None = None  # checkpoint to continue from (same out_dir layout)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (torchrun picks cuda:LOCAL_RANK)
    seed: int = 0
    num_workers: int = 0
    progress: bool = True
    encodings: dict | None = None  # what each slot of the data holds (sensors/encodings.py); None: the
    # dataset's `encodings`, else the native ones. Recorded in every checkpoint: the node encodes
    # its inputs the same way.

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        from sam_mmseg_ros.model.config import dataclass_from_dict

        return dataclass_from_dict(cls, data)


# ---------------------------------------------------------------------------------------------
# Distributed setup


@dataclass
class _Runtime:
    rank: int
    world_size: int
    device: torch.device
    owns_process_group: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(requested: str) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    return device


def _start_runtime(requested_device: str) -> _Runtime:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*), or the
    one the caller already initialised; a plain process is a world of one."""
    device = _pick_device(requested_device)
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        return _Runtime(dist.get_rank(), dist.get_world_size(), device, owns)
    return _Runtime(0, 1, device, False)


# ---------------------------------------------------------------------------------------------
# Pieces of the loop


class _LogitsForward(nn.Module):
    """DDP wraps `forward`; training needs `forward_logits` (the model's `forward` is the
    inference contract), so this adapter makes it the wrapped call. With `domain` (an adapter
    index of a moda model) every frame uses that domain's adapter: the frames of the domain being
    learned."""

    def __init__(self, model: nn.Module, domain: int | None = None):
        super().__init__()
        self.model = model
        self.domain = domain

    def forward(self, images: torch.Tensor, modality_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.domain is None:
            return self.model.forward_logits(images, modality_mask)
        domain = torch.full((images.shape[0],), self.domain, dtype=torch.long, device=images.device)
        return self.model.forward_logits(images, modality_mask, domain=domain)


class _RGBOnlyForward(nn.Module):
    """Encoder pretraining on RGB alone (`rgb_only`) that encodes only the RGB slot: a quarter of
    the full forward's cost with four modalities. Valid while the LoRA experts are untrained
    zeros (`rgb_only_shortcut`): every expert is then the plain encoder, so an RGB image may run
    in any expert's place of the batch. The fusion sees one present modality with weight 1,
    exactly what the router gives RGB when it is alone, so the logits equal `forward_logits` with
    only RGB present (test_train checks it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, modality_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        model = self.model
        b, m, _, h, w = images.shape
        rgb = images[:, MODALITY_INDEX["rgb"]]
        pad = (-b) % m  # the encoder groups its batch by modality
        embedding, blocks = model.image_encoder(torch.cat([rgb, rgb[:pad]]) if pad else rgb)
        ones = images.new_ones(b, 1)
        fused = model.fusion(embedding[:b, None], ones, ones)
        fused_blocks = [model.fusion(f[:b, None], ones, ones, channel_dim=-1) for f in blocks]
        weights = torch.zeros_like(modality_mask)
        weights[:, MODALITY_INDEX["rgb"]] = 1.0
        out = {"logits": model.decoder(fused, (h, w)), "router_weights": weights}
        if model.aux_head is not None:
            out["aux_logits"] = model.aux_head(fused_blocks, (h, w))
        return out


def rgb_only_shortcut(model: nn.Module, config: TrainConfig) -> bool:
    """Whether RGB-only training may use `_RGBOnlyForward`: a MoE-LoRA SAM whose experts stay
    frozen at their zero initialisation."""
    from sam_mmseg_ros.model.sam_moe import MoELoRASAM

    if not (config.rgb_only and not config.train_experts and isinstance(model, MoELoRASAM)):
        return False
    c = model.config  # the shortcut knows one semantic path through SAM's ViT, its experts and the router fusion
    if (c.backbone != "vit" or c.fusion != "router" or c.adapters != "experts" or c.tasks != ("semantic",)
            or model.prototype_memory is not None):
        return False
    return all(not p.any() for name, p in model.image_encoder.named_parameters() if "lora_b" in name)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup from `warmup_start`, then poly decay to 0 at `steps` (as CMNeXt/mmseg)."""
    if step < config.warmup_steps:
        return config.warmup_start + (1.0 - config.warmup_start) * step / config.warmup_steps
    decay_steps = max(1, config.steps - config.warmup_steps)
    return max(0.0, 1.0 - (step - config.warmup_steps) / decay_steps) ** config.poly_power


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. On the CPU only bf16 autocast exists (fast where the
    CPU has AMX or AVX512-BF16), so `auto` stays fp32 there and says so, and fp16 is an error."""
    if config.amp == "off":
        return None
    if device.type == "cuda":
        if config.amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[config.amp]
    if config.amp == "fp16":
        raise ValueError(f"--amp fp16 needs CUDA; on {device.type} use --amp bf16 or off")
    if config.amp == "auto":
        log.info("mixed precision off on %s (auto uses it on CUDA only; --amp bf16 turns on bf16 autocast)",
                 device.type)
        return None
    return torch.bfloat16


def _class_weights(dataset: Dataset, config: TrainConfig) -> torch.Tensor | None:
    """OHEM class weights frequency^-class_balance from the training labels, scaled so that the
    average labelled pixel weighs 1; classes that never occur get 0 (they have no pixels)."""
    if config.class_balance <= 0:
        return None
    from sam_mmseg_ros.data.dataset import class_frequencies

    freq = torch.as_tensor(class_frequencies(dataset, config.num_classes), dtype=torch.float64)
    weights = torch.where(freq > 0, freq.clamp_min(1e-6) ** -config.class_balance, torch.zeros_like(freq))
    weights = weights / (weights * freq).sum()
    return weights.clamp_max(50.0).float()


def _step_generator(config: TrainConfig, rank: int, step: int) -> torch.Generator:
    """Modality-dropout draws as a pure function of (seed, rank, step): resume-exact, and
    different per rank so shards do not drop the same sensors in lockstep."""
    return torch.Generator().manual_seed(((config.seed * 1_000_003 + rank) * 1_000_033 + step) % (2**63))


def _batches(dataset: Dataset, config: TrainConfig, runtime: _Runtime, start_step: int) -> Iterator[dict]:
    """Endless batches; epoch e is the DistributedSampler order for (seed, e), and a resumed run
    skips the batches of its epoch already trained on without loading them."""
    sampler = DistributedSampler(dataset, num_replicas=runtime.world_size, rank=runtime.rank,
                                 shuffle=True, seed=config.seed, drop_last=True)
    per_epoch = len(sampler) // config.batch_size
    if per_epoch == 0:
        raise ValueError(f"dataset of {len(dataset)} samples is smaller than one batch "
                         f"({config.batch_size} per process x {runtime.world_size} processes)")
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        indices = list(sampler)[skip * config.batch_size:]
        yield from DataLoader(dataset, batch_size=config.batch_size, sampler=indices, drop_last=True,
                              num_workers=config.num_workers, pin_memory=runtime.device.type == "cuda")
        epoch, skip = epoch + 1, 0


def _prepare_batch(batch: dict, config: TrainConfig, runtime: _Runtime, step: int):
    images, mask, label = batch["images"], batch["modality_mask"], batch["label"]
    generator = _step_generator(config, runtime.rank, step)
    if config.rgb_only:
        mask = torch.zeros_like(mask)
        mask[:, MODALITY_INDEX["rgb"]] = 1.0
    else:
        if config.modality_dropout > 0:
            mask = modality_dropout(mask, generator, config.modality_dropout)
        if config.rgb_alone > 0:
            mask = rgb_alone(mask, generator, config.rgb_alone)
    depth = batch.get("depth")
    if config.augment:
        images, label, depth = augment(images, mask, label, generator, depth=depth)
    images = images * mask[:, :, None, None, None]
    if config.depth_holes > 0 and depth is not None:
        images = _with_depth_holes(images, mask, depth, config, runtime.rank, step)
    device = runtime.device
    depth = depth.to(device, non_blocking=True) if depth is not None else None
    return (images.to(device, non_blocking=True), mask.to(device, non_blocking=True),
            label.to(device, non_blocking=True), depth)


def _with_depth_holes(images: torch.Tensor, mask: torch.Tensor, depth: torch.Tensor, config: TrainConfig,
                      rank: int, step: int) -> torch.Tensor:
    """Zero the depth slot where a depth camera would have no value (what the encoder gives an
    invalid pixel), in a `depth_holes` share of the samples that have depth; drawn from (seed,
    rank, step) like the modality dropout."""
    from sam_mmseg_ros.data.depth_holes import depth_hole_mask

    rng = np.random.default_rng([config.seed, rank, step, 1])
    slot = MODALITY_INDEX["depth"]
    images = images.clone()
    for i in np.flatnonzero((rng.random(len(images)) < config.depth_holes) & (mask[:, slot] > 0).numpy()):
        holes = torch.from_numpy(depth_hole_mask(depth[i].numpy(), rng))
        images[i, slot, :, holes] = 0.0
    return images


def _build_or_load(config: TrainConfig) -> tuple[nn.Module, dict]:
    """The model to train and, when resuming, the checkpoint's extra state."""
    from sam_mmseg_ros.model import build_model
    from sam_mmseg_ros.model.checkpoint import load_checkpoint, load_sam_weights

    if config.resume:
        return load_checkpoint(config.resume, map_location="cpu")
    if config.init_checkpoint and config.model_overrides:
        from sam_mmseg_ros.model.checkpoint import init_from_checkpoint

        return init_from_checkpoint(config.init_checkpoint, **config.model_overrides), {}
    if config.init_checkpoint:
        model, _ = load_checkpoint(config.init_checkpoint, map_location="cpu")
        return model, {}
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = build_model(config.model, img_size=config.img_size, num_classes=config.num_classes,
                        **config.model_overrides)
    if config.sam_checkpoint:
        load_sam_weights(model, config.sam_checkpoint)
    return model, {}


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and other 1-D parameters (standard for ViTs)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)


def _gather_rng_states(runtime: _Runtime) -> dict:
    """Every rank's torch RNG state (rank 0 writes them all into the checkpoint)."""
    state = {"cpu": torch.get_rng_state()}
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    if not runtime.distributed:
        return {"per_rank": [state]}
    gathered: list = [None] * runtime.world_size
    dist.all_gather_object(gathered, state)
    return {"per_rank": gathered}


def _restore_rng_states(rng: dict, runtime: _Runtime) -> None:
    states = rng.get("per_rank", [])
    if len(states) != runtime.world_size:
        log.warning("checkpoint was written by %d processes, this run has %d: RNG states not restored",
                    len(states), runtime.world_size)
        return
    torch.set_rng_state(states[runtime.rank]["cpu"])
    if runtime.device.type == "cuda" and "cuda" in states[runtime.rank]:
        torch.cuda.set_rng_state(states[runtime.rank]["cuda"], runtime.device)


def _save(path: Path, model: nn.Module, config: TrainConfig, step: int, optimizer, scheduler, scaler,
          rng: dict) -> None:
    """save_checkpoint writes atomically: a crash mid-save leaves the previous checkpoint intact."""
    from sam_mmseg_ros.model.checkpoint import save_checkpoint

    save_checkpoint(path, model, train_config=config.to_dict(), encodings=config.encodings, step=step,
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                    rng=rng)


def data_encodings(config: TrainConfig, dataset: Dataset) -> dict:
    """The encodings the checkpoint records: the dataset's own (a DeliverDataset, a
    SyntheticDataset, under any Subset), which a config may repeat but not contradict."""
    from sam_mmseg_ros.sensors.encodings import resolve

    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    declared = getattr(dataset, "encodings", None)
    if config.encodings is not None and declared is not None and resolve(config.encodings) != resolve(declared):
        raise ValueError(f"the config says the data is encoded {config.encodings}, the dataset says {declared}")
    return resolve(config.encodings if config.encodings is not None else declared)


@torch.no_grad()
def score(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 4,
          amp_dtype: torch.dtype | None = None):
    """(`eval.metrics.ConfusionMatrix`, `eval.metrics.DepthErrors` or None without the depth task)
    of `model` on `dataset`, accumulated with every modality the dataset provides."""
    from sam_mmseg_ros.eval.metrics import ConfusionMatrix, DepthErrors

    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(model.config.num_classes, ignore_index=IGNORE_LABEL)
    depth = DepthErrors() if "depth" in model.config.tasks else None
    for batch in DataLoader(dataset, batch_size=batch_size):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model.forward_logits(batch["images"].to(device), batch["modality_mask"].to(device))
        matrix.update(out["logits"].argmax(dim=1).cpu().numpy(), batch["label"].numpy())
        if depth is not None:
            depth.update(out["log_depth"].float().exp().cpu().numpy(), batch["depth"].numpy())
    model.train(was_training)
    return matrix, depth


def evaluate_miou(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 4,
                  amp_dtype: torch.dtype | None = None) -> dict:
    """{"miou", "pixel_accuracy"} of `model` on `dataset`, plus "depth" (DepthErrors.to_dict) for
    a depth model."""
    matrix, depth = score(model, dataset, device, batch_size, amp_dtype)
    result = {"miou": float(matrix.miou()), "pixel_accuracy": float(matrix.pixel_accuracy())}
    return result if depth is None else {**result, "depth": depth.to_dict()}


def _validate(model: nn.Module, dataset: Dataset, config: TrainConfig, runtime: _Runtime,
              amp_dtype: torch.dtype | None) -> tuple[float, dict | None]:
    """Validation mIoU and depth errors (or None); under DDP every rank scores its share of the
    frames and rank 0 merges."""
    shard = Subset(dataset, range(runtime.rank, len(dataset), runtime.world_size))
    scores = score(model, shard, runtime.device, config.batch_size, amp_dtype)
    if runtime.distributed:
        gathered: list = [None] * runtime.world_size
        dist.all_gather_object(gathered, scores)
        for matrix, depth in gathered[1:]:
            gathered[0][0].merge(matrix)
            if depth is not None:
                gathered[0][1].merge(depth)
        scores = gathered[0]
    matrix, depth = scores
    return float(matrix.miou()), (depth.to_dict() if depth is not None else None)


# ---------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig, dataset: Dataset, val_dataset: Dataset | None = None) -> dict:
    """Train per `config` and return {"step", "losses" (this process's, one per step run),
    "model" (trained, unwrapped), "checkpoint" (final, rank 0), "val_miou" (rank 0, when
    val_dataset is given) and "val_depth" (DepthErrors.to_dict, also, for a depth model)}."""
    config = replace(config, encodings=data_encodings(config, dataset))
    runtime = _start_runtime(config.device)
    try:
        return _train(config, dataset, val_dataset, runtime)
    finally:
        if runtime.owns_process_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, dataset: Dataset, val_dataset: Dataset | None, runtime: _Runtime) -> dict:
    out_dir = Path(config.out_dir)
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    model, state = _build_or_load(config)
    model.set_encoder_trainable(config.train_encoder)
    for p in model.image_encoder.lora_parameters():
        p.requires_grad_(config.train_experts)
    domain = None if config.domain is None else learn_domain(model, config.domain)
    shortcut = rgb_only_shortcut(model, config)
    if shortcut:  # RGB alone always gets router weight 1: the router has nothing to learn
        model.router.requires_grad_(False)
    model.to(runtime.device).train()
    if runtime.is_main:
        trainable, total = model.parameter_counts()
        log.info("training %s (%d of %d parameters) on %s x%d from step %d", model.config.name, trainable,
                 total, runtime.device, runtime.world_size, int(state.get("step", 0)))
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    amp_dtype = _amp_dtype(config, runtime.device)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=amp_dtype == torch.float16)
    start_step = 0
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _restore_rng_states(state["rng"], runtime)
        start_step = int(state["step"])
        log.info("resumed from %s at step %d", config.resume, start_step)
    wrapped: nn.Module = _RGBOnlyForward(model) if shortcut else _LogitsForward(model, domain)
    if runtime.distributed:
        # Every trainable parameter takes part in every step, even with modalities dropped: the
        # experts are stacked per modality in one tensor and absent slots are masked, not
        # skipped; so DDP need not search the graph for unused parameters.
        wrapped = DistributedDataParallel(
            wrapped, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    class_weights = _class_weights(dataset, config)
    if class_weights is not None and runtime.is_main:
        log.info("class-balanced OHEM, weights %s", [round(float(w), 2) for w in class_weights])
    criterion = SegmentationLoss(aux_weight=config.aux_weight, thresh=config.ohem_thresh, class_weights=class_weights,
                                 prototypes=model.prototype_memory, prototype_weight=model.config.prototype_weight)
    depth_criterion = LogDepthL1() if "depth" in model.config.tasks else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    metrics = (out_dir / METRICS_LOG).open("a") if runtime.is_main else None
    progress = tqdm(total=config.steps, initial=start_step, desc="train", dynamic_ncols=True,
                    disable=not (runtime.is_main and config.progress))
    losses: list[float] = []
    started = time.monotonic()
    step = start_step
    try:
        batches = _batches(dataset, config, runtime, start_step) if start_step < config.steps else iter(())
        for batch in batches:
            images, mask, label, depth = _prepare_batch(batch, config, runtime, step)
            with torch.autocast(runtime.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = wrapped(images, mask)
            parts = criterion(outputs, label)
            if depth_criterion is not None:
                if depth is None:
                    raise ValueError("the model has the depth task but the dataset gives no depth")
                parts["depth"] = depth_criterion(outputs["log_depth"], depth)
                parts["loss"] = parts["loss"] + config.depth_weight * parts["depth"]
                parts["depth"] = parts["depth"].detach()
            scaler.scale(parts["loss"]).backward()
            scaler.unscale_(optimizer)
            grad_norm = (torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                         if config.grad_clip > 0 else torch.tensor(float("nan")))
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss = float(parts["loss"].detach())
            if not math.isfinite(loss) and amp_dtype != torch.float16:  # fp16: the scaler skips the step
                raise FloatingPointError(f"loss is {loss} at step {step}")
            losses.append(loss)
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if step % config.log_every == 0 or step == config.steps:
                names = ["loss", "main", "aux"] + (["depth"] if "depth" in parts else [])
                reduced = torch.stack([parts[n].detach() for n in names]).float()
                if runtime.distributed:
                    dist.all_reduce(reduced)
                    reduced /= runtime.world_size
                if metrics is not None:
                    record = {"step": step, **{"loss" if n == "loss" else f"loss_{n}": v.item()
                                               for n, v in zip(names, reduced, strict=True)},
                              "lr": lr, "grad_norm": float(grad_norm), "time": round(time.monotonic() - started, 3)}
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
            if step % config.checkpoint_every == 0 or step == config.steps:
                rng = _gather_rng_states(runtime)
                if runtime.is_main:
                    _save(out_dir / LAST_CHECKPOINT, model, config, step, optimizer, scheduler, scaler, rng)
            if step >= config.steps:
                break
    finally:
        progress.close()
        if metrics is not None:
            metrics.close()
    result: dict = {"step": step, "losses": losses, "model": model}
    if runtime.is_main:
        final = out_dir / FINAL_CHECKPOINT
        last = out_dir / LAST_CHECKPOINT
        if last.exists():
            shutil.copyfile(last, final)
        result["checkpoint"] = str(final)
    if val_dataset is not None:
        miou, depth = _validate(model, val_dataset, config, runtime, amp_dtype)
        if runtime.is_main:
            result["val_miou"] = miou
            log.info("validation mIoU after %d steps: %.4f", step, miou)
            record = {"step": step, "val_miou": miou}
            if depth is not None:
                result["val_depth"] = record["val_depth"] = depth
                log.info("validation depth: %s", depth)
            with (out_dir / METRICS_LOG).open("a") as f:
                f.write(json.dumps(record) + "\n")
    if runtime.distributed:
        dist.barrier()
    return result


# ---------------------------------------------------------------------------------------------
# Presets: multi-stage recipes


@dataclass(frozen=True)
class Stage:
    name: str
    overrides: dict  # TrainConfig fields


@dataclass(frozen=True)
class Preset:
    description: str
    base: dict  # TrainConfig fields shared by the stages
    stages: tuple[Stage, ...]
    dataset: dict  # dataset arguments (see `_datasets`), e.g. synthetic frame counts


PRESETS: dict[str, Preset] = {
    "synthetic-tiny": Preset(
        description="the model shipped with the package: tiny SAM-architecture encoder pretrained on "
                    "synthetic RGB (standing in for SAM's pretraining), then trained on with the MoE-LoRA "
                    "experts, the joint per-token router and the heads on all modalities (too small to stay "
                    "frozen as MLE-SAM keeps SAM's), modality dropout and RGB alone in 15 % of the samples; "
                    "augmented, class-balanced OHEM, square and wide cameras squeezed into a 256x256 input",
        base={"model": "tiny", "img_size": 256, "batch_size": 8, "warmup_steps": 50, "augment": True,
              "class_balance": 0.5, "model_overrides": {"router": "spatial", "fusion_mean": "learned"}},
        stages=(
            Stage("pretrain", {"steps": 900, "lr": 1e-3, "train_encoder": True, "train_experts": False,
                               "rgb_only": True, "modality_dropout": 0.0}),
            Stage("experts", {"steps": 1000, "lr": 1e-3, "train_encoder": True, "train_experts": True,
                              "rgb_only": False, "modality_dropout": 0.3, "rgb_alone": 0.15,
                              "model_overrides": {"router": "spatial_joint", "fusion_mean": "none"}}),
        ),
        dataset={"dataset": "synthetic", "train_frames": 1536, "val_frames": 64, "frames_per_sequence": 4,
                 "render_sizes": [[256, 256], [240, 320], [180, 320]]},
    ),
    "synthetic-tiny-talora": Preset(
        description="semantic labels and dense metric depth from one model: the shipped model's "
                    "encoder and experts with task-aware (TA-LoRA) adapters and a depth decoder, both "
                    "tasks trained together with modality dropout (`--adapters experts --tasks "
                    "semantic` trains the single-task model with the same budget); the depth camera's input "
                    "gets holes in half the samples, so the model learns to fill them",
        base={"model": "tiny", "img_size": 256, "batch_size": 8, "warmup_steps": 50,  # the shipped model's size
              "init_checkpoint": str(DEFAULT_CHECKPOINT),
              "model_overrides": {"adapters": "ta_lora", "tasks": ["semantic", "depth"]}},
        stages=(Stage("tasks", {"steps": 600, "lr": 5e-4, "train_encoder": False, "train_experts": True,
                                "rgb_only": False, "modality_dropout": 0.3, "depth_holes": 0.5}),),
        dataset={"dataset": "synthetic", "train_frames": 1024, "val_frames": 64},
    ),
}


def run_preset(name: str, overrides: dict, dataset: Dataset, val_dataset: Dataset | None = None,
               resume: bool = False, until: str | None = None) -> dict:
    """Run a preset's stages in order under `overrides["out_dir"]/<stage>/`; each stage starts
    from the previous stage's final weights, and the last stage's checkpoint is copied to
    `<out_dir>/model.pt`. With `resume`, finished stages are skipped and an interrupted one
    continues from its last checkpoint. `overrides` (TrainConfig fields) apply to every stage.
    `until` names the last stage to run (e.g. the pretrained encoder and heads alone)."""
    preset = PRESETS[name]
    stages = preset.stages
    if until is not None:
        names = [stage.name for stage in stages]
        if until not in names:
            raise ValueError(f"preset {name} has no stage {until!r} (stages: {names})")
        stages = stages[:names.index(until) + 1]
    out_dir = Path(overrides.get("out_dir", TrainConfig.out_dir))
    previous: str | None = None
    result: dict = {}
    for index, stage in enumerate(stages):
        fields_ = {**preset.base, **stage.overrides, **overrides, "out_dir": str(out_dir / stage.name)}
        config = TrainConfig.from_dict(fields_)
        if previous is not None:
            config = replace(config, init_checkpoint=previous, sam_checkpoint=None)
        last = Path(config.out_dir) / LAST_CHECKPOINT
        if resume and last.exists():
            config = replace(config, resume=str(last))
        log.info("preset %s, stage %d/%d: %s", name, index + 1, len(stages), stage.name)
        is_last = index == len(stages) - 1
        result = train(config, dataset, val_dataset if is_last else None)
        previous = str(Path(config.out_dir) / FINAL_CHECKPOINT)
    if "checkpoint" in result:
        shutil.copyfile(result["checkpoint"], out_dir / FINAL_CHECKPOINT)
        result["checkpoint"] = str(out_dir / FINAL_CHECKPOINT)
    return result
