"""EAGLE-3 draft model: the backbone's hidden states entering a low, a middle and a high layer, fused by `fc`
(3d -> d, no bias), feed one decoder layer whose attention reads [norm(embedding of the next token), norm(feature)]
(2d wide) with the residual on the feature; its pre-norm output is the next step's feature, and norm + its own
lm_head score a draft vocabulary (the most frequent target tokens; `d2t` / `t2d` map it to the backbone's).

The shapes and names map one to one onto the official layout (SafeAILab EAGLE-3, SpecForge, vLLM's
`LlamaForCausalLMEagle3`): `fc`, `midlayer.*`, `norm`, `lm_head`, `d2t`, `t2d`; `load_official_eagle3` and
`official_state` translate. The decoder layer's shape is the backbone's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specdec.model import Attention, FeedForward, ModelArgs, RMSNorm, Transformer

KIND = "eagle3"


def default_aux_layers(n_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's fused features: the hidden states entering layers 2, L//2 and L-3 (low, middle, high)."""
    return (min(2, n_layers - 1), n_layers // 2, max(n_layers - 3, 1))


@dataclass
class Eagle3Config:
    """Draft options; aux_layers: the backbone layers whose input hidden states are fused (empty: EAGLE-3's)."""

    dim: int
    vocab_size: int
    draft_vocab: int
    aux_layers: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not 0 < self.draft_vocab <= self.vocab_size:
            raise ValueError(f"draft_vocab must be in [1, {self.vocab_size}], got {self.draft_vocab}")
        if self.aux_layers and len(self.aux_layers) < 2:
            raise ValueError("aux_layers must name at least two layers: the fused width tells fused features from "
                             "the draft's own")
        if any(i < 1 for i in self.aux_layers):
            raise ValueError(f"aux_layers must be backbone layers from 1 on (their inputs are hidden states), "
                             f"got {self.aux_layers}")


class Eagle3Layer(nn.Module):
    """The draft's decoder layer: attention over [norm(embedding), norm(feature)], residual on the feature."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_norm = RMSNorm(args.dim, args.norm_eps)
        self.hidden_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args, in_dim=2 * args.dim)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, emb: Tensor, h: Tensor, cos: Tensor, sin: Tensor, kv: Tensor, start: int | Tensor,
                mask: Tensor | None) -> Tensor:
        x = torch.cat((self.embed_norm(emb), self.hidden_norm(h)), dim=-1)
        h = h + self.attention(x, cos, sin, kv, start, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Eagle3Draft(nn.Module):
    """The draft network: forward maps (features, next tokens [n]) to the next features [n, d], `logits` scores
    them; shares its interface with `specdec.eagle.EagleDraft`."""

    def __init__(self, config: Eagle3Config, args: ModelArgs):
        super().__init__()
        if (config.dim, config.vocab_size) != (args.dim, args.vocab_size):
            raise ValueError(f"EAGLE-3 config (dim {config.dim}, vocab {config.vocab_size}) does not fit a backbone "
                             f"with dim {args.dim} and vocab {args.vocab_size}")
        if not config.aux_layers:
            config.aux_layers = list(default_aux_layers(args.n_layers))
        if max(config.aux_layers) >= args.n_layers:
            raise ValueError(f"aux_layers {config.aux_layers} name layers past the backbone's {args.n_layers}")
        self.config = config
        self.fc = nn.Linear(len(config.aux_layers) * config.dim, config.dim, bias=False)
        self.layer = Eagle3Layer(args)
        self.norm = RMSNorm(config.dim, args.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.draft_vocab, bias=False)
        self.register_buffer("d2t", torch.zeros(config.draft_vocab, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(config.vocab_size, dtype=torch.bool))
        self.register_buffer("vocab_ids", torch.arange(config.draft_vocab), persistent=False)
        self.set_vocab(torch.arange(config.draft_vocab))

    def set_vocab(self, token_ids: Tensor) -> None:
        """Make `token_ids` (draft_vocab distinct backbone ids) the draft vocabulary, in ascending id order."""
        ids = token_ids.sort().values.to(self.d2t.device)
        if ids.shape != self.d2t.shape or bool((ids[1:] == ids[:-1]).any()):
            raise ValueError(f"the draft vocabulary needs {self.d2t.shape[0]} distinct token ids")
        self.d2t.copy_(ids - torch.arange(len(ids), device=ids.device))
        self.t2d.zero_()
        self.t2d[ids] = True
        self.vocab_ids.copy_(ids)

    def _load_from_state_dict(self, state, prefix, *args, **kwargs):
        super()._load_from_state_dict(state, prefix, *args, **kwargs)
        self.vocab_ids.copy_(torch.arange(len(self.d2t), device=self.d2t.device) + self.d2t)

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """The runner's layer outputs to request: the output of layer i - 1 is the input of layer i."""
        return tuple(i - 1 for i in self.config.aux_layers)

    def decode_features(self, hidden: Tensor, layers: dict[int, Tensor]) -> Tensor:
        """The cached-feature layout [n, 3d] from a runner forward's requested layers."""
        return torch.cat([layers[i] for i in self.hidden_layers], dim=-1)

    def forward(self, features: Tensor, tokens: Tensor, embed: Tensor, cos: Tensor, sin: Tensor, kv: Tensor,
                start: int, mask: Tensor | None) -> Tensor:
        """features: the backbone's concatenated ones [n, 3d] (fused by fc, as EAGLE-3 does for inputs wider than
        the model) or the draft's own outputs [n, d]; rows are written to kv at [start, start + n); mask
        [n, start + n] (None: causal from start 0)."""
        if features.shape[-1] != self.config.dim:
            features = self.fc(features)
        return self.layer(F.embedding(tokens, embed).to(features.dtype), features, cos, sin, kv, start, mask)

    def logits(self, out: Tensor, lm_head: Tensor | None = None) -> Tensor:
        """Draft-vocabulary logits of draft outputs (the backbone's lm_head is never read)."""
        return self.lm_head(self.norm(out))

    def scorer(self, lm_head: Tensor | None = None):
        """`logits` as a callable for drafting (its lm_head is packed with the module's other linears)."""
        return self.logits

    def new_cache(self, length: int) -> Tensor:
        """An empty KV cache [2, kv_heads, length, head_dim] for this layer."""
        attn = self.layer.attention
        w = self.norm.weight
        return torch.zeros(2, attn.n_kv_heads, length, attn.head_dim, dtype=w.dtype, device=w.device)


# official layout key -> ours (the fused q/k/v and gate/up are split / joined by official_state and the loader)
_RENAMES = {"fc.weight": "fc.weight", "norm.weight": "norm.weight", "lm_head.weight": "lm_head.weight",
            "d2t": "d2t", "t2d": "t2d", "midlayer.input_layernorm.weight": "layer.embed_norm.weight",
            "midlayer.hidden_norm.weight": "layer.hidden_norm.weight",
            "midlayer.post_attention_layernorm.weight": "layer.ffn_norm.weight",
            "midlayer.self_attn.o_proj.weight": "layer.attention.wo.weight",
            "midlayer.mlp.down_proj.weight": "layer.feed_forward.w2.weight"}


def official_state(draft: Eagle3Draft) -> dict[str, Tensor]:
    """The draft's weights under the official EAGLE-3 names (q/k/v and gate/up unfused)."""
    ours = draft.state_dict()
    out = {theirs: ours[mine] for theirs, mine in _RENAMES.items()}
    attn = draft.layer.attention
    sizes = [attn.n_heads * attn.head_dim, attn.n_kv_heads * attn.head_dim, attn.n_kv_heads * attn.head_dim]
    for name, w in zip("qkv", ours["layer.attention.wqkv.weight"].split(sizes)):
        out[f"midlayer.self_attn.{name}_proj.weight"] = w
    gate, up = ours["layer.feed_forward.w13.weight"].chunk(2)
    out["midlayer.mlp.gate_proj.weight"], out["midlayer.mlp.up_proj.weight"] = gate, up
    return {k: v.contiguous() for k, v in out.items()}


def is_official_eagle3(config: dict) -> bool:
    """An official EAGLE-3 config.json (SafeAILab / SpecForge / vLLM / speculators): it names a draft vocabulary
    size."""
    return "kind" not in config and "draft_vocab_size" in config


def official_config(cfg: dict, path: Path) -> dict:
    """A speculators-format config (layer shape under transformer_layer_config, aux layer ids at the top) in the
    SafeAILab / SpecForge shape; other configs as they are."""
    if cfg.get("speculators_model_type") is None:
        return cfg
    if cfg["speculators_model_type"] != KIND:
        raise ValueError(f"{path}: a speculators {cfg['speculators_model_type']!r} draft, not an EAGLE-3 one")
    if cfg.get("norm_before_residual", True) or cfg.get("norm_before_fc") or cfg.get("fc_norm"):
        raise ValueError(f"{path}: an EAGLE-3 variant with norm_before_residual / norm_before_fc / fc_norm; this draft "
                         "keeps the residual on the un-normed feature and has no fc norms")
    aux = cfg.get("eagle_aux_hidden_state_layer_ids")
    return {**cfg.get("transformer_layer_config", {}), "draft_vocab_size": cfg["draft_vocab_size"],
            "eagle_config": {"eagle_aux_hidden_state_layer_ids": aux} if aux else {}}


def load_official_eagle3(path: Path, model: Transformer) -> Eagle3Draft:
    """SafeAILab / SpecForge layout: config.json (hidden_size, draft_vocab_size, ...) + fc, midlayer.*, norm,
    lm_head, d2t, t2d (safetensors or .bin read with weights_only); or the speculators format (layers.0.*)."""
    from specdec.backbone import read_hf_state

    cfg = official_config(json.loads((path / "config.json").read_text()), path)
    args = model.args
    if cfg.get("hidden_size") != args.dim or cfg.get("vocab_size", args.vocab_size) != args.vocab_size:
        raise ValueError(f"EAGLE-3 weights at {path} have hidden size {cfg.get('hidden_size')} and vocab "
                         f"{cfg.get('vocab_size')}, this backbone {args.dim} and {args.vocab_size}: they belong to "
                         "another backbone")
    hf = {k.replace("layers.0.", "midlayer.", 1) if k.startswith("layers.0.") else k: v
          for k, v in read_hf_state(path).items()}
    missing = [k for k in (*_RENAMES, "midlayer.self_attn.q_proj.weight", "midlayer.mlp.gate_proj.weight")
               if k not in hf]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}: not the EAGLE-3 draft layout")
    aux = ((cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
           or list(default_aux_layers(args.n_layers)))
    draft = Eagle3Draft(Eagle3Config(args.dim, args.vocab_size, int(cfg["draft_vocab_size"]), list(aux)), args)
    state = {mine: hf[theirs] for theirs, mine in _RENAMES.items()}
    state["layer.attention.wqkv.weight"] = torch.cat([hf[f"midlayer.self_attn.{n}_proj.weight"] for n in "qkv"])
    state["layer.feed_forward.w13.weight"] = torch.cat([hf["midlayer.mlp.gate_proj.weight"],
                                                        hf["midlayer.mlp.up_proj.weight"]])
    if args.qkv_bias:
        state["layer.attention.wqkv.bias"] = torch.cat([hf[f"midlayer.self_attn.{n}_proj.bias"] for n in "qkv"])
    if args.o_bias:
        state["layer.attention.wo.bias"] = hf["midlayer.self_attn.o_proj.bias"]
    state["d2t"], state["t2d"] = state["d2t"].long(), state["t2d"].bool()
    try:
        draft.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"EAGLE-3 weights at {path} do not fit this backbone's layer shape: {e}") from e
    return draft
