"""Segmentation heads on the fused image embedding.

`SemanticMaskDecoder` is SAM's mask decoder turned into a semantic head, as in MLE-SAM: the
prompt tokens are replaced by one learned query per class, the two-way transformer lets the
class queries and the image embedding attend to each other, and a hypernetwork MLP maps each
class query to a dynamic 1x1 classifier over the 4x upscaled embedding. The transformer,
upscaling, hypernetwork and positional encoding keep SAM's names and shapes so they start from
an official checkpoint (`MoELoRASAM.SAM_KEY_MAP`).

`AuxiliaryHead` is a light feature-pyramid head over multi-scale encoder features (intermediate
ViT blocks, or SAM2's FPN levels): it gives the encoder experts a second, shorter gradient path
during training and is not used at inference.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sam_mmseg_ros.model.image_encoder import LayerNorm2d, MLPBlock, capturing_graph


class PositionEmbeddingRandom(nn.Module):
    """SAM's random Fourier positional encoding of the embedding grid (prompt_encoder.pe_layer).

    The encoding of a grid depends only on the fixed gaussian matrix, so it is computed once in
    fp32 and kept (`dense_pe`, not saved in checkpoints): an exported graph holds it as a
    constant instead of computing sin/cos of large arguments at run time, which in an fp16
    engine loses the phase. `MoELoRASAM.prepare_export` computes it for the export's grid.
    """

    def __init__(self, num_pos_feats: int = 64, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))
        self.register_buffer("dense_pe", torch.empty(0), persistent=False)
        self.register_load_state_dict_pre_hook(_forget_dense_pe)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense PE [C, h, w] at pixel centers of an h x w grid normalised to [0, 1]."""
        if tuple(self.dense_pe.shape[1:]) != tuple(size):
            if capturing_graph():  # not prepared: computed in the graph, still correct in fp32
                return self.encode(size)
            with torch.inference_mode(False), torch.no_grad():  # usable by training after inference
                self.dense_pe = self.encode(size)
        return self.dense_pe

    def encode(self, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        grid = torch.ones((h, w), device=matrix.device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        coords = 2 * torch.stack([x_embed, y_embed], dim=-1) - 1
        coords = 2 * np.pi * (coords @ matrix.float())
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).permute(2, 0, 1).to(matrix.dtype)


def _forget_dense_pe(module: PositionEmbeddingRandom, *_) -> None:
    """New weights (a checkpoint, SAM's) make the kept encoding stale."""
    module.dense_pe = module.dense_pe.new_empty(0)


class MLP(nn.Module):
    """SAM's MLP: `num_layers` Linear layers with `activation` between them (ReLU in the
    hypernetworks, GELU in SAM2's Hiera blocks; parameter names `layers.N.*` as in both)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, dims[1:] + [output_dim], strict=True))
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else self.act(layer(x))
        return x


class Attention(nn.Module):
    """SAM decoder attention with optional downscaling of the internal dimension; keys and
    values may come in another width (`kv_in_dim`, SAM2's memory attention)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1,
                 kv_in_dim: int | None = None) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image, MLP, image->token (SAM's block, same names)."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """SAM's two-way transformer between query tokens and the image embedding."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor):
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        image_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe)
        q, k = queries + point_embedding, keys + image_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys


class SemanticMaskDecoder(nn.Module):
    """Class-query SAM decoder: image embedding [B, C, h, w] -> class logits [B, K, H, W].

    SAM2 options: `high_res=True` adds SAM2's high-resolution path (`conv_s0`/`conv_s1` project
    stride-4 and stride-8 features, added inside the two upscaling steps), so the logits come
    from stride-4 features instead of a 4x upsampled stride-16 embedding. `context_tokens`
    learned tokens precede the class tokens without producing a mask; SAM2's decoder always
    carries its object-score and IoU tokens this way, and keeping them (from the checkpoint)
    keeps the transformer's input as SAM2 trained it.
    """

    def __init__(self, transformer_dim: int, num_classes: int, depth: int = 2, num_heads: int = 8,
                 mlp_dim: int = 2048, high_res: bool = False, context_tokens: int = 0) -> None:
        super().__init__()
        self.pe_layer = PositionEmbeddingRandom(transformer_dim // 2)
        # SAM adds this learned "no mask prompt" embedding to every image token; kept so the
        # transformer sees the input distribution it was trained on.
        self.no_mask_embed = nn.Embedding(1, transformer_dim)
        self.context_tokens = nn.Embedding(context_tokens, transformer_dim) if context_tokens else None
        self.class_tokens = nn.Embedding(num_classes, transformer_dim)
        self.transformer = TwoWayTransformer(depth, transformer_dim, num_heads, mlp_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        if high_res:
            self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1)
        self.high_res = high_res
        # One hypernetwork shared by all classes (the class token carries the identity),
        # initialised from SAM's first mask-token MLP.
        self.output_hypernetwork = MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)

    def forward(self, image_embedding: torch.Tensor, output_size: tuple[int, int],
                high_res_features: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """high_res_features: (stride-4, stride-8) maps [B, C, 4h, 4w], [B, C, 2h, 2w] before
        `conv_s0`/`conv_s1`; required exactly when the decoder was built with `high_res`."""
        if (high_res_features is not None) != self.high_res:
            raise ValueError("high_res_features must be given exactly when the decoder has the high-resolution path")
        b, c, h, w = image_embedding.shape
        src = image_embedding + self.no_mask_embed.weight.reshape(1, c, 1, 1)
        pos = self.pe_layer((h, w)).unsqueeze(0).expand(b, -1, -1, -1)
        tokens = self.class_tokens.weight
        context = 0 if self.context_tokens is None else self.context_tokens.num_embeddings
        if context:
            tokens = torch.cat([self.context_tokens.weight, tokens], dim=0)
        class_out, src = self.transformer(src, pos, tokens.unsqueeze(0).expand(b, -1, -1))
        class_out = class_out[:, context:]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        if high_res_features is None:
            upscaled = self.output_upscaling(src)
        else:
            feat_s0, feat_s1 = self.conv_s0(high_res_features[0]), self.conv_s1(high_res_features[1])
            dc1, ln1, act1, dc2, act2 = self.output_upscaling
            upscaled = act2(dc2(act1(ln1(dc1(src) + feat_s1))) + feat_s0)
        hyper = self.output_hypernetwork(class_out)  # [B, K, C/8]
        _, cu, hu, wu = upscaled.shape
        logits = (hyper @ upscaled.reshape(b, cu, hu * wu)).reshape(b, -1, hu, wu)
        return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)


class AuxiliaryHead(nn.Module):
    """Feature-pyramid head over multi-scale encoder features, classified at the finest level.

    Level i is projected to `dim` channels and resampled by 2**log_scales[i], merged top-down
    like an FPN, classified, then upsampled to the input. For SAM's ViT, the levels are token
    maps [B, h, w, in_dim] of intermediate blocks, all at stride 16, so they are resampled to
    strides 4, 8, 16, 32 (ViTDet's simple pyramid; `log_scales` default). For SAM2's Hiera they
    are the FPN neck's real levels [B, in_dim, h_i, w_i] (`channels_last=False`, all
    `log_scales` 0).
    """

    def __init__(self, in_dim: int, num_levels: int, num_classes: int, dim: int,
                 log_scales: tuple[int, ...] | None = None, channels_last: bool = True) -> None:
        super().__init__()
        if log_scales is None:
            log_scales = tuple(num_levels - 2 - i for i in range(num_levels))  # 4, 8, 16, 32 for n = 4
        self.channels_last = channels_last
        self.levels = nn.ModuleList()
        for log_scale in log_scales:  # upsample by 2**log_scale (negative: downsample)
            layers: list[nn.Module] = [nn.Conv2d(in_dim, dim, kernel_size=1, bias=False), LayerNorm2d(dim)]
            for _ in range(max(log_scale, 0)):
                layers += [nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2), nn.GELU()]
            if log_scale < 0:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            self.levels.append(nn.Sequential(*layers))
        self.smooth = nn.Sequential(nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False), LayerNorm2d(dim),
                                    nn.GELU())
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=1.0 / math.sqrt(dim))

    def forward(self, features: list[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        """features: one map per level, finest level first."""
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        pyramid = [level(f) for level, f in zip(self.levels, features, strict=True)]
        merged = pyramid[-1]
        for finer in reversed(pyramid[:-1]):
            merged = finer + F.interpolate(merged, size=finer.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.smooth(merged))
        return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
