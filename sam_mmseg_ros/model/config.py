"""Model configuration: one plain dataclass that fully describes the architecture, so a
checkpoint stores it as a dict and rebuilds the exact model without pickled classes."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, replace

from sam_mmseg_ros.contracts import IGNORE_LABEL, MODALITIES

ADAPTERS = ("experts", "ta_lora", "moda")
"""Low-rank updates of the frozen encoder's q and v: one LoRA expert per modality (MLE-SAM); those
experts with task-shared and task-specific factors of one low-rank tensor (TA-LoRA,
`model/task_lora.py`), which gives every task its own encoder features; or the experts plus a pool
of domain adapters, one per learned domain, chosen per frame inside the graph by a selector
(CoSAM's MoDA, `model/domain_adapters.py`)."""
MAX_DOMAINS = 32
"""Domain adapters a model may hold: each is a full set of low-rank updates, all kept in the graph."""
MAX_DOMAIN_TOKENS = 64
"""Learned selector tokens (GAT) a model may hold; CoSAM uses 10."""
TASKS = ("semantic", "depth")
"""What a model predicts: semantic labels always (first), dense metric depth optionally."""
BACKBONES = ("vit", "hiera")
"""SAM's ViT (segment_anything) or SAM2's Hiera with its FPN neck (sam2)."""
FUSIONS = ("router", "memory")
"""MLE-SAM's router over per-modality features, or MemorySAM's memory sequence over modalities."""
HIERA_STAGES = 4
"""SAM2's Hiera always has four stages (strides 4, 8, 16, 32; three query-pooling steps)."""
_TUPLE_FIELDS = ("global_attn_indexes", "aux_block_indexes", "stages", "window_spec", "window_pos_embed_bkg")

ROUTERS = ("sigmoid", "softmax", "spatial", "spatial_joint")
"""Router kinds (model.router): sigmoid is MLE-SAM's pooled sigmoid gate."""
FUSION_MEANS = ("plain", "learned", "none")
"""Mean term of the fusion (model.fusion): plain is MLE-SAM's."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a multi-modal SAM: one composition along independent axes (DESIGN.md §4):
    backbone (`vit` | `hiera`), fusion (`router` | `memory`), adapters (LoRA experts per
    modality, or one shared) and heads. ViT fields mirror Meta's `ImageEncoderViT` (official
    checkpoints are ViT-B/L/H at img_size 1024), Hiera fields SAM2's `Hiera` (official: T, S,
    B+, L at 1024); the rest are ours. Fields of the other backbone are ignored."""

    name: str
    img_size: int
    embed_dim: int  # ViT width, or Hiera's first-stage width (doubled at each stage)
    num_heads: int  # ViT heads, or Hiera's first-stage heads (doubled at each stage)
    depth: int  # blocks (Hiera: sum of stages)
    global_attn_indexes: tuple[int, ...]  # blocks with global attention (others windowed)
    backbone: str = "vit"
    fusion: str = "router"
    # SAM ViT
    window_size: int = 14
    aux_block_indexes: tuple[int, ...] = ()  # blocks whose tokens feed the auxiliary head
    patch_size: int = 16
    # SAM2 Hiera
    stages: tuple[int, ...] = ()  # blocks per stage
    window_spec: tuple[int, ...] = ()  # window per stage
    window_pos_embed_bkg: tuple[int, ...] = (14, 14)  # Hiera's background position embedding grid
    # shared
    out_chans: int = 256  # ViT neck / SAM2 FPN width = decoder width
    mlp_ratio: float = 4.0
    lora_rank: int = 32
    lora_alpha: float = 32.0
    lora_per_modality: bool = True  # False: one LoRA shared by all modalities (MemorySAM)
    num_classes: int = 25
    num_modalities: int = 4
    top_k: int | None = None
    router: str = "sigmoid"  # model.router.ROUTERS: sigmoid (MLE-SAM), softmax, spatial, spatial_joint
    router_temperature: float = 1.0  # initial temperature of the softmax and spatial routers
    fusion_mean: str = "plain"  # model.fusion.FUSION_MEANS: plain (MLE-SAM), learned, none
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    aux_head: bool = True
    adapters: str = "experts"  # one of ADAPTERS
    tasks: tuple[str, ...] = ("semantic",)  # TASKS in this order, semantic first
    domains: tuple[str, ...] = ()  # "moda": the learned domains, in the order they were learned
    domain_tokens: int = 10  # "moda": learned selector tokens (global assistant tokens, GAT)
    domain_split: int | None = None  # "moda": the selector reads blocks [0, split), the domain
    # adapters update blocks [split, depth); None: through the first global-attention block
    # MemorySAM (fusion "memory"); SAM2's values by default
    memory_layers: int = 4
    memory_dim: int = 64
    memory_mlp_dim: int = 2048
    num_maskmem: int = 7
    prototype_weight: float = 0.0  # semantic prototype memory loss weight; 0 = off
    prototype_momentum: float = 0.2

    def __post_init__(self) -> None:
        # Lists coming from JSON/YAML/checkpoints become tuples so the config stays hashable.
        for name in _TUPLE_FIELDS:
            object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))
        object.__setattr__(self, "tasks", tuple(str(t) for t in self.tasks))
        object.__setattr__(self, "domains", tuple(str(d) for d in self.domains))
        problems = self._adapter_problems()
        if not self.tasks or self.tasks[0] != "semantic" or len(set(self.tasks)) != len(self.tasks) \
                or not set(self.tasks) <= set(TASKS):
            problems.append(f"tasks must start with 'semantic' and name each of {TASKS} at most once, "
                            f"got {list(self.tasks)}")
        if self.fusion == "memory" and (self.tasks != ("semantic",) or self.adapters != "experts"):
            problems.append("the memory fusion predicts semantic labels only, with expert adapters")
        if self.backbone not in BACKBONES:
            problems.append(f"backbone must be one of {BACKBONES}")
        if self.fusion not in FUSIONS:
            problems.append(f"fusion must be one of {FUSIONS}")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if any(not 0 <= i < self.depth for i in self.global_attn_indexes + self.aux_block_indexes):
            problems.append(f"block indexes must lie in [0, {self.depth})")
        if self.backbone == "hiera":
            problems += self._hiera_problems()
        else:
            if self.img_size % self.patch_size:
                problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
            if self.aux_head and not 1 <= len(self.aux_block_indexes) <= 4:
                problems.append("aux_block_indexes needs 1 to 4 blocks (one per pyramid level)")
            if self.fusion == "memory" or self.prototype_weight:
                problems.append("the memory fusion and the prototype memory need the hiera backbone (SAM2)")
        if self.out_chans % 16 or (self.out_chans // 2) % self.decoder_heads:
            problems.append(f"out_chans {self.out_chans} must be a multiple of 16 and of 2*decoder_heads")
        if self.lora_rank < 1 or self.num_modalities < 1:
            problems.append("lora_rank and num_modalities must be >= 1")
        if self.top_k is not None and not 1 <= self.top_k <= self.num_modalities:
            problems.append(f"top_k must be None or in [1, {self.num_modalities}]")
        if self.router not in ROUTERS:
            problems.append(f"router {self.router!r} is not one of {ROUTERS}")
        if self.fusion_mean not in FUSION_MEANS:
            problems.append(f"fusion_mean {self.fusion_mean!r} is not one of {FUSION_MEANS}")
        if not self.router_temperature > 0:
            problems.append("router_temperature must be positive")
        if self.memory_layers < 1 or self.memory_dim < 2 or self.memory_dim % 2 or self.num_maskmem < 1:
            problems.append("memory_layers and num_maskmem must be >= 1, memory_dim even (sine encoding)")
        if self.prototype_weight < 0 or not 0 < self.prototype_momentum <= 1:
            problems.append("prototype_weight must be >= 0 and prototype_momentum in (0, 1]")
        if problems:
            raise ValueError(f"invalid ModelConfig {self.name!r}: " + "; ".join(problems))

    def _adapter_problems(self) -> list[str]:
        if self.adapters not in ADAPTERS:
            return [f"adapters must be one of {ADAPTERS}, got {self.adapters!r}"]
        if self.adapters != "moda":
            return [] if not self.domains else [f"domains are only for 'moda' adapters, got {list(self.domains)}"]
        problems = []
        if self.backbone != "vit":
            problems.append("'moda' adapters ride on SAM's ViT blocks (backbone 'vit')")
        if not 1 <= len(self.domains) <= MAX_DOMAINS:
            problems.append(f"'moda' adapters need 1 to {MAX_DOMAINS} domains, got {len(self.domains)}")
        if len(set(self.domains)) != len(self.domains) or not all(d.isidentifier() for d in self.domains):
            problems.append(f"domain names must be distinct identifiers, got {list(self.domains)}")
        if not 1 <= self.domain_tokens <= MAX_DOMAIN_TOKENS:
            problems.append(f"domain_tokens must be in [1, {MAX_DOMAIN_TOKENS}], got {self.domain_tokens}")
        if not 1 <= self.selector_blocks < self.depth:
            problems.append(f"domain_split must be in [1, {self.depth}) so the selector and the adapters "
                            f"each get blocks, got {self.selector_blocks}")
        return problems

    @property
    def selector_blocks(self) -> int:
        """Leading encoder blocks the domain selector reads (the domain adapters update the rest)."""
        if self.domain_split is not None:
            return self.domain_split
        return min(self.global_attn_indexes, default=0) + 1

    def _hiera_problems(self) -> list[str]:
        problems = []
        if len(self.stages) != HIERA_STAGES or len(self.window_spec) != HIERA_STAGES or min(self.stages, default=0) < 1:
            return [f"hiera needs {HIERA_STAGES} stages of >= 1 block and a window per stage"]
        if self.depth != sum(self.stages):
            problems.append(f"depth {self.depth} must be the sum of stages {sum(self.stages)}")
        if self.img_size % 32:
            problems.append(f"img_size {self.img_size} is not a multiple of 32 (Hiera's coarsest stride)")
        elif (self.img_size // 4) % self.window_spec[0]:
            problems.append(f"the stride-4 grid {self.img_size // 4} is not a multiple of window_spec[0]")
        pooling = [sum(self.stages[: i + 1]) for i in range(HIERA_STAGES - 1)]  # first block of stages 2-4
        if set(pooling) & set(self.global_attn_indexes):
            problems.append(f"blocks {pooling} pool their queries and cannot use global attention")
        if any(w < 2 or w % 2 for w in self.window_spec[:-1]):
            problems.append("windows of stages 1-3 must be even (they are halved by query pooling)")
        if len(self.window_pos_embed_bkg) != 2:
            problems.append("window_pos_embed_bkg needs (height, width)")
        return problems

    def to_dict(self) -> dict:
        """Plain types only (lists, ints, floats, str, None), safe for weights_only checkpoints."""
        d = asdict(self)
        for name in _TUPLE_FIELDS:
            d[name] = list(getattr(self, name))
        d["tasks"] = list(self.tasks)
        d["domains"] = list(self.domains)
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


def _hiera(name: str, embed_dim: int, num_heads: int, stages: tuple[int, ...], global_blocks: tuple[int, ...],
           window_pos_embed_bkg: tuple[int, int], window_spec: tuple[int, ...] = (8, 4, 14, 7), **more) -> ModelConfig:
    return ModelConfig(**{"img_size": 1024, **more}, name=name, embed_dim=embed_dim, num_heads=num_heads,
                       depth=sum(stages), global_attn_indexes=global_blocks, backbone="hiera", stages=stages,
                       window_spec=window_spec, window_pos_embed_bkg=window_pos_embed_bkg)


_SAM2_TRUNKS = {  # SAM2 / SAM2.1 configs (sam2/configs/sam2.1/sam2.1_hiera_*.yaml); names as Meta's files
    "t": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_blocks=(5, 7, 9), window_pos_embed_bkg=(7, 7)),
    "s": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_blocks=(7, 10, 13), window_pos_embed_bkg=(7, 7)),
    "b+": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_blocks=(12, 16, 20),
               window_pos_embed_bkg=(14, 14)),
    "l": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_blocks=(23, 33, 43),
              window_pos_embed_bkg=(7, 7), window_spec=(8, 4, 16, 8)),
}

