"""Model configuration: one plain dataclass that fully describes the architecture, so a
checkpoint stores it as a dict and rebuilds the exact model without pickled classes."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, replace

from sam_mmseg_ros.contracts import IGNORE_LABEL, MODALITIES

ADAPTERS = ("experts", "ta_lora")
"""Low-rank updates of the frozen encoder's q and v: one LoRA expert per modality (MLE-SAM), or
those experts with task-shared and task-specific factors of one low-rank tensor (TA-LoRA,
`model/task_lora.py`), which gives every task its own encoder features."""
TASKS = ("semantic", "depth")
"""What a model predicts: semantic labels always (first), dense metric depth optionally."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a MoE-LoRA SAM. Encoder fields mirror Meta's `ImageEncoderViT`
    (official checkpoints are ViT-B/L/H at img_size 1024); the rest are ours."""

    name: str
    img_size: int
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int
    aux_block_indexes: tuple[int, ...]
    patch_size: int = 16
    out_chans: int = 256
    mlp_ratio: float = 4.0
    lora_rank: int = 32
    lora_alpha: float = 32.0
    num_classes: int = 25
    num_modalities: int = 4
    top_k: int | None = None
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    adapters: str = "experts"  # one of ADAPTERS
    tasks: tuple[str, ...] = ("semantic",)  # TASKS in this order, semantic first

    def __post_init__(self) -> None:
        # Lists coming from JSON/YAML/checkpoints become tuples so the config stays hashable.
        object.__setattr__(self, "global_attn_indexes", tuple(int(i) for i in self.global_attn_indexes))
        object.__setattr__(self, "aux_block_indexes", tuple(int(i) for i in self.aux_block_indexes))
        object.__setattr__(self, "tasks", tuple(str(t) for t in self.tasks))
        problems = []
        if self.adapters not in ADAPTERS:
            problems.append(f"adapters must be one of {ADAPTERS}, got {self.adapters!r}")
        if not self.tasks or self.tasks[0] != "semantic" or len(set(self.tasks)) != len(self.tasks) \
                or not set(self.tasks) <= set(TASKS):
            problems.append(f"tasks must start with 'semantic' and name each of {TASKS} at most once, "
                            f"got {list(self.tasks)}")
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if any(not 0 <= i < self.depth for i in self.global_attn_indexes + self.aux_block_indexes):
            problems.append(f"block indexes must lie in [0, {self.depth})")
        if not 1 <= len(self.aux_block_indexes) <= 4:
            problems.append("aux_block_indexes needs 1 to 4 blocks (one per pyramid level)")
        if self.out_chans % 16 or (self.out_chans // 2) % self.decoder_heads:
            problems.append(f"out_chans {self.out_chans} must be a multiple of 16 and of 2*decoder_heads")
        if self.lora_rank < 1 or self.num_modalities < 1:
            problems.append("lora_rank and num_modalities must be >= 1")
        if self.top_k is not None and not 1 <= self.top_k <= self.num_modalities:
            problems.append(f"top_k must be None or in [1, {self.num_modalities}]")
        if problems:
            raise ValueError(f"invalid ModelConfig {self.name!r}: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """Plain types only (lists, ints, floats, str, None), safe for weights_only checkpoints."""
        d = asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        d["aux_block_indexes"] = list(self.aux_block_indexes)
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return dataclass_from_dict(cls, data)

    def with_overrides(self, **overrides) -> ModelConfig:
        return replace(self, **overrides)


def dataclass_from_dict(cls, data: dict):
    """cls(**data), naming the keys that are not fields (a foreign or newer file) instead of a bare
    TypeError."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return cls(**data)


MODEL_CONFIGS: dict[str, ModelConfig] = {
    "vit_b": ModelConfig(
        name="vit_b", img_size=1024, embed_dim=768, depth=12, num_heads=12,
        global_attn_indexes=(2, 5, 8, 11), window_size=14, aux_block_indexes=(2, 5, 8, 11),
    ),
    "vit_l": ModelConfig(
        name="vit_l", img_size=1024, embed_dim=1024, depth=24, num_heads=16,
        global_attn_indexes=(5, 11, 17, 23), window_size=14, aux_block_indexes=(5, 11, 17, 23),
    ),
    "vit_h": ModelConfig(
        name="vit_h", img_size=1024, embed_dim=1280, depth=32, num_heads=16,
        global_attn_indexes=(7, 15, 23, 31), window_size=14, aux_block_indexes=(7, 15, 23, 31),
    ),
    # CPU-sized model for tests, the demo and the model shipped with the package.
    "tiny": ModelConfig(
        name="tiny", img_size=256, embed_dim=128, depth=4, num_heads=4,
        global_attn_indexes=(1, 3), window_size=8, aux_block_indexes=(0, 1, 2, 3),
        out_chans=128, lora_rank=8, lora_alpha=8.0, decoder_heads=4, decoder_mlp_dim=512,
    ),
}
"""Official SAM encoder shapes; names match `segment_anything.sam_model_registry`."""
MODEL_CONFIGS["tiny_talora"] = replace(MODEL_CONFIGS["tiny"], name="tiny_talora", adapters="ta_lora",
                                       tasks=("semantic", "depth"))
