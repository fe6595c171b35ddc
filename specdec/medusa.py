"""Medusa draft heads over a frozen backbone, with optional trigram conditioning; checkpoints in and out.

Head i reads the backbone's final hidden state h_t and predicts token t+2+i (t+1 is the backbone's own).
A trigram head first adds a learned projection of the embeddings of tokens t-1 and t to h_t (or, with
trigram_tokens="pending", of t and t+1: the pending token is the backbone's own choice, known when drafting).
Unlike Hydra's heads, which read the embeddings of the tokens drafted before them (one head after another),
these read only verified tokens, so all heads run as one batched step and the tree stays a top-k product.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specdec.checkpoint import load_module, read_config, resolve_weights, save_heads
from specdec.model import Transformer

KIND = "medusa"
SHIPPED = ("medusa", "medusa-trigram")
TRIGRAM_TOKENS = {"context": slice(0, 2), "pending": slice(1, 3)}  # columns of (t-1, t, t+1)


@dataclass
class MedusaConfig:
    """Head count, residual blocks per head, which heads are trigram-conditioned, and who owns the lm_head."""

    dim: int
    vocab_size: int
    num_heads: int = 4
    num_layers: int = 1
    trigram: list[bool] = field(default_factory=list)  # per head; empty: none
    own_lm_head: bool = False  # Medusa's original layout: a trainable copy of lm_head per head
    draft_vocab: int = 0  # >0: heads score only this many frequent tokens (FR-Spec's cut), 0: the whole vocabulary
    trigram_tokens: str = "context"  # "context": tokens (t-1, t); "pending": (t, t+1)

    def __post_init__(self):
        if isinstance(self.trigram, bool):
            self.trigram = [self.trigram] * self.num_heads
        self.trigram = list(self.trigram) or [False] * self.num_heads
        if self.trigram_tokens not in TRIGRAM_TOKENS:
            raise ValueError(f"trigram_tokens must be one of {sorted(TRIGRAM_TOKENS)}, got {self.trigram_tokens!r}")
        if not 0 <= self.draft_vocab <= self.vocab_size:
            raise ValueError(f"draft_vocab must be in [0, {self.vocab_size}], got {self.draft_vocab}")
        if self.num_heads < 1 or self.num_layers < 0 or len(self.trigram) != self.num_heads:
            raise ValueError(f"bad Medusa config: {self.num_heads} heads, {self.num_layers} layers, "
                             f"trigram={self.trigram}")


class ResBlock(nn.Module):
    """x + SiLU(W x + b), zero-initialised so a new head starts as the identity."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.silu(self.linear(x))


class MedusaHead(nn.Module):
    """One head: optional trigram context projection, residual blocks (distinct modules), optional own lm_head."""

    def __init__(self, config: MedusaConfig, trigram: bool):
        super().__init__()
        d = config.dim
        self.context = nn.Linear(2 * d, d, bias=False) if trigram else None
        if self.context is not None:
            nn.init.zeros_(self.context.weight)
        self.blocks = nn.Sequential(*(ResBlock(d) for _ in range(config.num_layers)))
        self.lm_head = nn.Linear(d, config.draft_vocab or config.vocab_size, bias=False) if config.own_lm_head else None

    def features(self, hidden: Tensor, context: Tensor | None) -> Tensor:
        if self.context is not None:
            hidden = hidden + self.context(context)
        return self.blocks(hidden)