TINY_SAM2_DIMS = dict(img_size=256, out_chans=128, lora_rank=8, lora_alpha=8.0, decoder_heads=4, decoder_mlp_dim=512,
                      memory_layers=2, memory_dim=32, memory_mlp_dim=256)

MEMORYSAM = dict(fusion="memory", lora_per_modality=False, lora_rank=4, lora_alpha=4.0, aux_head=False,
                 prototype_weight=1.0, prototype_momentum=0.2)
"""MemorySAM as its paper and released code (Chenfei-Liao/MemorySAM, train_sam2_lora.py) set it:
one LoRA (rank 4, no scaling) shared by all modalities, no auxiliary head, semantic prototype
memory with momentum 0.2 and loss weight 1 (paper Tables 4, 5)."""

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
    # MoE-LoRA SAM2: Hiera T/S/B+/L with SAM2's FPN and its high-resolution mask decoder.
    **{f"hiera_{size}": _hiera(f"hiera_{size}", **trunk) for size, trunk in _SAM2_TRUNKS.items()},
    # MemorySAM on the same trunks (the paper's model is memorysam_b+).
    **{f"memorysam_{size}": _hiera(f"memorysam_{size}", **trunk, **MEMORYSAM) for size, trunk in _SAM2_TRUNKS.items()},
    # CPU-sized SAM2 models for tests and the comparison in docs/RESULTS.md (as "tiny" for SAM).
    "tiny_hiera": _hiera("tiny_hiera", embed_dim=24, num_heads=1, stages=(1, 1, 3, 1), global_blocks=(4,),
                         window_pos_embed_bkg=(4, 4), window_spec=(8, 4, 4, 4), **TINY_SAM2_DIMS),
    "tiny_memorysam": _hiera("tiny_memorysam", embed_dim=24, num_heads=1, stages=(1, 1, 3, 1), global_blocks=(4,),
                             window_pos_embed_bkg=(4, 4), window_spec=(8, 4, 4, 4),
                             **{**TINY_SAM2_DIMS, **MEMORYSAM, "lora_rank": 8, "lora_alpha": 8.0}),
}
"""Official SAM / SAM2 encoder shapes (names as `segment_anything.sam_model_registry` and SAM2's
config files) and CPU-sized ones."""
MODEL_CONFIGS["tiny_talora"] = replace(MODEL_CONFIGS["tiny"], name="tiny_talora", adapters="ta_lora",
                                       tasks=("semantic", "depth"))
