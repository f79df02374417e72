"""MemorySAM's fusion: the modalities of one scene as the frames of a video through SAM2's memory.

What MemorySAM does (paper §3.3 and its released code, Chenfei-Liao/MemorySAM,
`sam_lora_image_encoder_seg.py`, which runs SAM2's `track_step` over the modality frames):
every modality is encoded by the (LoRA-tuned) image encoder; the first frame goes to the mask
decoder with SAM2's "no memory" embedding added (`directly_add_no_mem_embed`); each later frame
first attends, through SAM2's memory attention, to the memories the memory encoder made of the
earlier frames (their features and predicted masks), then is decoded; the final prediction is
the mean of all frames' predictions (the "memory residual", paper Eq. 6). Every frame is stored
as a conditioning frame, so every memory carries the same temporal encoding
(`maskmem_tpos_enc[num_maskmem - 1]`, SAM2's t_pos = 0).

What is followed, what differs, and why:
- All present modalities are fused, in the fixed order rgb, depth, event, lidar (the released
  forward hard-codes two frames).
- Absent modalities are masked, not removed: an absent frame is still computed (the graph is
  static), its memory gets a -1e4 key bias in every later cross-attention (so it receives no
  attention weight) and its prediction has weight 0 in the mean. A frame with no present frame
  before it takes the no-memory path, chosen per sample with `torch.where`.
- The mask given to the memory encoder is the frame's per-pixel max class probability, on SAM2's
  logit scale (p * 20 - 10, as SAM2 scales its sigmoid output). The released code encodes the one
  class mask its IoU head ranks first; that head is re-initialised and frozen there, so the choice
  is arbitrary, and a per-sample argmax over masks is data-dependent indexing. Confidence is the
  semantic analogue of SAM2's object probability and keeps the graph static.
- No object pointers: SAM2's pointers come from its single-object output token, which has no
  counterpart among per-class tokens (the released code feeds SAM2's pointer projection, frozen).
- The sequence is a loop over the M modality slots, unrolled in the graph: each frame depends on
  the previous frames' predictions, so the frames cannot be one batch (the image encoder before
  it still runs all modalities as one batch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sam_mmseg_ros.model.image_encoder import capturing_graph
from sam_mmseg_ros.model.memory_attention import MemoryAttention, MemoryAttentionLayer
from sam_mmseg_ros.model.memory_encoder import MemoryEncoder
from sam_mmseg_ros.model.position_encoding import PositionEmbeddingSine

ABSENT_KEY_BIAS = -1.0e4
"""Attention bias on the memory of an absent frame: exp() of it is exactly 0 next to real scores,
finite so that a row with no present memory (discarded by the no-memory path) stays finite, and
representable in fp16."""

SIGMOID_SCALE_FOR_MEM_ENC, SIGMOID_BIAS_FOR_MEM_ENC = 20.0, -10.0
"""SAM2's scaling of the [0, 1] mask probability before the memory encoder (all official configs)."""

Decoder = Callable[[torch.Tensor, tuple[int, int], tuple[torch.Tensor, torch.Tensor]], torch.Tensor]


def check_some_modality_present(modality_mask: torch.Tensor) -> None:
    """Eager mode: a sample with no modality has nothing to fuse (a traced graph cannot raise)."""
    if not capturing_graph() and bool((modality_mask.sum(dim=1) == 0).any()):
        raise ValueError("every modality is absent in at least one sample: nothing to fuse")


class MemorySequenceFusion(nn.Module):
    """Per-modality predictions [B, M, K, H, W] from per-modality stride-16 features, the frames
    conditioned on the memories of the present frames before them.

    Parameter names follow SAM2Base (`memory_encoder.*`, `memory_attention.*`,
    `maskmem_tpos_enc`, `no_mem_embed`) so official checkpoints load under the `memory.` prefix.
    """

    def __init__(self, d_model: int, mem_dim: int, num_layers: int, mlp_dim: int, num_maskmem: int = 7,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.memory_encoder = MemoryEncoder(d_model, mem_dim)
        self.memory_attention = MemoryAttention(d_model, MemoryAttentionLayer(d_model, mem_dim, mlp_dim,
                                                                              dropout=dropout), num_layers)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d_model))
        nn.init.trunc_normal_(self.maskmem_tpos_enc, std=0.02)
        nn.init.trunc_normal_(self.no_mem_embed, std=0.02)
        self.position_encoding = PositionEmbeddingSine(d_model)

    def forward(self, embedding: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor],
                modality_mask: torch.Tensor, decode: Decoder, output_size: tuple[int, int]) -> torch.Tensor:
        """embedding [B, M, C, h, w] (stride 16), high_res the (stride-4, stride-8) maps [B, M, C, ...]
        the decoder takes, modality_mask [B, M]; `decode(embedding, output_size, high_res)` gives
        one frame's class logits at `output_size` (16h x 16w)."""
        b, m, c, h, w = embedding.shape
        curr_pos = self.position_encoding(embedding[:, 0]).flatten(2).transpose(1, 2)  # [1, hw, C]
        memory_tpos = self.maskmem_tpos_enc[-1].reshape(1, 1, -1)  # conditioning frames: SAM2's t_pos 0
        present = modality_mask.to(embedding.dtype)
        memories: list[torch.Tensor] = []
        memory_pos: list[torch.Tensor] = []
        key_bias: list[torch.Tensor] = []
        frame_logits = []
        for t in range(m):
            tokens = embedding[:, t].flatten(2).transpose(1, 2)  # [B, hw, C]
            conditioned = tokens + self.no_mem_embed
            if t > 0:
                attended = self.memory_attention(tokens, curr_pos, torch.cat(memories, 1), torch.cat(memory_pos, 1),
                                                 (h, w), torch.cat(key_bias, -1))
                has_memory = present[:, :t].sum(dim=1).reshape(b, 1, 1) > 0
                conditioned = torch.where(has_memory, attended, conditioned)
            logits = decode(conditioned.transpose(1, 2).reshape(b, c, h, w), output_size,
                            (high_res[0][:, t], high_res[1][:, t]))
            frame_logits.append(logits)
            if t < m - 1:  # the last frame's memory would have no reader
                confidence = logits.float().softmax(dim=1).amax(dim=1, keepdim=True).to(logits.dtype)
                features, position = self.memory_encoder(
                    embedding[:, t], confidence * SIGMOID_SCALE_FOR_MEM_ENC + SIGMOID_BIAS_FOR_MEM_ENC)
                memories.append(features.flatten(2).transpose(1, 2))
                memory_pos.append((position.flatten(2).transpose(1, 2) + memory_tpos).expand(b, -1, -1))
                key_bias.append(((1.0 - present[:, t]) * ABSENT_KEY_BIAS).reshape(b, 1, 1, 1).expand(-1, -1, -1, h * w))
        return torch.stack(frame_logits, dim=1)
