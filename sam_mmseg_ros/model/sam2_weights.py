"""Official SAM2 / SAM2.1 checkpoints (`sam2_hiera_*.pt`, `sam2.1_hiera_*.pt`) into a Hiera model.

Meta publishes a dict {"model": state dict} with keys `image_encoder.trunk.*`,
`image_encoder.neck.*`, `sam_mask_decoder.*`, `sam_prompt_encoder.*`, `memory_attention.*`,
`memory_encoder.*` and a few SAM2Base parameters. Every key is accounted for: it is loaded
(`SAM2_KEY_MAP`, plus the decoder's two context tokens, built from SAM2's object-score and IoU
tokens), or it is one of `UNUSED`, each with the reason this model has no place for it; a key
that is neither is an error, as is a missing or misshapen encoder key. The image encoder must
always fit. The mask decoder and the memory load when their shapes fit this model (SAM2's widths);
otherwise, or when the file has none (a file holding only a pretrained image encoder), they keep
their init, which the report and the log say; a decoder or memory present only in part is an error.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

import torch

from sam_mmseg_ros.model.safe_load import (
    CheckpointError,
    describe_keys,
    load_strict,
    read_untrusted,
    require_tensors,
)
from sam_mmseg_ros.model.sam_moe import MoELoRASAM

LOG = logging.getLogger(__name__)

SAM2_KEY_MAP: dict[str, str] = {
    "image_encoder.": "image_encoder.",  # trunk.* and neck.* under the same names
    "sam_mask_decoder.transformer.": "decoder.transformer.",
    "sam_mask_decoder.output_upscaling.": "decoder.output_upscaling.",
    "sam_mask_decoder.conv_s0.": "decoder.conv_s0.",
    "sam_mask_decoder.conv_s1.": "decoder.conv_s1.",
    "sam_mask_decoder.output_hypernetworks_mlps.0.": "decoder.output_hypernetwork.",
    "sam_prompt_encoder.pe_layer.": "decoder.pe_layer.",
    "sam_prompt_encoder.no_mask_embed.": "decoder.no_mask_embed.",
    "memory_attention.": "memory.memory_attention.",
    "memory_encoder.": "memory.memory_encoder.",
    "maskmem_tpos_enc": "memory.maskmem_tpos_enc",
    "no_mem_embed": "memory.no_mem_embed",
}
"""Official key prefix -> this model's prefix (the `memory.*` targets exist in memory fusion only)."""

CONTEXT_TOKENS = ("sam_mask_decoder.obj_score_token.weight", "sam_mask_decoder.iou_token.weight")
"""Concatenated, in SAM2's token order, into `decoder.context_tokens.weight`."""

UNUSED: dict[str, str] = {
    "sam_mask_decoder.mask_tokens.": "one learned class token per class replaces SAM2's mask tokens",
    "sam_mask_decoder.output_hypernetworks_mlps.": "one hypernetwork (mask token 0's) is shared by all classes",
    "sam_mask_decoder.iou_prediction_head.": "no IoU prediction output",
    "sam_mask_decoder.pred_obj_score_head.": "no object-score output",
    "sam_prompt_encoder.point_embeddings.": "no point or box prompts",
    "sam_prompt_encoder.not_a_point_embed.": "no point or box prompts",
    "sam_prompt_encoder.mask_downscaling.": "no mask prompts",
    "obj_ptr_proj.": "no object pointers (a single-object token has no per-class counterpart)",
    "obj_ptr_tpos_proj.": "no object pointers",
    "no_obj_ptr": "no object pointers",
    "mask_downsample.": "no object pointers (it turns mask prompts into pointers)",
    "no_obj_embed_spatial": "no object score to mark an occluded frame's memory with",
    "no_mem_pos_enc": "the first frame takes no_mem_embed directly (directly_add_no_mem_embed); this is "
                      "the position of the dummy memory token the other path uses",
}
"""Official key prefix -> why this model does not use it."""

OWN_DECODER_KEYS = ("decoder.class_tokens.",)
"""Decoder parameters that SAM2 has no counterpart for."""

NO_MEMORY_REASON = "the router fusion has no memory (a memory-fusion config uses these)"

_TRANSFORMER_MLP = re.compile(r"^(decoder\.transformer\.layers\.\d+\.mlp\.)layers\.([01])\.")
"""SAM2's two-way transformer names its MLP `mlp.layers.0/1`, SAM's (ours) `mlp.lin1/lin2`."""


@dataclass
class SAM2LoadReport:
    loaded: list[str] = field(default_factory=list)  # model keys set from the checkpoint
    unused: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why it is not used
    kept_init: dict[str, str] = field(default_factory=dict)  # model key -> why it keeps its init


def is_sam2_state(state: dict) -> bool:
    return any(key.startswith("image_encoder.trunk.") for key in state)


def _match(key: str, table: dict[str, str]) -> tuple[str, str] | None:
    """(prefix, value) of the `table` entry naming `key`: the key itself, or a prefix ending in '.'."""
    for prefix, value in table.items():
        if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
            return prefix, value
    return None


def _target(key: str) -> str | None:
    """This model's name for an official key, or None when SAM2_KEY_MAP does not map it."""
    if (entry := _match(key, SAM2_KEY_MAP)) is None:
        return None
    prefix, target = entry
    return _TRANSFORMER_MLP.sub(lambda m: f"{m.group(1)}lin{int(m.group(2)) + 1}.", target + key[len(prefix):])


