"""`sam-mmseg train --continual sun,cloud,rain,fog,night`: learn domains one after another.

A vehicle meets its domains in sequence and cannot keep all the data of the earlier ones. Three
ways to learn them, with the same steps per domain (the first domain, which the vehicle's first
model is trained on, may get more: `first_steps`), evaluated after every domain on every domain
learned so far (the accuracy matrix of continual learning):

- `moda` (CoSAM's Mixture of Domain Adapters, `model/domain_adapters.py`): each domain gets an
  adapter of its own, started as a copy of the previous domain's (what was learned carries over);
  the shared parts (experts, router, heads) learn with the first domain and then freeze, so
  learning a domain changes nothing that an earlier domain uses. After each domain the selector
  is trained anew, as in CoSAM, on a replay buffer of `buffer_size` (10) camera images per domain
  learned so far; the buffer travels in the checkpoint, so adding a domain later is one command
  (`--init-checkpoint` the MoDA checkpoint, `--continual` the new domains).
- `naive`: one plain model fine-tuned on each domain in turn (the forgetting baseline).
- `joint`: one plain model trained once on all domains mixed, for the sum of those steps (the
  upper reference: it sees every domain's data at once, which a vehicle cannot).

Every run writes `<out>/model.pt` (for moda: every adapter, the selector and the replay buffer)
and `<out>/continual.json` (the accuracy matrix, selector accuracy, timings, the command's
settings), which `eval/continual.py` turns into the report tables.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from sam_mmseg_ros.contracts import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD, MODALITY_INDEX
from sam_mmseg_ros.eval.continual import RESULTS_FILE
from sam_mmseg_ros.eval.metrics import ConfusionMatrix
from sam_mmseg_ros.model import MoELoRASAM
from sam_mmseg_ros.model.checkpoint import load_checkpoint, save_checkpoint
from sam_mmseg_ros.model.domain_adapters import DomainSelector
from sam_mmseg_ros.train import FINAL_CHECKPOINT, TrainConfig, data_encodings, train

log = logging.getLogger(__name__)

METHODS = ("moda", "naive", "joint")
RGB = MODALITY_INDEX["rgb"]


@dataclass
class ContinualConfig:
    """A continual run: the domains to learn, in order, and how."""

    domains: tuple[str, ...]
    method: str = "moda"
    steps: int = 150  # optimizer steps per domain (joint: their sum, once)
    first_steps: int | None = None  # steps of the first domain learned in this run; None: `steps`
    buffer_size: int = 10  # replay frames kept per domain for the selector (CoSAM: 10)
    selector_epochs: int = 10  # passes over the replay buffer (CoSAM: 10)
    selector_lr: float = 1e-3
    selector_batch: int = 4
    init_checkpoint: str | None = None  # plain model to start from, or a moda model to extend
    out_dir: str = "continual_output"
    train: dict = field(default_factory=dict)  # TrainConfig fields of every domain's run

    def __post_init__(self):
        self.domains = tuple(self.domains)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ValueError(f"--continual needs distinct domain names, got {list(self.domains)}")
        if self.steps < 1 or self.buffer_size < 1 or self.selector_epochs < 1 or (self.first_steps or 1) < 1:
            raise ValueError("steps, first_steps, buffer_size and selector_epochs must be >= 1")

    def domain_steps(self, position: int) -> int:
        """Steps for the domain at `position` in this run's order."""
        return self.first_steps if position == 0 and self.first_steps is not None else self.steps


# ---------------------------------------------------------------------------------------------
# The model side: growing the pool, the replay buffer, the selector


def add_domains(model: MoELoRASAM, names: tuple[str, ...]) -> MoELoRASAM:
    """A moda model with `names` appended to `model`'s domains (a plain model becomes a moda model
    with those domains). Every stored weight is kept; each new adapter starts as a copy of the last
    adapter before it (the first ever keeps its init: zero update); the selector's classifier
    grows and is retrained with `train_selector`."""
    config = model.config.with_overrides(adapters="moda", domains=(*model.config.domains, *names))
    grown = MoELoRASAM(config)
    own = grown.state_dict()
    grown.load_state_dict({k: v for k, v in model.state_dict().items() if own[k].shape == v.shape}, strict=False)
    with torch.no_grad():
        adapters = grown.domains.adapters
        for index in range(len(model.config.domains), len(adapters)):
            if index > 0:
                for new, old in zip(adapters[index].parameters(), adapters[index - 1].parameters(), strict=True):
                    new.copy_(old)
    return grown.to(next(model.parameters()).device)


def rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """The camera slot of model inputs [N, M, 3, H, W] back to uint8 [N, 3, H, W] (what the replay
    buffer keeps: a quarter of the frame, and exact to the 8 bits the camera gave)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images[:, RGB] * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)


def rgb_inputs(rgb: torch.Tensor, num_modalities: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, 3, H, W] camera images -> (images [N, M, 3, H, W], modality_mask [N, M]) with only
    the RGB slot present, normalized as the node does."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = torch.zeros(rgb.shape[0], num_modalities, *rgb.shape[1:])
    images[:, RGB] = (rgb.float() / 255.0 - mean) / std
    mask = torch.zeros(rgb.shape[0], num_modalities)
    mask[:, RGB] = 1.0
    return images, mask


def sample_buffer(dataset: Dataset, size: int, seed: int) -> torch.Tensor:
    """`size` frames of `dataset` drawn with `seed`: their camera images, uint8 [size, 3, H, W]."""
    if len(dataset) < size:
        raise ValueError(f"a replay buffer of {size} frames needs at least that many training frames, "
                         f"got {len(dataset)}")
    picked = sorted(random.Random(seed).sample(range(len(dataset)), size))
    return rgb_uint8(torch.stack([dataset[i]["images"] for i in picked]))


def domain_logits(model: MoELoRASAM, images: torch.Tensor) -> torch.Tensor:
    """Selector logits [B, D] for model inputs [B, M, 3, H, W]: the encoder pass alone, no heads."""
    with model.domains.frames(images.shape[0]) as state:
        model.image_encoder(images.flatten(0, 1))
    return state.logits


def train_selector(model: MoELoRASAM, replay: dict[str, torch.Tensor], epochs: int = 10, lr: float = 1e-3,
                   batch_size: int = 4, seed: int = 0) -> list[float]:
    """Train the selector from scratch (new GAT tokens, norm and classifier, as CoSAM does after
    each task) on the replay buffers of every domain of `model`, with random horizontal flips.
    Nothing else changes. Returns the loss of every step."""
    pool = model.domains
    missing = [name for name in pool.names if name not in replay]
    if missing:
        raise ValueError(f"no replay frames for domains {missing}: the selector cannot learn them")
    device = next(model.parameters()).device
    config = model.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pool.selector = DomainSelector(config.embed_dim, config.domain_tokens, len(pool.names)).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in pool.selector.parameters():
        p.requires_grad_(True)
    rgb = torch.cat([replay[name] for name in pool.names])
    labels = torch.cat([torch.full((len(replay[name]),), i) for i, name in enumerate(pool.names)])
    optimizer = torch.optim.AdamW(pool.selector.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    was_training = model.training
    model.eval()  # nothing in the model behaves differently in training; eval says no other part learns
    try:
        for _ in range(epochs):
            order = torch.randperm(len(rgb), generator=generator)
            for start in range(0, len(order), batch_size):
                pick = order[start:start + batch_size]
                batch = rgb[pick]
                flip = torch.rand(len(pick), generator=generator) < 0.5
                batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
                images, _ = rgb_inputs(batch, config.num_modalities)
                loss = F.cross_entropy(domain_logits(model, images.to(device)), labels[pick].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
    finally:
        for p in pool.selector.parameters():
            p.requires_grad_(False)
        model.train(was_training)
    return losses


# ---------------------------------------------------------------------------------------------
# Evaluation after each domain


@torch.no_grad()
def evaluate_domain(model: MoELoRASAM, dataset: Dataset, domain_index: int | None = None,
                    batch_size: int = 8) -> dict:
    """{"miou"} of `model` on one domain's frames (every modality the data has), plus for a moda
    model {"selector_accuracy", "oracle_miou"}: how often the selector named this domain
    (`domain_index`), and the mIoU had it always done so."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    matrix = ConfusionMatrix(model.config.num_classes, ignore_index=IGNORE_LABEL)
    oracle = ConfusionMatrix(model.config.num_classes, ignore_index=IGNORE_LABEL)
    hits = frames = 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        images, mask = batch["images"].to(device), batch["modality_mask"].to(device)
        out = model.forward_logits(images, mask)
        matrix.update(out["logits"].argmax(dim=1).cpu().numpy(), batch["label"].numpy())
        if model.domains is not None:
            hits += int((out["domain"] == domain_index).sum())
            frames += len(images)
            forced = torch.full((len(images),), domain_index, dtype=torch.long, device=device)
            logits = model.forward_logits(images, mask, domain=forced)["logits"]
            oracle.update(logits.argmax(dim=1).cpu().numpy(), batch["label"].numpy())
    model.train(was_training)
    result = {"miou": float(matrix.miou())}
    if model.domains is not None:
        result.update(selector_accuracy=hits / max(frames, 1), oracle_miou=float(oracle.miou()))
    return result