class MedusaHeads(nn.Module):
    """K heads; forward gives logits [K, n, draft vocab] for n positions (backbone embeddings and lm_head passed in).

    With a draft vocabulary, `vocab_ids` maps a logit's index to its token id."""

    def __init__(self, config: MedusaConfig):
        super().__init__()
        self.config = config
        self.heads = nn.ModuleList(MedusaHead(config, t) for t in config.trigram)
        self.register_buffer("vocab_ids", torch.arange(config.draft_vocab or config.vocab_size))

    def draft_lm_head(self, lm_head: Tensor) -> Tensor:
        """The backbone lm_head's rows the heads score (all of them without a draft vocabulary)."""
        return lm_head[self.vocab_ids] if self.config.draft_vocab else lm_head

    def forward(self, hidden: Tensor, context_ids: Tensor | None, embed: Tensor,
                lm_head: Tensor | Callable[[Tensor], Tensor]) -> Tensor:
        """hidden [n, d] at positions t; context_ids [n, 3] = tokens (t-1, t, t+1), needed only by trigram heads;
        lm_head: draft_lm_head(backbone lm_head), taken once by the caller, or a function applying it (packed)."""
        context = None
        if any(self.config.trigram):
            if context_ids is None:
                raise ValueError("trigram heads need context_ids: the tokens at t-1, t and t+1")
            pair = context_ids[:, TRIGRAM_TOKENS[self.config.trigram_tokens]]
            context = F.embedding(pair, embed).flatten(-2).to(hidden.dtype)
        feats = torch.stack([h.features(hidden, context) for h in self.heads])
        if self.config.own_lm_head:
            return torch.stack([h.lm_head(f) for h, f in zip(self.heads, feats)])
        k, n, d = feats.shape
        flat = feats.reshape(k * n, d)  # one matmul: lm_head is read once
        return (lm_head(flat) if callable(lm_head) else F.linear(flat, lm_head)).view(k, n, -1)

    def init_lm_heads(self, lm_head: Tensor) -> None:
        """Start head-owned lm_heads as copies of the backbone's (its draft-vocabulary rows)."""
        for h in self.heads:
            if h.lm_head is not None:
                h.lm_head.weight.data.copy_(self.draft_lm_head(lm_head))


def save_medusa(path: str | Path, heads: MedusaHeads, model: Transformer, extra: dict | None = None) -> Path:
    """Save heads as safetensors + config.json (with the backbone fingerprint and any extra metadata)."""
    return save_heads(path, KIND, asdict(heads.config), heads.state_dict(), model, extra)