"""The CPU-sized multi-task model: semantic labels and dense metric depth from task-aware adapters."""
MODEL_CONFIGS["tiny_moda"] = replace(MODEL_CONFIGS["tiny"], name="tiny_moda", adapters="moda",
                                     domains=("sun", "cloud", "rain", "fog", "night"))
"""The CPU-sized model with a domain adapter per synthetic weather condition (tests, benchmarks);
`sam-mmseg train --continual` builds its own from the domains it learns."""


OFFICIAL_MODELS = ("vit_b", "vit_l", "vit_h", *(f"{kind}_{size}" for kind in ("hiera", "memorysam")
                                                  for size in _SAM2_TRUNKS))
"""Registry entries with official SAM / SAM2 checkpoints: the largest of them bounds what a stored
config may ask for."""

_LIMITED_FIELDS = ("img_size", "embed_dim", "depth", "num_heads", "window_size", "patch_size", "mlp_ratio",
                   "out_chans", "lora_rank", "decoder_depth", "decoder_heads", "decoder_mlp_dim",
                   "memory_layers", "memory_dim", "memory_mlp_dim", "num_maskmem")

CONFIG_LIMITS: dict[str, float] = {
    **{name: max(getattr(MODEL_CONFIGS[m], name) for m in OFFICIAL_MODELS) for name in _LIMITED_FIELDS},
    "num_classes": IGNORE_LABEL,  # labels travel as mono8 and 255 means "ignore"
    "num_modalities": len(MODALITIES),
    "domain_tokens": MAX_DOMAIN_TOKENS,
}
"""Upper bound of every size a config from a file may declare: ViT-H's encoder (Hiera-L's depth),
SAM's decoder, SAM2's memory, the paper's LoRA rank. A checkpoint asking for more (embed_dim 8192,
depth 64: about 200 GB) is refused before anything is allocated."""
TUPLE_LIMITS: dict[str, int] = {name: max(max(getattr(MODEL_CONFIGS[m], name), default=0) for m in OFFICIAL_MODELS)
                                for name in ("stages", "window_spec", "window_pos_embed_bkg")}