def evaluate_row(model: MoELoRASAM, val_sets: dict[str, Dataset], names: tuple[str, ...]) -> dict[str, dict]:
    """`evaluate_domain` on each of `names` (the domains learned so far)."""
    pool = model.domains
    return {name: evaluate_domain(model, val_sets[name], pool.index(name) if pool is not None else None)
            for name in names}


# ---------------------------------------------------------------------------------------------
# The run


def _train_config(config: ContinualConfig, stage: str, steps: int, init: str | None, domain: str | None) -> TrainConfig:
    fields_ = {**config.train, "steps": steps, "init_checkpoint": init, "domain": domain,
               "out_dir": str(Path(config.out_dir) / stage)}
    if init is not None:
        fields_["sam_checkpoint"] = None
    return TrainConfig.from_dict(fields_)


def _load_start(config: ContinualConfig) -> tuple[MoELoRASAM | None, dict]:
    if config.init_checkpoint is None:
        return None, {}
    model, extra = load_checkpoint(config.init_checkpoint)
    if model.config.adapters == "moda" and config.method != "moda":
        raise ValueError(f"{config.init_checkpoint} is a moda model; the {config.method} baseline starts "
                         "from a plain one")
    known = set(model.config.domains) & set(config.domains)
    if known:
        raise ValueError(f"{config.init_checkpoint} has already learned {sorted(known)}")
    if model.config.domains and not set(model.config.domains) <= set(extra.get("replay", {})):
        raise ValueError(f"{config.init_checkpoint} has no replay buffer for all of its domains: the "
                         "selector cannot be retrained with a new domain")
    return model, extra


