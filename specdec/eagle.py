"""EAGLE draft model: fc(concat(embedding of token t+1, backbone feature f_t)) -> one decoder layer shaped like the
backbone's -> estimate of f_{t+1}, scored by the frozen lm_head; checkpoints in and out (ours and EAGLE's layout).

Features are the backbone's final-norm hidden states (what EAGLE-1/2 read). The layer has no input RMSNorm, as in
EAGLE: its input is fc's output. It keeps its own KV cache while drafting, so drafting is autoregressive.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specdec import eagle3
from specdec.checkpoint import load_module, read_config, resolve_weights, save_heads
from specdec.model import Block, ModelArgs, Transformer
from specdec.packed import linear_fn

KIND = "eagle"
SHIPPED = ("eagle", "eagle3")


@dataclass
class EagleConfig:
    """Draft model options; the decoder layer's shape is the backbone's."""

    dim: int
    vocab_size: int
    draft_vocab: int = 0  # >0: score only this many frequent tokens (FR-Spec's cut), 0: the whole vocabulary
    fc_bias: bool = True
    input_norm: bool = False  # EAGLE-1/2's draft layer skips the input RMSNorm

    def __post_init__(self):
        if not 0 <= self.draft_vocab <= self.vocab_size:
            raise ValueError(f"draft_vocab must be in [0, {self.vocab_size}], got {self.draft_vocab}")


class EagleDraft(nn.Module):
    """The draft network; forward maps (features [n, d], next tokens [n]) to predicted next features [n, d].

    Shares its interface with `specdec.eagle3.Eagle3Draft` (hidden_layers, decode_features, logits, scorer),
    so drafting, training and evaluation serve both."""

    hidden_layers: tuple[int, ...] = ()  # reads only the final hidden state

    def __init__(self, config: EagleConfig, args: ModelArgs):
        super().__init__()
        if (config.dim, config.vocab_size) != (args.dim, args.vocab_size):
            raise ValueError(f"EAGLE config (dim {config.dim}, vocab {config.vocab_size}) does not fit a backbone "
                             f"with dim {args.dim} and vocab {args.vocab_size}")
        self.config = config
        self.fc = nn.Linear(2 * config.dim, config.dim, bias=config.fc_bias)
        self.layer = Block(args)
        if not config.input_norm:
            self.layer.attention_norm = nn.Identity()
        self.register_buffer("vocab_ids", torch.arange(config.draft_vocab or config.vocab_size))

    def draft_lm_head(self, lm_head: Tensor) -> Tensor:
        """The backbone lm_head's rows the draft scores (all of them without a draft vocabulary)."""
        return lm_head[self.vocab_ids] if self.config.draft_vocab else lm_head

    def decode_features(self, hidden: Tensor, layers: dict[int, Tensor]) -> Tensor:
        return hidden

    def logits(self, out: Tensor, lm_head: Tensor) -> Tensor:
        """Draft-vocabulary logits of draft outputs through the backbone's lm_head."""
        return F.linear(out, self.draft_lm_head(lm_head))

    def scorer(self, lm_head: Tensor):
        """`logits` with the lm_head rows packed once, for drafting."""
        return linear_fn(self.draft_lm_head(lm_head))

    def forward(self, features: Tensor, tokens: Tensor, embed: Tensor, cos: Tensor, sin: Tensor, kv: Tensor,
                start: int, mask: Tensor | None) -> Tensor:
        """Rows are written to kv at [start, start + n); mask [n, start + n] (None: causal from start 0)."""
        x = self.fc(torch.cat((F.embedding(tokens, embed).to(features.dtype), features), dim=-1))
        return self.layer(x, cos, sin, kv, start, mask)

    def new_cache(self, length: int) -> Tensor:
        """An empty KV cache [2, kv_heads, length, head_dim] for this layer."""
        attn = self.layer.attention
        w = self.fc.weight
        return torch.zeros(2, attn.n_kv_heads, length, attn.head_dim, dtype=w.dtype, device=w.device)


Draft = EagleDraft | eagle3.Eagle3Draft