"""Upper bound of each entry of Hiera's size tuples (blocks per stage, windows, position grid)."""
MAX_TOKENS_PER_SIDE = max(MODEL_CONFIGS[m].img_size // MODEL_CONFIGS[m].patch_size for m in OFFICIAL_MODELS)
"""Patch grid side of the official models (64): attention cost grows with its fourth power."""
MAX_LORA_ALPHA = 1e6
"""LoRA scale numerator: any real value is far below; larger ones only overflow fp16."""

_FIELD_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "tuple[int, ...]": (list, tuple),
                "tuple[str, ...]": (list, tuple), "int | None": (int, type(None)), "bool": (bool,)}
_STRING_TUPLE_LENGTHS = {"tasks": len(TASKS), "domains": MAX_DOMAINS}
"""Most names a config from a file may list in each tuple-of-strings field."""
MAX_NAME_LENGTH = 64
"""Longest task or domain name a config from a file may declare."""


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
        if (isinstance(value, bool) != (kind == "bool")) or not isinstance(value, _FIELD_TYPES[kind]):
            problems.append(f"{name} is a {type(value).__name__}, expected {kind}")
        elif kind == "tuple[int, ...]" and not all(type(i) is int for i in value):
            problems.append(f"{name} must hold integers only")
        elif kind == "tuple[str, ...]" and not (len(value) <= _STRING_TUPLE_LENGTHS[name] and all(
                type(i) is str and len(i) <= MAX_NAME_LENGTH for i in value)):
            problems.append(f"{name} must hold at most {_STRING_TUPLE_LENGTHS[name]} strings of at most "
                            f"{MAX_NAME_LENGTH} characters")
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
    for name, limit in TUPLE_LIMITS.items():
        if len(values[name]) > HIERA_STAGES or not all(0 < v <= limit for v in values[name]):
            problems.append(f"{name} needs at most {HIERA_STAGES} entries in (0, {limit}]")
    return problems


def _show(value) -> str:
    """A value from a file, short enough for a message (an int of 10^5000 has no str())."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"(a {value.bit_length()}-bit integer)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
