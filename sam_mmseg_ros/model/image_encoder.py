"""SAM's ViT image encoder (Meta's `segment_anything.modeling.image_encoder`, from ViTDet).

Re-implemented rather than imported so that (1) the qkv projection can carry per-modality LoRA
experts while keeping the official parameter names (`blocks.N.attn.qkv.weight` ...), (2) the
encoder also returns intermediate block features for the auxiliary head, and (3) attention keeps
memory bounded and exports in a form GPUs fuse: global attention runs in query chunks, eager
attention through `scaled_dot_product_attention` with the decomposed relative-position bias as
additive mask (faster on CPU), while graph capture for export folds the bias into the score
matmul with equal Q/K/V head sizes (see `rel_pos_attention`).
Parity with Meta's module (to 1e-5) is checked in test_model_encoder.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam_mmseg_ros.model.lora import MoELoRAQKV


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of an NCHW tensor (SAM's `common.LayerNorm2d`, same parameters).

    Computed as `layer_norm` on a channels-last view rather than SAM's mean/subtract/divide, so
    the export holds one LayerNormalization node: the fp16 conversion keeps it in fp32
    (statistics, epsilon and division included) instead of leaving the subtraction, epsilon and
    division to fp16.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    """SAM's `common.MLPBlock` (names lin1/lin2 as in the checkpoint)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # B C H W -> B H W C


class ImageEncoderViT(nn.Module):
    """ViT encoder with windowed + global attention and decomposed relative positions.

    `num_experts` > 0 adds that many LoRA experts to every block's q and v; the batch must then
    be B*num_experts images ordered (b, m). `forward` returns the neck output
    [S, out_chans, H/16, W/16] and the token maps [S, H/16, W/16, embed_dim] after the blocks
    named in `feature_indexes`.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
        feature_indexes: tuple[int, ...] = (),
        num_experts: int = 0,
        lora_rank: int = 8,
        lora_alpha: float = 8.0,
    ) -> None:
        super().__init__()
        self.feature_indexes = tuple(feature_indexes)
        self.num_experts = num_experts
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
                num_experts=num_experts,
                lora_rank=lora_rank,
                lora_alpha=lora_alpha,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        num_samples = x.shape[0]
        if self.num_experts and num_samples % self.num_experts:
            raise ValueError(f"batch of {num_samples} images is not B x {self.num_experts} modalities")
        x = self.patch_embed(x)
        pos_embed = self.pos_embed
        if x.shape[1:3] != pos_embed.shape[1:3]:
            # Another input size than the one the model was built for (a static shape, so
            # this is decided once when tracing): resample the embedding, as for checkpoints.
            pos_embed = resize_pos_embed(pos_embed, (x.shape[1], x.shape[2]))
        x = x + pos_embed
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x, num_samples)
            if i in self.feature_indexes:
                features.append(x)
        return self.neck(x.permute(0, 3, 1, 2)), features

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for block in self.blocks for p in block.attn.qkv.expert_parameters()]


class Block(nn.Module):
    """Pre-norm transformer block; window attention when window_size > 0, else global."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int,
                 input_size: tuple[int, int], num_experts: int, lora_rank: int, lora_alpha: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            input_size=input_size if window_size == 0 else (window_size, window_size),
            num_experts=num_experts,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
            # Windows of one image stay contiguous, so the LoRA expert grouping still holds.
            x = self.attn(x, num_samples)
            x = window_unpartition(x, self.window_size, pad_hw, (height, width))
        else:
            x = self.attn(x, num_samples)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    """Multi-head attention with decomposed relative position bias (MViTv2)."""

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int], num_experts: int = 0,
                 lora_rank: int = 8, lora_alpha: float = 8.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = MoELoRAQKV(dim, num_experts=num_experts, rank=lora_rank, alpha=lora_alpha)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x, num_samples).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, N, head_dim]
        x = rel_pos_attention(q, k, v, self.rel_pos_h, self.rel_pos_w, (height, width), self.scale,
                              fused=not capturing_graph())
        return self.proj(x.permute(0, 2, 1, 3).reshape(batch, height, width, -1))