def save_eagle(path: str | Path, draft: Draft, model: Transformer, extra: dict | None = None) -> Path:
    """Save a draft model (EAGLE or EAGLE-3) as safetensors + config.json (with the backbone fingerprint and any
    extra metadata)."""
    kind = eagle3.KIND if isinstance(draft, eagle3.Eagle3Draft) else KIND
    return save_heads(path, kind, asdict(draft.config), draft.state_dict(), model, extra)


def embedding_shift(draft_embed: Tensor, embed: Tensor) -> Tensor | None:
    """The constant nonzero row a draft's own token embedding adds to the backbone's: specdec.export folds fc's bias
    into one (vLLM's EAGLE fc has none). None for any other embedding (SafeAILab checkpoints ship a copy of the
    backbone's): these drafts read the backbone's embedding, as before."""
    if draft_embed.shape != embed.shape:
        return None
    diff = draft_embed.float() - embed.float().to(draft_embed.device)
    shift = diff.mean(0)
    scale = draft_embed.float().abs().max()
    spread = (diff - shift).abs().max()  # rounding noise for a shifted copy (bf16: below 2**-8 of the largest value)
    return shift if spread <= 2**-7 * scale + 1e-6 and shift.abs().max() > spread else None


def load_official_eagle(path: Path, model: Transformer) -> EagleDraft:
    """SafeAILab's layout: a one-layer Llama config.json + fc.* and layers.0.* weights (safetensors or .bin)."""
    from specdec.backbone import read_hf_state, to_block_state

    cfg = json.loads((path / "config.json").read_text())
    if (cfg.get("hidden_size") != model.args.dim
            or cfg.get("vocab_size", model.args.vocab_size) != model.args.vocab_size):
        raise ValueError(f"EAGLE weights at {path} have hidden size {cfg.get('hidden_size')} and vocab "
                         f"{cfg.get('vocab_size')}, this backbone {model.args.dim} and {model.args.vocab_size}: "
                         "they belong to another backbone")
    hf = read_hf_state(path)
    if "fc.weight" not in hf:
        raise ValueError(f"{path}: no 'fc.weight': not the EAGLE draft layout")
    input_norm = "layers.0.input_layernorm.weight" in hf
    bias = hf.get("fc.bias")
    shift = embedding_shift(hf["embed_tokens.weight"], model.tok_embeddings.weight) if "embed_tokens.weight" in hf \
        else None
    if shift is not None:
        bias = (0 if bias is None else bias.float()) + hf["fc.weight"][:, : model.args.dim].float() @ shift
    draft = EagleDraft(EagleConfig(model.args.dim, model.args.vocab_size, fc_bias=bias is not None,
                                   input_norm=input_norm), model.args)
    state = {"fc.weight": hf["fc.weight"], "vocab_ids": draft.vocab_ids,
             **to_block_state(hf, "layers.0.", "layer.", model.args, input_norm)}
    if bias is not None:
        state["fc.bias"] = bias
    try:
        draft.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"EAGLE weights at {path} do not fit this backbone's layer shape: {e}") from e
    return draft


def load_eagle(path: str | Path, model: Transformer) -> tuple[Draft, dict]:
    """An EAGLE or EAGLE-3 draft from our checkpoint, the official layouts, or a shipped name ("eagle", "eagle3"),
    on the backbone's device and dtype; the checkpoint says which."""
    path = resolve_weights(path, model, SHIPPED)
    meta = read_config(path)
    if eagle3.is_official_eagle3(meta):
        draft, meta = eagle3.load_official_eagle3(path, model), {"kind": eagle3.KIND, "source": "official"}
    elif "kind" not in meta and "hidden_size" in meta:
        draft, meta = load_official_eagle(path, model), {"kind": KIND, "source": "official"}
    elif meta.get("kind") == eagle3.KIND:
        draft, meta = load_module(path, eagle3.KIND, model,
                                  lambda cfg: eagle3.Eagle3Draft(eagle3.Eagle3Config(**cfg), model.args))
    else:
        draft, meta = load_module(path, KIND, model, lambda cfg: EagleDraft(EagleConfig(**cfg), model.args))
    w = model.output.weight
    return draft.to(device=w.device, dtype=w.dtype).eval().requires_grad_(False), meta