def run_continual(config: ContinualConfig, train_sets: dict[str, Dataset], val_sets: dict[str, Dataset]) -> dict:
    """Learn `config.domains` in order (`val_sets` must hold every domain of the final model, the
    init checkpoint's too); returns and writes the results (see the module docstring)."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start, extra = _load_start(config)
    history = extra.get("continual", {})
    rows: list[dict] = list(history.get("rows", []))
    learned: tuple[str, ...] = tuple(start.config.domains) if start is not None else ()
    replay: dict[str, torch.Tensor] = dict(extra.get("replay", {}))
    init = config.init_checkpoint
    model = start
    seed = int(config.train.get("seed", 0))
    # Recorded in every checkpoint, as `train` does: the node encodes its inputs the same way.
    encodings = data_encodings(TrainConfig.from_dict(config.train), train_sets[config.domains[0]])
    if config.method == "joint":
        stage = "joint"
        started = time.monotonic()
        mixed = ConcatDataset([train_sets[name] for name in config.domains])
        budget = sum(config.domain_steps(i) for i in range(len(config.domains)))
        result = train(_train_config(config, stage, budget, init, None), mixed)
        model = result["model"]
        learned = config.domains
        rows.append({"after": config.domains[-1], "steps": budget,
                     "seconds": round(time.monotonic() - started, 1), "domains": evaluate_row(model, val_sets, learned)})
    for position, name in enumerate(config.domains if config.method != "joint" else ()):
        stage = f"{len(learned) + 1:02d}_{name}"
        started = time.monotonic()
        domain = None
        if config.method == "moda":
            if model is None:
                torch.manual_seed(seed)
                model = _fresh_model(config)
            model = add_domains(model, (name,))
            init = save_checkpoint(out / stage / "init.pt", model, trained=False, encodings=encodings)
            domain = name
        result = train(_train_config(config, stage, config.domain_steps(position), init, domain), train_sets[name])
        model = result["model"]
        learned = (*learned, name)
        if config.method == "moda":
            replay[name] = sample_buffer(train_sets[name], config.buffer_size, seed + position)
            train_selector(model, replay, config.selector_epochs, config.selector_lr, config.selector_batch, seed)
        init = save_checkpoint(out / stage / "continual.pt", model, trained=True, encodings=encodings,
                               **({"replay": replay} if config.method == "moda" else {}))
        rows.append({"after": name, "steps": config.domain_steps(position),
                     "seconds": round(time.monotonic() - started, 1),
                     "domains": evaluate_row(model, val_sets, learned)})
        log.info("after %s: %s", name, {k: round(v["miou"] * 100, 1) for k, v in rows[-1]["domains"].items()})
    runs = [*history.get("runs", []), {**asdict(replace(config, train={})), "train": config.train}]
    results = {"method": config.method, "domains": list(learned), "rows": rows, "runs": runs}
    final = save_checkpoint(out / FINAL_CHECKPOINT, model, trained=True, continual=_plain(results), encodings=encodings,
                            **({"replay": replay} if config.method == "moda" else {}))
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    log.info("%s: %s and %s", config.method, final, out / RESULTS_FILE)
    return {**results, "checkpoint": str(final), "model": model}


def _fresh_model(config: ContinualConfig) -> MoELoRASAM:
    """The plain model a run without --init-checkpoint starts from (as `train` builds it)."""
    from sam_mmseg_ros.model import build_model
    from sam_mmseg_ros.model.checkpoint import load_sam_weights

    fields_ = TrainConfig.from_dict(config.train)
    model = build_model(fields_.model, img_size=fields_.img_size, num_classes=fields_.num_classes,
                        **fields_.model_overrides)
    if fields_.sam_checkpoint:
        load_sam_weights(model, fields_.sam_checkpoint)
    return model


def _plain(value):
    """JSON-like values only (what a weights_only checkpoint may hold)."""
    return json.loads(json.dumps(value))


# ---------------------------------------------------------------------------------------------
# Data


def domain_datasets(kind: str, domains: tuple[str, ...], size: tuple[int, int], *, train_frames: int = 128,
                    val_frames: int = 32, seed: int = 0, data_root: str | None = None, cache_dir: str | None = None,
                    encodings: str | None = None, cases: list[str] | None = None,
                    ) -> tuple[dict[str, Dataset], dict[str, Dataset]]:
    """Per-domain training and validation sets: a synthetic weather condition (the same streets
    under each, other streets for validation; rendered frames kept in `cache_dir`), or a DELIVER
    condition (its train and val splits, `cases`). `encodings`: as `train --encodings`."""
    if kind == "synthetic":
        from sam_mmseg_ros.data.synthetic import SyntheticDataset
        from sam_mmseg_ros.sensors.encodings import PRESETS

        def frames(start: int, count: int, domain: str) -> Dataset:
            return SyntheticDataset(seed=start, num_frames=count, size=size, conditions=(domain,), cache_dir=cache_dir,
                                    encodings=PRESETS[encodings or "native"])

        return ({d: frames(seed, train_frames, d) for d in domains},
                {d: frames(seed + 1_000_000, val_frames, d) for d in domains})
    from sam_mmseg_ros.data.deliver import DeliverDataset

    if not data_root:
        raise SystemExit("--dataset deliver needs --data-root")
    return ({d: DeliverDataset(data_root, "train", [d], size, cases=cases, encodings=encodings or "deliver")
             for d in domains},
            {d: DeliverDataset(data_root, "val", [d], size, cases=cases, encodings=encodings or "deliver")
             for d in domains})


def run(args, overrides: dict) -> int:
    """The CLI's continual mode (train.py hands over its parsed arguments and TrainConfig fields)."""
    domains = tuple(d.strip() for d in args.continual.split(",") if d.strip())
    train_fields = {k: v for k, v in overrides.items() if k not in ("init_checkpoint", "out_dir", "steps")}
    config = ContinualConfig(domains=domains, method=args.continual_method, steps=overrides.get("steps", 150),
                             first_steps=args.first_steps,
                             buffer_size=args.buffer_size, init_checkpoint=overrides.get("init_checkpoint"),
                             out_dir=overrides.get("out_dir", "continual_output"), train=train_fields)
    img_size = int(train_fields.get("img_size") or TrainConfig.img_size)
    known = ()
    if config.init_checkpoint:
        start, _ = load_checkpoint(config.init_checkpoint)
        known, img_size = tuple(start.config.domains), start.config.img_size
    kind = args.dataset or "synthetic"
    if args.val_frames is not None and args.val_frames < 1:
        raise SystemExit("--continual evaluates every domain after each one: --val-frames must be >= 1")
    train_sets, val_sets = domain_datasets(
        kind, (*known, *domains), (img_size, img_size), train_frames=args.train_frames or 128,
        val_frames=args.val_frames if args.val_frames is not None else 32, seed=args.seed or 0,
        data_root=args.data_root, cache_dir=args.data_cache, encodings=args.encodings, cases=args.cases)
    results = run_continual(config, train_sets, val_sets)
    last = results["rows"][-1]["domains"]
    log.info("final mIoU per domain: %s", {k: round(v["miou"] * 100, 1) for k, v in last.items()})
    return 0