def plan_sam2_state(model: MoELoRASAM, state: dict[str, torch.Tensor], source: str = "SAM2 weights"
                    ) -> tuple[dict[str, torch.Tensor], SAM2LoadReport]:
    """(the state to load into `model`, keyed by model names; the report) for an official SAM2
    state dict. Works on meta tensors too (only names and shapes are compared)."""
    own = model.state_dict()
    report = SAM2LoadReport()
    groups: dict[str, dict[str, torch.Tensor]] = {"image_encoder": {}, "decoder": {}, "memory": {}}
    unknown = []
    for key, value in state.items():
        target = _target(key)
        if target is not None:
            if target.startswith("memory.") and model.config.fusion != "memory":
                report.unused[key] = NO_MEMORY_REASON
            else:
                groups[target.split(".", 1)[0]][target] = value
        elif key in CONTEXT_TOKENS:
            pass  # merged below
        elif (entry := _match(key, UNUSED)) is not None:
            report.unused[key] = entry[1]
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: {describe_keys('keys that are not part of SAM2', sorted(unknown))}")
    if all(key in state for key in CONTEXT_TOKENS):
        groups["decoder"]["decoder.context_tokens.weight"] = torch.cat([state[key] for key in CONTEXT_TOKENS])
    elif any(key in state for key in CONTEXT_TOKENS):
        raise CheckpointError(f"{source} has only one of {CONTEXT_TOKENS}")

    encoder = groups["image_encoder"]
    if not encoder:
        raise CheckpointError(f"{source} has no image_encoder.* weights (first keys: {sorted(state)[:5]})")
    missing = sorted(k for k in own if k.startswith("image_encoder.") and k not in encoder and ".lora_" not in k)
    misfit = sorted(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in encoder.items()
                    if k not in own or own[k].shape != v.shape)
    if missing or misfit:
        problems = [describe_keys(what, keys) for what, keys in (("missing", missing), ("not fitting", misfit)) if keys]
        raise CheckpointError(f"{source}: the image encoder does not fit this {model.config.name} model: "
                              + "; ".join(problems))
    plan = dict(encoder)
    for name in ("decoder", "memory"):
        group = groups[name]
        expected = {k for k in own if k.startswith(f"{name}.") and not k.startswith(OWN_DECODER_KEYS)}
        misfit = sorted(k for k, v in group.items() if k not in own or own[k].shape != v.shape)
        if not group:  # a file holding only a pretrained image encoder
            reason = f"the checkpoint has no SAM2 {name}; it keeps its init"
            LOG.warning("%s: %s", source, reason)
            report.kept_init.update({key: reason for key in expected})
        elif misfit:
            reason = (f"SAM2's {name} does not fit this model's ({describe_keys('keys that differ', misfit)}); "
                      "it keeps its init")
            LOG.warning("%s: %s", source, reason)
            report.unused.update({key: reason for key in _sources_of(state, group)})
            report.kept_init.update({key: reason for key in expected})
        elif missing := sorted(expected - set(group)):
            raise CheckpointError(f"{source}: SAM2's {name} is incomplete: {describe_keys('missing', missing)}")
        else:
            plan.update(group)
    report.loaded = sorted(plan)
    for key in own:
        if key not in plan and key not in report.kept_init:
            report.kept_init[key] = "not part of SAM2 (LoRA, class tokens, router, heads, prototypes)"
    return plan, report


def _sources_of(state: dict, group: dict) -> list[str]:
    """The checkpoint keys a group of model keys came from."""
    targets = set(group)
    sources = [key for key in state if _target(key) in targets]
    if "decoder.context_tokens.weight" in targets:
        sources += [key for key in CONTEXT_TOKENS if key in state]
    return sources


def load_sam2_weights(model: MoELoRASAM, path_or_state: str | os.PathLike | dict,
                      source: str | None = None) -> SAM2LoadReport:
    """Load an official SAM2/SAM2.1 checkpoint (or its state dict) into a `hiera` model."""
    if source is None:
        source = "SAM2 weights" if isinstance(path_or_state, dict) else str(path_or_state)
    if model.config.backbone != "hiera":
        raise CheckpointError(f"{source} is a SAM2 (Hiera) checkpoint; model {model.config.name!r} has the "
                              f"{model.config.backbone} backbone")
    state = read_untrusted(path_or_state, "cpu")
    state = state.get("model", state)
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{source} is not a state dict (tensors by name)")
    require_tensors(state, source)  # before the plan compares shapes
    if not is_sam2_state(state):
        raise CheckpointError(f"{source} is not a SAM2 checkpoint (no image_encoder.trunk.* keys; first keys: "
                              f"{sorted(state)[:5]}); model {model.config.name!r} needs SAM2 (Hiera) weights")
    plan, report = plan_sam2_state(model, state, source)
    load_strict(model, plan, source, may_be_missing=lambda key: key not in plan)
    LOG.info("%s: loaded %d tensors into %s; %d checkpoint tensors unused (%s)", source, len(plan),
             model.config.name, len(report.unused), ", ".join(sorted(set(report.unused.values()))))
    return report
