"""Mixture of domain adapters (CoSAM's MoDA, arXiv 2412.06418) on the MoE-LoRA encoder.

A vehicle meets domains one after another (a city, a season, night, fog). Trained in sequence,
one set of weights forgets the earlier domains; MoDA keeps one adapter per learned domain next to
a frozen SAM and picks, per frame, the adapter of the domain a selector recognises. A new domain
adds an adapter and retrains the selector; every earlier adapter and the frozen weights stay as
they are, bit for bit.

What yangjl1215/CoSAM's code does, and what this module follows:
- Selector (`TaskClassifier` + `Sam.forward(cls_token=...)`): 10 learned tokens join the token
  sequence of the *frozen* SAM encoder in every block; the first token's output goes through one
  linear layer to a domain; tokens and classifier are trained from scratch after each domain on
  the replay buffer of every domain so far. Followed: learned tokens (the Global Assistant
  Tokens, GAT) through the frozen blocks' own weights (no position, no relative-position bias,
  attention over every image token even in windowed blocks, as CoSAM's global-attention path),
  one linear classifier, trained from scratch after each domain on the buffer.
- The paper's global query is built from Global Feature Tokens (GFT) and the GAT. The repository
  shows only the learned tokens; here the GFT is the average of the image tokens the selector
  reads (the global feature CoSAM's L2P baseline queries with, `embedding_key='mean'`), and the
  query is the pair (GFT, first GAT output), each layer-normed. Measured on the synthetic weather
  domains with 10 buffer frames each: the tokens alone told sun from cloud on 53-72 % of held-out
  frames, the pooled feature on 100 % (a trial on the previous synthetic world, not kept as a table).
- Replay buffer: `--buffer_size 10` frames per domain, used only to train the selector.
  Followed (the buffer holds each frame's camera image; see `continual.py`).
- Adapters: CoSAM's per-domain adapter is a whole trainable HQ-SAM decoder, chosen in Python per
  image (`adapter_pool[predicted_task]`). Here an adapter is a set of LoRA updates: of the
  encoder's q and v, indexed by modality like the MoE-LoRA experts (`qv_factors` is shared with
  `model/lora.py`), and of every linear layer of the semantic decoder (CoSAM adapts the decoder;
  a full copy per domain could not be chosen per frame inside one graph). The choice is a gather
  inside the graph: one static ONNX/TensorRT graph holds every adapter, frames of a batch may use
  different ones, nothing branches in Python.

What is simplified, and why:
- The selector reads the first `config.selector_blocks` blocks of the same encoder pass that
  segments the frame, instead of a second pass through the whole frozen encoder; the adapters
  update the remaining blocks. The selector's input then does not depend on the choice it makes,
  as in CoSAM, and choosing costs no second encoder pass (CoSAM's costs one per frame).
- The tokens read only the camera image of each frame (the RGB slot, read after the shared
  RGB expert of the earlier blocks): the camera is the clock, present in every frame the node
  outputs, and the replay buffer then holds one image per frame, not four.
- Image tokens do not attend to the GAT (CoSAM concatenates both ways in its selector-only
  pass); here the image stream is the segmentation stream and must stay what it is.

Batch layout: the encoder batch is every frame's modality images ordered (b, ..., m) as the
MoE-LoRA experts want (TA-LoRA's (b, t, m) too); the RGB slot is the first image of each frame;
the decoder's inputs lead with the frame. Hooks carry the per-frame choice from the selector's
last block to the adapted projections and decoder layers within one `DomainAdapterPool.frames(...)`
pass. Outside such a pass the hooks do nothing: the model is the shared one (experts only).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sam_mmseg_ros.model.config import ModelConfig
from sam_mmseg_ros.model.lora import qv_factors


class DomainSelector(nn.Module):
    """GAT tokens that read the frozen encoder blocks, and the linear layer that names the domain
    from the global query: the GFT (average image token) with the first GAT's output."""

    def __init__(self, embed_dim: int, num_tokens: int, num_domains: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(num_tokens, embed_dim))  # CoSAM: torch.randn
        # The GFT's mean and spread and the GAT differ in scale: each gets its own norm.
        self.mean_norm = nn.LayerNorm(embed_dim)
        self.spread_norm = nn.LayerNorm(embed_dim)
        self.token_norm = nn.LayerNorm(embed_dim)
        self.classifier = nn.Linear(3 * embed_dim, num_domains)

    def read(self, block: nn.Module, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """tokens [B, G, C] after one frozen ViT block: they attend to themselves and to every
        token of `image` [B, H, W, C] (the block's input) with the block's own norm, q/k/v,
        projection and MLP, SAM's weights only (no LoRA). The image is not changed."""
        attn = block.attn
        frames, count, dim = tokens.shape
        heads = attn.num_heads
        weight, bias = attn.qkv.weight, attn.qkv.bias
        normed = block.norm1(tokens)
        q, k, v = F.linear(normed, weight, bias).reshape(frames, count, 3, heads, -1).permute(2, 0, 3, 1, 4)
        # Keys and values of the image tokens: rows dim..3*dim of SAM's fused projection.
        kv_image = F.linear(block.norm1(image).reshape(frames, -1, dim), weight[dim:],
                            None if bias is None else bias[dim:])
        k_image, v_image = kv_image.reshape(frames, -1, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
        keys, values = torch.cat([k, k_image], dim=2), torch.cat([v, v_image], dim=2)
        # Plain softmax(QK^T)V: G = 10 queries, and the form every exporter and engine takes.
        scores = (q * (dim // heads) ** -0.5) @ keys.transpose(-2, -1)
        out = (scores.softmax(dim=-1) @ values).transpose(1, 2).reshape(frames, count, dim)
        tokens = tokens + attn.proj(out)
        return tokens + block.mlp(block.norm2(tokens))

    def query(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The global query [B, 3C]: the GFT (mean and standard deviation over the image tokens of
        `image` [B, H, W, C], the last block's output: a condition is global, in colour and in
        contrast) and the first GAT [B, C] of `tokens`, each layer-normed."""
        flat = image.flatten(1, 2)
        mean = flat.mean(dim=1)
        spread = (flat - mean[:, None]).square().mean(dim=1).sqrt()
        return torch.cat([self.mean_norm(mean), self.spread_norm(spread), self.token_norm(tokens[:, 0])], dim=-1)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """Domain logits [B, D]."""
        return self.classifier(query)


def _lora_a(*shape: int) -> nn.Parameter:
    """A LoRA down-projection [..., fan_in, r] with nn.Linear's (and peft's LoRA A) init."""
    bound = 1.0 / math.sqrt(shape[-2])  # kaiming_uniform(a=sqrt(5))
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class DomainAdapter(nn.Module):
    """One domain's LoRA updates: q and v of each adapted encoder block per modality (like the
    experts), and each linear layer of the decoder (`decoder_shapes`: their (in, out)).

    A with nn.Linear's init, B zero: a new adapter changes nothing until it is trained, unless it
    starts as a copy of another."""

    def __init__(self, blocks: int, modalities: int, dim: int, out_dim: int, rank: int,
                 decoder_shapes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.a_q = _lora_a(blocks, modalities, dim, rank)
        self.b_q = nn.Parameter(torch.zeros(blocks, modalities, rank, out_dim))
        self.a_v = _lora_a(blocks, modalities, dim, rank)
        self.b_v = nn.Parameter(torch.zeros(blocks, modalities, rank, out_dim))
        self.decoder_a = nn.ParameterList(_lora_a(fan_in, rank) for fan_in, _ in decoder_shapes)
        self.decoder_b = nn.ParameterList(nn.Parameter(torch.zeros(rank, fan_out)) for _, fan_out in decoder_shapes)


@dataclass
class DomainPass:
    """What one encoder pass knows about its frames' domains; read it after the pass."""

    frames: int
    forced: torch.Tensor | None  # int64 [B]: use these adapters (training), else the selector's
    tokens: torch.Tensor | None = None  # GAT [B, G, C] while the selector blocks run
    query: torch.Tensor | None = None  # [B, 3C], what the classifier read
    logits: torch.Tensor | None = None  # [B, D]
    selected: torch.Tensor | None = None  # int64 [B], the adapter each frame used
    confidence: torch.Tensor | None = None  # float32 [B], selector probability of `selected`
    factors: tuple[torch.Tensor, torch.Tensor] | None = None  # gathered A [B, L, M, dim, 2r], B
    decoder_factors: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per decoder layer [B, in, r], B


class DomainAdapterPool(nn.Module):
    """The adapters of every learned domain and the selector, hooked into a ViT encoder.

    `config.domains` names the adapters in the order they were learned. `pinned` (-1: the
    selector decides) makes every frame use one adapter, inside the graph: an exported model keeps
    its pin as a constant.
    """

    def __init__(self, encoder: nn.Module, config: ModelConfig, decoder: nn.Module | None = None) -> None:
        super().__init__()
        blocks = list(getattr(encoder, "blocks", ()))
        split = config.selector_blocks
        if not blocks or not all(hasattr(b, "norm1") and hasattr(getattr(b, "attn", None), "qkv") for b in blocks):
            raise ValueError(f"domain adapters need a SAM ViT encoder, not {type(encoder).__name__}")
        if not 1 <= split < len(blocks):
            raise ValueError(f"the selector reads {split} of {len(blocks)} blocks: none would be left to adapt")
        self.names = tuple(config.domains)
        self.split = split
        self.num_modalities = config.num_modalities
        self.scale = config.lora_alpha / config.lora_rank
        self.selector = DomainSelector(config.embed_dim, config.domain_tokens, len(self.names))
        out_dim = blocks[split].attn.qkv.weight.shape[0] // 3
        # Every linear layer of the decoder runs on [frames, tokens, features]: one update per frame.
        linears = [m for m in decoder.modules() if isinstance(m, nn.Linear)] if decoder is not None else []
        shapes = [(m.in_features, m.out_features) for m in linears]
        self.adapters = nn.ModuleList(
            DomainAdapter(len(blocks) - split, config.num_modalities, config.embed_dim, out_dim, config.lora_rank,
                          shapes)
            for _ in self.names)
        self.register_buffer("pinned", torch.tensor(-1, dtype=torch.long), persistent=False)
        self._pass: DomainPass | None = None
        for block in blocks[:split]:
            block.register_forward_pre_hook(self._read)
        blocks[split - 1].register_forward_hook(self._select)
        for index, block in enumerate(blocks[split:]):
            block.attn.qkv.register_forward_hook(functools.partial(self._adapt, index))
        for index, linear in enumerate(linears):
            linear.register_forward_hook(functools.partial(self._adapt_decoder, index))

    def index(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"unknown domain {name!r}; this model knows {list(self.names)}")
        return self.names.index(name)

    def pin(self, name: str | None) -> None:
        """Use `name`'s adapter for every frame (None: let the selector choose)."""
        self.pinned.fill_(-1 if name is None else self.index(name))

    @property
    def pinned_name(self) -> str | None:
        index = int(self.pinned)
        return None if index < 0 else self.names[index]

    @contextlib.contextmanager
    def frames(self, num_frames: int, domain: torch.Tensor | None = None) -> Iterator[DomainPass]:
        """Within the block, encoder calls are one pass over `num_frames` frames; `domain` [B]
        forces their adapters (training a domain on its own frames). Yields the pass record."""
        if self._pass is not None:
            raise RuntimeError("domain passes do not nest")
        self._pass = DomainPass(num_frames, domain)
        try:
            yield self._pass
        finally:
            self._pass = None

    # ------------------------------------------------------------------------ hooks

    def _read(self, block: nn.Module, args: tuple) -> None:
        """Before a selector block: the tokens read its input's RGB slot."""
        state = self._pass
        if state is None:
            return
        x = args[0]  # [S, H, W, C], S = frames x (task paths x) modalities, RGB first per frame
        image = x.reshape(state.frames, -1, *x.shape[1:])[:, 0]
        tokens = state.tokens if state.tokens is not None else self.selector.tokens.expand(state.frames, -1, -1)
        state.tokens = self.selector.read(block, tokens.to(x.dtype), image)

    def _select(self, block: nn.Module, args: tuple, output: torch.Tensor) -> None:
        """After the last selector block: each frame's domain, and its adapter's factors."""
        state = self._pass
        if state is None:
            return
        image = output.reshape(state.frames, -1, *output.shape[1:])[:, 0]  # the RGB slot, [B, H, W, C]
        state.query = self.selector.query(state.tokens, image)
        logits = self.selector(state.query)
        probs = logits.float().softmax(dim=-1)
        if state.forced is not None:
            selected = state.forced.to(device=logits.device, dtype=torch.long)
        else:
            selected = torch.where(self.pinned >= 0, self.pinned, probs.argmax(dim=-1))
        state.logits, state.selected = logits, selected
        state.confidence = probs.gather(1, selected[:, None])[:, 0]
        # Each domain keeps its own parameters (so learning one leaves the others bit-identical);
        # stacked they are one constant of the exported graph, and choosing is one gather.
        stacked = [torch.stack([getattr(adapter, name) for adapter in self.adapters])[selected]
                   for name in ("a_q", "b_q", "a_v", "b_v")]  # each [B, L, M, ...]
        a, b = qv_factors(*stacked)
        state.factors = (a.to(output.dtype), (b * self.scale).to(output.dtype))
        state.decoder_factors = [
            (torch.stack([adapter.decoder_a[i] for adapter in self.adapters])[selected],
             torch.stack([adapter.decoder_b[i] for adapter in self.adapters])[selected] * self.scale)
            for i in range(len(self.adapters[0].decoder_a))]

    def _adapt(self, layer: int, qkv: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        """After an adapted block's qkv projection: add each frame's domain update."""
        state = self._pass
        if state is None:
            return None
        x, num_samples = args[0], args[1]
        dim = x.shape[-1]
        per_frame = num_samples // state.frames  # task paths x modalities
        grouped = x.reshape(state.frames, per_frame // self.num_modalities, self.num_modalities, -1, dim)
        a, b = state.factors
        # [B, T, M, N, dim] @ [B, 1, M, dim, 2r] @ [B, 1, M, 2r, 3*out]
        delta = (grouped @ a[:, layer, None]) @ b[:, layer, None]
        return output + delta.reshape(output.shape)

    def _adapt_decoder(self, layer: int, linear: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        """After a decoder linear layer: add each frame's domain update."""
        state = self._pass
        if state is None or state.decoder_factors is None:
            return None
        a, b = state.decoder_factors[layer]  # [B, in, r], [B, r, out]
        x = args[0].reshape(state.frames, -1, a.shape[1])
        delta = (x @ a.to(x.dtype)) @ b.to(x.dtype)
        return output + delta.reshape(output.shape)


def learn_domain(model: nn.Module, name: str) -> int:
    """Make `model` ready to learn domain `name`: only that domain's adapter trains, plus, for the
    first domain, the shared parts a plain model trains (those requiring grad now: experts, router,
    heads). Every other adapter, the selector (trained apart, on the replay buffer) and the frozen
    weights get no gradient, so learning a domain leaves them bit-identical. Returns its index."""
    pool = getattr(model, "domains", None)
    if pool is None:
        raise ValueError(f"domain {name!r}: the model has no domain adapters (config adapters 'moda')")
    index = pool.index(name)
    own = {id(p) for p in pool.parameters()}
    shared = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in pool.adapters[index].parameters():
        p.requires_grad_(True)
    if index == 0:
        for p in shared:
            p.requires_grad_(True)
    return index
