"""Model configuration: one plain dataclass that fully describes the architecture, so a
checkpoint stores it as a dict and rebuilds the exact model without pickled classes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

ROUTERS = ("sigmoid", "softmax", "spatial")
"""Router kinds (model.router): sigmoid is MLE-SAM's pooled sigmoid gate."""
FUSION_MEANS = ("plain", "learned", "none")
"""Mean term of the fusion (model.fusion): plain is MLE-SAM's."""


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
    router: str = "sigmoid"  # model.router.ROUTERS: sigmoid (MLE-SAM), softmax, spatial
    router_temperature: float = 1.0  # initial temperature of the softmax and spatial routers
    fusion_mean: str = "plain"  # model.fusion.FUSION_MEANS: plain (MLE-SAM), learned, none
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048

    def __post_init__(self) -> None:
        # Lists coming from JSON/YAML/checkpoints become tuples so the config stays hashable.
        object.__setattr__(self, "global_attn_indexes", tuple(int(i) for i in self.global_attn_indexes))
        object.__setattr__(self, "aux_block_indexes", tuple(int(i) for i in self.aux_block_indexes))
        problems = []
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
        if self.router not in ROUTERS:
            problems.append(f"router {self.router!r} is not one of {ROUTERS}")
        if self.fusion_mean not in FUSION_MEANS:
            problems.append(f"fusion_mean {self.fusion_mean!r} is not one of {FUSION_MEANS}")
        if not self.router_temperature > 0:
            problems.append("router_temperature must be positive")
        if problems:
            raise ValueError(f"invalid ModelConfig {self.name!r}: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """Plain types only (lists, ints, floats, str, None), safe for weights_only checkpoints."""
        d = asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        d["aux_block_indexes"] = list(self.aux_block_indexes)
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
