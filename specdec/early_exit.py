"""Early-exit self-speculation's pieces: which backbone layers draft, and the exit adapter (Kangaroo style).

Drafting runs a subset of the backbone's own layers (the first E for early exit, any ascending set for SWIFT-style
layer skipping) and an exit head. The training-free head is the backbone's final norm and lm_head as they are; the
trained one first passes the last drafting layer's output through one light decoder block of the backbone's shape
(started from the backbone's layer E, so it begins as "one more layer"), then its own final norm, and scores a draft
vocabulary of frequent tokens through the backbone's lm_head rows. The block attends over its own small KV cache;
the drafting layers use the backbone's cache (specdec.drafters.early_exit).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from specdec.checkpoint import load_module, resolve_weights, save_heads
from specdec.model import Block, ModelArgs, RMSNorm, Transformer

KIND = "early-exit"
SHIPPED = ("early-exit",)


def exit_layers(n_layers: int, exit_layer: int | None = None, layers: str | list[int] | None = None) -> tuple[int, ...]:
    """The backbone layers a draft runs, ascending: `layers` as given (a list or "0,1,5-8"), else 0..exit_layer-1.
    Errors name the valid range."""
    if layers is None:
        if exit_layer is None:
            raise ValueError("give exit_layer (draft through the first E layers) or layers (any set of layer indices)")
        if not 1 <= exit_layer < n_layers:
            raise ValueError(f"exit_layer must be in 1..{n_layers - 1} (the backbone has {n_layers} layers), "
                             f"got {exit_layer}")
        return tuple(range(exit_layer))
    if isinstance(layers, str):
        picked: list[int] = []
        for part in layers.replace(" ", "").split(","):
            lo, _, hi = part.partition("-")
            try:
                picked += range(int(lo), int(hi or lo) + 1)
            except ValueError:
                raise ValueError(f"layers {layers!r}: expected a comma list of indices or ranges like 0-5,8") from None
        layers = picked
    chosen = tuple(sorted(set(int(i) for i in layers)))
    if not chosen or chosen[0] < 0 or chosen[-1] >= n_layers or len(chosen) == n_layers:
        raise ValueError(f"layers {list(layers)} must be a proper, non-empty subset of 0..{n_layers - 1}")
    return chosen


@dataclass
class AdapterConfig:
    """An exit adapter: the backbone layers it was trained to follow and its draft vocabulary size (0: all)."""

    dim: int
    vocab_size: int
    layers: list[int]
    draft_vocab: int = 0

    def __post_init__(self):
        if not 0 <= self.draft_vocab <= self.vocab_size:
            raise ValueError(f"draft_vocab must be in [0, {self.vocab_size}], got {self.draft_vocab}")


class ExitAdapter(nn.Module):
    """One decoder block and a final norm between the last drafting layer's output and the backbone's lm_head."""

    def __init__(self, config: AdapterConfig, args: ModelArgs):
        super().__init__()
        if (config.dim, config.vocab_size) != (args.dim, args.vocab_size):
            raise ValueError(f"adapter (dim {config.dim}, vocab {config.vocab_size}) does not fit a backbone with "
                             f"dim {args.dim} and vocab {args.vocab_size}")
        self.config = config
        self.layer = Block(args)
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.register_buffer("vocab_ids", torch.arange(config.draft_vocab or config.vocab_size))

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.config.layers)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, kv: Tensor, start: int | Tensor,
                mask: Tensor | None) -> Tensor:
        """The last drafting layer's outputs h -> normed features for the lm_head; K/V written to kv as a Block's."""
        return self.norm(self.layer(h, cos, sin, kv, start, mask))

    def draft_lm_head(self, lm_head: Tensor) -> Tensor:
        """The backbone lm_head's rows the adapter scores."""
        return lm_head[self.vocab_ids] if self.config.draft_vocab else lm_head

    def new_cache(self, length: int) -> Tensor:
        """An empty KV cache [2, kv_heads, length, head_dim] for the block."""
        attn, w = self.layer.attention, self.norm.weight
        return torch.zeros(2, attn.n_kv_heads, length, attn.head_dim, dtype=w.dtype, device=w.device)


def new_adapter(model: Transformer, layers: tuple[int, ...], vocab_ids: Tensor | None = None) -> ExitAdapter:
    """A fresh fp32 adapter after `layers`: its block copies the backbone's next layer (the one after the last drafting
    layer), its norm the final norm; vocab_ids: the draft vocabulary (None: the whole vocabulary)."""
    a = model.args
    adapter = ExitAdapter(AdapterConfig(a.dim, a.vocab_size, list(layers),
                                        0 if vocab_ids is None else len(vocab_ids)), a)
    nxt = model.layers[layers[-1] + 1]
    state = {k: v.float() for k, v in block_state(nxt).items()}
    adapter.layer.load_state_dict(state)
    with torch.no_grad():
        adapter.norm.weight.copy_(model.norm.weight.float())
        if vocab_ids is not None:
            adapter.vocab_ids.copy_(vocab_ids)
    return adapter.to(model.tok_embeddings.weight.device)


def block_state(block: Block) -> dict[str, Tensor]:
    """A backbone Block's weights in nn.Linear layout (packed or int8 linears read their `weight` dense)."""
    state = {f"{norm}.weight": getattr(block, norm).weight.detach() for norm in ("attention_norm", "ffn_norm")}
    for name in ("attention.wqkv", "attention.wo", "feed_forward.w13", "feed_forward.w2"):
        linear = block.get_submodule(name)
        state[f"{name}.weight"] = linear.weight.detach()
        if linear.bias is not None:
            state[f"{name}.bias"] = linear.bias.detach()
    return state


def save_adapter(path: str | Path, adapter: ExitAdapter, model: Transformer, extra: dict | None = None) -> Path:
    """safetensors + config.json with the backbone fingerprint and any extra metadata (training command, eval)."""
    return save_heads(path, KIND, asdict(adapter.config), adapter.state_dict(), model, extra)


def load_adapter(path: str | Path, model: Transformer) -> tuple[ExitAdapter, dict]:
    """An adapter from a directory or the shipped name, on the backbone's device and dtype; plus its metadata."""
    path = resolve_weights(path, model, SHIPPED)
    adapter, meta = load_module(path, KIND, model, lambda cfg: ExitAdapter(AdapterConfig(**cfg), model.args))
    exit_layers(model.args.n_layers, layers=adapter.layers)  # a clear error for layers this backbone lacks
    w = model.tok_embeddings.weight
    return adapter.to(device=w.device, dtype=w.dtype).eval().requires_grad_(False), meta