def capturing_graph() -> bool:
    """True while torch.export / torch.compile / jit.trace / ONNX export record the graph."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


ATTENTION_CHUNK_BYTES = 128 << 20
"""Bound on one query chunk's fp32 score tensor [B, heads, rows, tokens] in attention.
Without chunks, vit_b at 1024x1024 with 4 modalities holds [4, 12, 4096, 4096] scores per block
(3 GiB in fp32), which does not fit an 8 GB Jetson and made ONNX Runtime on CPU peak at 16.7 GB."""

HEAD_WIDTH_MULTIPLE = 8
"""The exported q/k/v head width is padded to a multiple of this (tensor-core tile width)."""


def query_chunk_rows(batch_heads: int, tokens: int, budget_bytes: int | None = None) -> int:
    """Query rows per chunk so that one chunk's fp32 scores stay within `budget_bytes`
    (default ATTENTION_CHUNK_BYTES)."""
    budget = ATTENTION_CHUNK_BYTES if budget_bytes is None else budget_bytes
    rows = budget // (4 * batch_heads * tokens)
    if rows >= tokens:
        return tokens
    return rows // 64 * 64 if rows >= 64 else max(1, rows)  # whole 64-row tiles where possible


def rel_pos_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_h: torch.Tensor,
                      rel_pos_w: torch.Tensor, size: tuple[int, int], scale: float, fused: bool) -> torch.Tensor:
    """softmax(q k^T * scale + decomposed rel-pos bias) v for q, k, v [B, heads, N, head_dim],
    in query chunks (`query_chunk_rows`) so no [N, N] tensor of the whole attention exists.

    fused (eager torch): per chunk, `scaled_dot_product_attention` with the chunk's bias as
    additive mask. Not fused (graph capture; torch 2.13's ONNX exporter decomposes
    SDPA-with-mask into an invalid view): the bias goes into the score matmul. Query rows get
    their bias terms appended, key rows a one-hot of their (row, column), so
    [q*scale | rel_h | rel_w] . [k | onehot_h | onehot_w] is the biased score, and v gets zero
    columns up to the same width: plain attention softmax(Q K^T) V with one head size for Q, K
    and V, already scaled, no mask and no [N x N] bias tensor, which is the form TensorRT's
    fused attention kernels take (they need equal head sizes). The zero columns of the output
    are dropped after the last chunk.
    """
    batch, heads, tokens, head_dim = q.shape
    height, width = size
    rh = get_rel_pos(height, height, rel_pos_h)
    rw = get_rel_pos(width, width, rel_pos_w)
    r_q = q.reshape(batch * heads, height, width, head_dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh).reshape(batch, heads, tokens, height)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw).reshape(batch, heads, tokens, width)
    rows = query_chunk_rows(batch * heads, tokens)
    if fused:
        chunks = []
        for start in range(0, tokens, rows):
            stop = min(start + rows, tokens)
            bias = (rel_h[:, :, start:stop, :, None] + rel_w[:, :, start:stop, None, :]).flatten(-2)
            chunks.append(F.scaled_dot_product_attention(q[:, :, start:stop], k, v, attn_mask=bias, scale=scale))
        return torch.cat(chunks, dim=2) if len(chunks) > 1 else chunks[0]
    width_in = head_dim + height + width
    pad = -width_in % HEAD_WIDTH_MULTIPLE
    key_row = torch.eye(height, dtype=k.dtype, device=k.device).repeat_interleave(width, 0)  # token -> its row
    key_col = torch.eye(width, dtype=k.dtype, device=k.device).repeat(height, 1)  # token -> its column
    q_biased = F.pad(torch.cat([q * scale, rel_h, rel_w], dim=-1), (0, pad))
    k_biased = F.pad(torch.cat([k, key_row.expand(batch, heads, tokens, height),
                                key_col.expand(batch, heads, tokens, width)], dim=-1), (0, pad))
    v_padded = F.pad(v, (0, width_in + pad - head_dim))
    k_t = k_biased.transpose(-2, -1)
    chunks = [(q_biased[:, :, start:start + rows] @ k_t).softmax(dim=-1) @ v_padded
              for start in range(0, tokens, rows)]
    out = torch.cat(chunks, dim=2) if len(chunks) > 1 else chunks[0]
    return out[..., :head_dim]


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, H, W, C] -> [B * num_windows, ws, ws, C], zero-padding H and W up to multiples of ws."""
    batch, height, width, channels = x.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = height + pad_h, width + pad_w
    x = x.view(batch, hp // window_size, window_size, wp // window_size, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, channels)
    return windows, (hp, wp)


def window_unpartition(windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int],
                       hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of window_partition, cropping the padding."""
    hp, wp = pad_hw
    height, width = hw
    batch = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.view(batch, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(batch, hp, wp, -1)
    if hp > height or wp > width:
        x = x[:, :height, :width, :].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings [q_size, k_size, C] (query and key grids are equal here)."""
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = resize_rel_pos(rel_pos, max_rel_dist)
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linear interpolation of a [L, C] relative-position table to [length, C] (as SAM does)."""
    resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=length, mode="linear")
    return resized.reshape(-1, length).permute(1, 0)


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of an absolute position embedding [1, h, w, C] to [1, *grid, C], for
    running a 1024-pixel SAM checkpoint at another input size."""
    resized = F.interpolate(pos_embed.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype)


def adapt_encoder_state_dict(state: dict[str, torch.Tensor], encoder: ImageEncoderViT) -> dict[str, torch.Tensor]:
    """Resize `pos_embed` and `*.rel_pos_h/w` of an encoder state dict (no prefix) to the
    shapes of `encoder`; other entries pass through unchanged."""
    own = encoder.state_dict()
    adapted = dict(state)
    for key, value in state.items():
        target = own.get(key)
        if target is None or target.shape == value.shape:
            continue
        if key == "pos_embed" and value.dim() == 4:
            adapted[key] = resize_pos_embed(value, tuple(target.shape[1:3]))
        elif key.endswith((".rel_pos_h", ".rel_pos_w")) and value.dim() == 2 and value.shape[1] == target.shape[1]:
            adapted[key] = resize_rel_pos(value, target.shape[0])
    return adapted