def load_official_medusa(path: Path, model: Transformer) -> MedusaHeads:
    """FasterDecoding's layout: config.json (medusa_num_heads, medusa_num_layers) + medusa_lm_head.{safetensors,pt}."""
    cfg = json.loads((path / "config.json").read_text())
    n_heads, n_layers = int(cfg["medusa_num_heads"]), int(cfg.get("medusa_num_layers", 1))
    if (path / "medusa_lm_head.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(path / "medusa_lm_head.safetensors"))
    elif (path / "medusa_lm_head.pt").is_file():
        try:
            state = torch.load(path / "medusa_lm_head.pt", map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors; a cut file fails to unzip
            raise ValueError(f"cannot read {path / 'medusa_lm_head.pt'} as plain tensors (corrupt?): {e}") from e
    else:
        raise FileNotFoundError(f"{path} has a Medusa config.json but no medusa_lm_head.safetensors or .pt")
    head_w = state.get(f"0.{n_layers}.weight")
    if head_w is None:
        raise ValueError(f"{path}: no key '0.{n_layers}.weight': not the Medusa head layout")
    if tuple(head_w.shape) != (model.args.vocab_size, model.args.dim):
        raise ValueError(f"Medusa heads at {path} project {head_w.shape[1]} -> {head_w.shape[0]}, but this backbone "
                         f"has dim {model.args.dim} and vocab {model.args.vocab_size}: they belong to another backbone")
    missing = [k for i in range(n_heads)
               for k in [f"{i}.{j}.linear.{p}" for j in range(n_layers) for p in ("weight", "bias")]
               + [f"{i}.{n_layers}.weight"] if k not in state]
    if missing:
        raise ValueError(f"{path}: config.json claims {n_heads} heads of {n_layers} blocks but the weights lack "
                         f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    heads = MedusaHeads(MedusaConfig(model.args.dim, model.args.vocab_size, n_heads, n_layers, own_lm_head=True))
    ours = {}
    for i in range(n_heads):
        for j in range(n_layers):
            for p in ("weight", "bias"):
                ours[f"heads.{i}.blocks.{j}.linear.{p}"] = state[f"{i}.{j}.linear.{p}"]
        ours[f"heads.{i}.lm_head.weight"] = state[f"{i}.{n_layers}.weight"]
    try:
        heads.load_state_dict({**ours, "vocab_ids": heads.vocab_ids})
    except RuntimeError as e:
        raise ValueError(f"Medusa heads at {path} do not fit this backbone (dim {model.args.dim}): {e}") from e
    return heads


def load_vllm_medusa(path: Path, model: Transformer) -> MedusaHeads:
    """vLLM's Medusa layout (what specdec.export writes): config.json (num_heads, num_hidden_layers,
    truncated_vocab_size, original_lm_head) + blocks.{i}.layers.{j}, lm_heads.{i} (one shared with original_lm_head),
    token_map for a draft vocabulary. A shared lm_head equal to the backbone's rows is read as the backbone's."""
    from specdec.backbone import read_hf_state

    cfg = json.loads((path / "config.json").read_text())
    args, hf = model.args, read_hf_state(path)
    if (cfg.get("hidden_size"), cfg.get("vocab_size")) != (args.dim, args.vocab_size):
        raise ValueError(f"Medusa heads at {path} have hidden size {cfg.get('hidden_size')} and vocab "
                         f"{cfg.get('vocab_size')}, this backbone {args.dim} and {args.vocab_size}")
    n_heads, n_layers = int(cfg["num_heads"]), int(cfg.get("num_hidden_layers", 1))
    vocab_ids = hf.get("token_map", torch.arange(args.vocab_size)).long()
    draft_vocab = len(vocab_ids) if len(vocab_ids) < args.vocab_size else 0
    heads_w = [hf.get(f"lm_heads.{0 if cfg.get('original_lm_head') else i}.weight") for i in range(n_heads)]
    if any(w is None for w in heads_w):
        raise ValueError(f"{path}: lm_heads.* missing: not vLLM's Medusa layout")
    heads_w = [w[vocab_ids] if w.shape[0] > len(vocab_ids) else w for w in heads_w]
    backbone_rows = model.output.weight[vocab_ids.to(model.output.weight.device)].float().cpu()
    own = not (cfg.get("original_lm_head") and torch.allclose(heads_w[0].float(), backbone_rows, rtol=1e-2, atol=1e-3))
    heads = MedusaHeads(MedusaConfig(args.dim, args.vocab_size, n_heads, n_layers, own_lm_head=own,
                                     draft_vocab=draft_vocab))
    state = {"vocab_ids": vocab_ids[: len(heads.vocab_ids)]}
    for i in range(n_heads):
        for j in range(n_layers):
            w = hf.get(f"blocks.{i}.layers.{j}.weight")
            if w is None:
                raise ValueError(f"{path}: no blocks.{i}.layers.{j}.weight: config.json claims {n_heads} heads of "
                                 f"{n_layers} layers")
            state[f"heads.{i}.blocks.{j}.linear.weight"] = w
            state[f"heads.{i}.blocks.{j}.linear.bias"] = hf.get(f"blocks.{i}.layers.{j}.bias", torch.zeros(args.dim))
        if own:
            state[f"heads.{i}.lm_head.weight"] = heads_w[i]
    try:
        heads.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"Medusa heads at {path} do not fit this backbone (dim {args.dim}): {e}") from e
    return heads


def load_medusa(path: str | Path, model: Transformer) -> tuple[MedusaHeads, dict]:
    """Heads from our checkpoint or an official Medusa one, on the backbone's device and dtype; plus metadata."""
    path = resolve_weights(path, model, SHIPPED)
    meta = read_config(path)
    if "medusa_num_heads" in meta:
        heads, meta = load_official_medusa(path, model), {"kind": KIND, "source": "official"}
    elif meta.get("model_type") == "medusa":
        heads, meta = load_vllm_medusa(path, model), {"kind": KIND, "source": "vllm"}
    else:
        heads, meta = load_module(path, KIND, model, lambda cfg: MedusaHeads(MedusaConfig(**cfg)))
    w = model.output.weight
    return heads.to(device=w.device, dtype=w.dtype).eval().requires_grad_(False), meta