"""The CPU-sized multi-task model: semantic labels and dense metric depth from task-aware adapters."""


OFFICIAL_MODELS = ("vit_b", "vit_l", "vit_h")
"""Registry entries with official SAM checkpoints: the largest of them bounds what a stored
config may ask for."""

_LIMITED_FIELDS = ("img_size", "embed_dim", "depth", "num_heads", "window_size", "patch_size", "mlp_ratio",
                   "out_chans", "lora_rank", "decoder_depth", "decoder_heads", "decoder_mlp_dim")

CONFIG_LIMITS: dict[str, float] = {
    **{name: max(getattr(MODEL_CONFIGS[m], name) for m in OFFICIAL_MODELS) for name in _LIMITED_FIELDS},
    "num_classes": IGNORE_LABEL,  # labels travel as mono8 and 255 means "ignore"
    "num_modalities": len(MODALITIES),
}
"""Upper bound of every size a config from a file may declare: ViT-H's encoder, SAM's decoder,
the paper's LoRA rank. A checkpoint asking for more (embed_dim 8192, depth 64: about 200 GB) is
refused before anything is allocated."""
MAX_TOKENS_PER_SIDE = max(MODEL_CONFIGS[m].img_size // MODEL_CONFIGS[m].patch_size for m in OFFICIAL_MODELS)
"""Patch grid side of the official models (64): attention cost grows with its fourth power."""
MAX_LORA_ALPHA = 1e6
"""LoRA scale numerator: any real value is far below; larger ones only overflow fp16."""

_FIELD_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "tuple[int, ...]": (list, tuple),
                "tuple[str, ...]": (list, tuple), "int | None": (int, type(None))}


def config_from_untrusted(data: object) -> ModelConfig:
    """The ModelConfig a file declares, checked before anything is built: plain types, every
    field known, consistent shapes, a registry name, and sizes within CONFIG_LIMITS. Raises
    ValueError listing every problem."""
    if not isinstance(data, dict):
        raise ValueError(f"the model config is a {type(data).__name__}, not a dict")
    declared = {f.name: f.type for f in fields(ModelConfig)}
    unknown = [key for key in data if key not in declared]
    problems = [f"{len(unknown)} unknown fields ({', '.join(map(_show, unknown[:5]))})"] if unknown else []
    problems += [f"field {f.name!r} is missing" for f in fields(ModelConfig)
                 if f.default is MISSING and f.name not in data]
    for name, kind in declared.items():
        if name not in data:
            continue
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, _FIELD_TYPES[kind]):
            problems.append(f"{name} is a {type(value).__name__}, expected {kind}")
        elif kind == "tuple[int, ...]" and not all(type(i) is int for i in value):
            problems.append(f"{name} must hold integers only")
        elif kind == "tuple[str, ...]" and not (len(value) <= len(TASKS) and all(type(i) is str for i in value)):
            problems.append(f"{name} must hold at most {len(TASKS)} strings")
    if problems:
        raise ValueError("; ".join(problems))
    if data.get("name") not in MODEL_CONFIGS:
        raise ValueError(f"name {_show(data.get('name'))} is not a model of this version ({sorted(MODEL_CONFIGS)})")
    problems += _limit_problems(data)
    if problems:
        raise ValueError("; ".join(problems))
    return ModelConfig.from_dict(data)


def _limit_problems(data: dict) -> list[str]:
    """Sizes outside (0, CONFIG_LIMITS] (checked on the raw dict: nothing is derived from an
    absurd value first)."""
    values = {**{f.name: f.default for f in fields(ModelConfig) if f.default is not MISSING}, **data}
    problems = []
    for name, limit in CONFIG_LIMITS.items():
        if not 0 < values[name] <= limit:  # False for NaN and inf too
            problems.append(f"{name} {_show(values[name])} is outside (0, {limit}]")
    if not 0 < values["lora_alpha"] < MAX_LORA_ALPHA:
        problems.append(f"lora_alpha {_show(values['lora_alpha'])} is outside (0, {MAX_LORA_ALPHA:g})")
    if not problems and values["img_size"] // values["patch_size"] > MAX_TOKENS_PER_SIDE:
        problems.append(f"img_size {values['img_size']} / patch_size {values['patch_size']} gives more than "
                        f"{MAX_TOKENS_PER_SIDE} tokens per side")
    for name in ("global_attn_indexes", "aux_block_indexes"):
        if len(values[name]) > values["depth"]:
            problems.append(f"{name} lists {len(values[name])} blocks, the model has {values['depth']}")
    return problems


def _show(value) -> str:
    """A value from a file, short enough for a message (an int of 10^5000 has no str())."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"(a {value.bit_length()}-bit integer)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
