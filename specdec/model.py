"""One lean Llama-family runner: static KV cache, tree attention, in-place KV commit."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import ACT2FN

from specdec.kernels import commit_kv

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclass
class ModelArgs:
    """Shape of a Llama-family decoder, read from a Hugging Face config."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    sliding_window: int | None = None
    hf_config: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_hf(cls, cfg: dict) -> "ModelArgs":
        """Build from a config.json dict (llama, mistral or qwen2)."""
        model_type = cfg.get("model_type", "llama")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {model_type!r} is not supported; "
                             f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        n_heads = cfg["num_attention_heads"]
        if cfg.get("hidden_act", "silu") not in ACT2FN:
            raise ValueError(f"unknown hidden_act {cfg['hidden_act']!r}")
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", model_type == "mistral") else None
        return cls(
            vocab_size=cfg["vocab_size"],
            dim=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
            intermediate_size=cfg["intermediate_size"],
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
            o_bias=model_type != "qwen2" and bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            hidden_act=cfg.get("hidden_act", "silu"),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            sliding_window=window,
            hf_config=cfg,
        )


def rope_inv_freq(args: ModelArgs) -> tuple[Tensor, float]:
    """Inverse frequencies and attention scaling for any rope type transformers knows (llama3, linear, yarn...)."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = dict(args.hf_config)
    hf = AutoConfig.for_model(cfg.pop("model_type", "llama"), **cfg)
    params = hf.rope_parameters
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = params["rope_theta"]
        dims = torch.arange(0, args.head_dim, 2, dtype=torch.int64).float()
        return 1.0 / (base ** (dims / args.head_dim)), 1.0
    if rope_type in ("dynamic", "longrope"):
        raise ValueError(f"{rope_type} rope scaling is not supported: its frequencies change with the sequence length "
                         "(past original_max_position_embeddings), which one static rope table cannot express")
    return ROPE_INIT_FUNCTIONS[rope_type](hf, "cpu")


def rope_tables(args: ModelArgs, length: int, dtype: torch.dtype, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """cos and sin [length, head_dim] for positions 0..length-1."""
    inv_freq, scale = rope_inv_freq(args)
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq.float())
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scale).to(dtype).to(device), (emb.sin() * scale).to(dtype).to(device)


class RMSNorm(nn.Module):
    """Llama RMSNorm, computed in fp32 like the reference."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Grouped-query attention over the static cache; q, k and v share one fused projection (reading `in_dim`
    features: the model width unless a draft layer reads more, as EAGLE-3's does)."""

    def __init__(self, args: ModelArgs, in_dim: int | None = None):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        qkv_out = (args.n_heads + 2 * args.n_kv_heads) * args.head_dim
        self.wqkv = nn.Linear(in_dim or args.dim, qkv_out, bias=args.qkv_bias)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=args.o_bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kv: Tensor, start: int | Tensor, mask: Tensor | None,
                layer: int | None = None) -> Tensor:
        """x [k, in] after `start` committed slots of this layer's cache [2, kv_heads, slots, head_dim]: kv, or
        kv[layer] of a whole cache; or a batch of rows: x [R, k, in], a cache [2, R, kv_heads, slots, head_dim],
        start [R, k] each new node's slot, mask [R, 1, k, T]."""
        q, k, v = self._project(x, cos, sin)
        cache = kv if layer is None else kv[layer]
        if cache.dim() == 5:
            rows = torch.arange(x.shape[0], device=x.device)[:, None]
            cache[0][rows, :, start] = k.transpose(1, 2)  # [R, k, kv_heads, head_dim]: row r's node i at start[r, i]
            cache[1][rows, :, start] = v.transpose(1, 2)
            span = mask.shape[-1]
            return self._attend(q, cache[0, :, :, :span], cache[1, :, :, :span], mask, False, x.dtype)
        k_new = x.shape[0]
        if isinstance(start, Tensor):
            # static shapes (compiled steps): the committed length is a tensor and the mask [k, T] says how many slots
            # are attended. The write indexes kv itself, not a view of it: a compiler then writes the slots in place,
            # where a write into a view of the whole cache makes it copy that cache around each layer.
            device = x.device
            heads = torch.arange(self.n_kv_heads, device=device)[:, None]
            slots = start + torch.arange(k_new, device=device)
            lead = () if layer is None else (torch.full((1,), layer, device=device),)
            for i, new in enumerate((k, v)):
                kv.index_put_((*lead, torch.full((1,), i, device=device), heads, slots), new)
            span = mask.shape[-1]
            keys, values = cache[0, :, :span], cache[1, :, :span]
        else:
            end = start + k_new
            cache[0, :, start:end] = k
            cache[1, :, start:end] = v
            keys, values = cache[0, :, :end], cache[1, :, :end]
        is_causal = mask is None and start == 0 and k_new > 1
        return self._attend(q[None], keys[None], values[None], mask, is_causal, x.dtype)[0]

    def _project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v as [..., heads, k, head_dim], rope applied."""
        *lead, k_new, _ = x.shape
        q, k, v = self.wqkv(x).split(
            [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim], dim=-1
        )
        q = apply_rope(q.view(*lead, k_new, self.n_heads, self.head_dim).transpose(-3, -2), cos, sin)
        k = apply_rope(k.view(*lead, k_new, self.n_kv_heads, self.head_dim).transpose(-3, -2), cos, sin)
        return q, k, v.view(*lead, k_new, self.n_kv_heads, self.head_dim).transpose(-3, -2)

    def _attend(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, is_causal: bool,
                dtype: torch.dtype) -> Tensor:
        """q [B, heads, k, head_dim] over keys/values [B, kv_heads, T, head_dim] -> [B, k, dim]."""
        if q.shape[-2] == 1 and q.device.type == "cpu" and dtype != torch.float32:
            # PyTorch's CPU attention for one bf16 query is 3-5x slower than in fp32 and grows fastest with the cache
            q, keys, values = q.float(), keys.float(), values.float()
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=is_causal,
                                             enable_gqa=self.n_heads != self.n_kv_heads)
        return self.wo(out.transpose(1, 2).flatten(2).to(dtype))


class FeedForward(nn.Module):
    """SwiGLU MLP with the gate and up projections fused."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w13 = nn.Linear(args.dim, 2 * args.intermediate_size, bias=args.mlp_bias)
        self.w2 = nn.Linear(args.intermediate_size, args.dim, bias=args.mlp_bias)
        self.act = ACT2FN[args.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(self.act(gate) * up)


class Block(nn.Module):
    """One pre-norm decoder layer."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kv: Tensor, start: int | Tensor, mask: Tensor | None,
                layer: int | None = None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, kv, start, mask, layer)
        return h + self.feed_forward(self.ffn_norm(h))


@dataclass
class ForwardOut:
    """Logits for the requested nodes, the final-norm hidden states, and any requested layer outputs."""

    logits: Tensor
    hidden: Tensor
    layers: dict[int, Tensor]


class Transformer(nn.Module):
    """A Llama/Mistral/Qwen2 decoder for speculative decoding.

    `forward` writes one sequence's new nodes' K/V after the committed prefix in self.kv; `commit` keeps the accepted
    ones. `forward_rows` runs a batch of sequences over a batch cache (specdec.batch).
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.kv: Tensor | None = None
        self.length = 0
        self.max_seq_len = 0

    def appended(self, start: int, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """Rope rows (cos, sin) and attention mask [n, start + n] of n tokens appended causally after start cached
        ones: what a draft module needs to write the K/V of newly committed tokens into its own cache."""
        device = self.rope_cos.device
        positions = torch.arange(start, start + n, device=device)
        mask = torch.ones(n, start + n, dtype=torch.bool, device=device)
        mask[:, start:] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        return self.rope_cos[positions], self.rope_sin[positions], mask

    def setup_cache(self, max_seq_len: int, spare: int = 0) -> None:
        """Allocate the static KV cache [layers, 2, kv_heads, max_seq_len + spare, head_dim] and rope tables;
        `spare` slots past the context take a padded static step's padding nodes."""
        a = self.args
        if a.sliding_window is not None and max_seq_len > a.sliding_window:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's sliding window {a.sliding_window}")
        w = self.tok_embeddings.weight  # not output: an int8 lm_head would dequantise itself to answer
        size = max_seq_len + spare
        self.kv = torch.zeros(a.n_layers, 2, a.n_kv_heads, size, a.head_dim, dtype=w.dtype, device=w.device)
        self.rope_cos, self.rope_sin = rope_tables(a, size, w.dtype, w.device)
        self.max_seq_len = max_seq_len
        self.length = 0

    def reset(self) -> None:
        """Forget the committed prefix (the cache memory is reused)."""
        self.length = 0

    @torch.no_grad()
    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        tree_mask: Tensor | None = None,
        logits_for: Tensor | slice | None = None,
        hidden_layers: tuple[int, ...] = (),
    ) -> ForwardOut:
        """Run k new nodes after the committed prefix.

        tree_mask[i, j] says node i sees node j (None: causal chain); positions default to the chain's.
        """
        if self.kv is None:
            raise RuntimeError("call setup_cache(max_seq_len) before forward")
        k = tokens.shape[0]
        start = self.length
        if start + k > self.max_seq_len:
            raise ValueError(f"{start + k} tokens exceed the cache of {self.max_seq_len}")
        if positions is None:
            positions = torch.arange(start, start + k, device=tokens.device)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        mask = None
        if tree_mask is not None or (start > 0 and k > 1):
            if tree_mask is None:
                tree_mask = torch.ones(k, k, dtype=torch.bool, device=tokens.device).tril()
            mask = torch.cat((torch.ones(k, start, dtype=torch.bool, device=tokens.device), tree_mask), dim=1)
        hidden, layers = self._decoder(tokens, cos, sin, start, mask, hidden_layers)
        logits = self.output(hidden if logits_for is None else hidden[logits_for])
        return ForwardOut(logits=logits, hidden=hidden, layers=layers)

    @torch.no_grad()
    def static_forward(self, tokens: Tensor, positions: Tensor, mask: Tensor, start: Tensor,
                       hidden_layers: tuple[int, ...] = ()) -> tuple[Tensor, Tensor, dict[int, Tensor]]:
        """`forward` with shapes that depend only on k and the mask's width: the committed length is a 0-dim tensor,
        the new nodes' K/V go to slots start..start+k-1, and node i sees the slots mask[i] ([k, T]) allows, T at
        most the cache's slots; so one captured graph (CUDA graphs, torch.compile) serves every step of k nodes."""
        hidden, layers = self._decoder(tokens, self.rope_cos[positions], self.rope_sin[positions], start, mask,
                                       hidden_layers)
        return self.output(hidden), hidden, layers

    @torch.no_grad()
    def forward_rows(self, tokens: Tensor, positions: Tensor, mask: Tensor, kv: Tensor, starts: Tensor,
                     hidden_layers: tuple[int, ...] = ()) -> ForwardOut:
        """A batch of rows, each after its own committed prefix: tokens and positions [R, k]; row r's node i is
        written at slot starts[r] + i of kv [layers, 2, R, kv_heads, slots, head_dim] (a batch cache, not self.kv)
        and sees the slots mask[r, i] allows (mask [R, k, T]: slots 0..T-1). Logits and hidden states [R, k, ...]."""
        slots = starts[:, None] + torch.arange(tokens.shape[1], device=tokens.device)
        cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)
        hidden, layers = self._decoder(tokens, cos, sin, slots, mask.unsqueeze(1), hidden_layers, kv)
        return ForwardOut(self.output(hidden), hidden, layers)

    def _decoder(self, tokens: Tensor, cos: Tensor, sin: Tensor, start: int | Tensor, mask: Tensor | None,
                 hidden_layers: tuple[int, ...], kv: Tensor | None = None) -> tuple[Tensor, dict[int, Tensor]]:
        kv = self.kv if kv is None else kv
        x = self.tok_embeddings(tokens)
        layers: dict[int, Tensor] = {}
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, kv, start, mask, i)
            if i in hidden_layers:
                layers[i] = x
        return self.norm(x), layers

    def commit(self, accepted: Tensor | None, n_written: int) -> None:
        """Keep the K/V of `accepted` nodes (indices into the last forward, ascending), or all `n_written`."""
        if accepted is None:
            self.length += n_written
            return
        n, device = accepted.shape[0], accepted.device
        # the one-row case of the batch commit (full() launches a fill, no host-to-device copy)
        commit_kv(self.kv.unsqueeze(2), torch.full((1,), self.length, device=device), accepted[None],
                  torch.full((1,), n, device=device))
        self.length += n
