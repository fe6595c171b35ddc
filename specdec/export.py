"""Trained drafts and their backbone in the layouts vLLM serves, so heads trained here run on an existing engine.

- eagle3: the speculators format (`speculators_model_type` "eagle3", `transformer_layer_config`, `draft_vocab_size`,
  `target_hidden_size`, `eagle_aux_hidden_state_layer_ids`, `norm_before_residual` false, `d2t`; weights `fc`,
  `layers.0.*`, `norm`, `lm_head`, `d2t`, `t2d`). vLLM reads it as `Eagle3LlamaForCausalLM`; `vllm serve <draft dir>`
  alone finds the backbone through `speculators_config.verifier`.
- eagle (EAGLE-1): SafeAILab's layout, a one-layer Llama config.json + `fc.weight` and `layers.0.*` (no input norm),
  served with `method="eagle"`. vLLM's `fc` has no bias: a trained bias b is folded exactly into the draft's own token
  embedding (fc([e + W_e^-1 b, f]) = fc([e, f]) + b, W_e = fc's embedding half), shipped as `embed_tokens.weight`.
  vLLM scores the whole vocabulary with the backbone's lm_head, so a draft-vocabulary cut is not kept (`notes`).
- medusa: vLLM's Medusa layout (`blocks.{i}.layers.{j}`, `lm_heads`, `token_map` + `truncated_vocab_size` for a
  draft vocabulary, `medusa_fc_bias`). Trigram-conditioned heads cannot be expressed: vLLM's heads see only the last
  hidden state, not the embeddings of the tokens around it.
- the backbone: its directory with `architectures` written into config.json (vLLM picks the model class by it);
  weights and tokenizer files are linked, not copied, and the source directory is never modified.

The loaders in specdec.eagle / specdec.medusa read every exported layout back (tests/test_export.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from specdec.checkpoint import atomic_directory
from specdec.eagle import EagleDraft
from specdec.eagle3 import Eagle3Draft
from specdec.medusa import MedusaHeads
from specdec.model import ModelArgs, Transformer

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FOLD_TOLERANCE = 1e-4  # relative residual of solving W_e x = b; above it fc's bias cannot be folded exactly


@dataclass
class Export:
    """What one export wrote: the directory, the vLLM method and speculative_config to serve it with, other vLLM
    engine arguments it needs (LLM keywords), and notes on what the layout could not carry."""

    path: Path
    method: str
    speculative_config: dict
    notes: list[str] = field(default_factory=list)
    engine_args: dict = field(default_factory=dict)


def export_backbone(source: str | Path, out: str | Path) -> Path:
    """The backbone directory as vLLM loads it: config.json with `architectures`, other files linked to the source."""
    source, out = Path(source).resolve(), Path(out)
    cfg = json.loads((source / "config.json").read_text())
    model_type = cfg.get("model_type", "llama")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"model_type {model_type!r} has no vLLM architecture here; known: {', '.join(ARCHITECTURES)}")
    if not cfg.get("architectures"):
        cfg["architectures"] = [ARCHITECTURES[model_type]]
    out.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.name != "config.json" and f.is_file():
            link = out / f.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(f)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def layer_config(args: ModelArgs, dtype: torch.dtype) -> dict:
    """A one-layer Llama config with the backbone's layer shape (the draft layer's), rope included."""
    cfg = args.hf_config
    rope = {k: cfg[k] for k in ("rope_parameters", "rope_theta", "rope_scaling") if cfg.get(k) is not None}
    if args.mlp_bias:
        raise ValueError("MLP biases in the draft layer: vLLM's draft layers have none")
    return {"architectures": [ARCHITECTURES["llama"]], "model_type": "llama", "num_hidden_layers": 1,
            "hidden_size": args.dim, "intermediate_size": args.intermediate_size,
            "num_attention_heads": args.n_heads, "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim,
            "hidden_act": args.hidden_act, "rms_norm_eps": args.norm_eps,
            "max_position_embeddings": args.max_position_embeddings, "vocab_size": args.vocab_size,
            "attention_bias": args.qkv_bias or args.o_bias, "mlp_bias": False, "tie_word_embeddings": False,
            "bos_token_id": cfg.get("bos_token_id"), "eos_token_id": cfg.get("eos_token_id"),
            "torch_dtype": str(dtype).removeprefix("torch."), **rope}


def block_state(ours: dict[str, Tensor], src: str, dst: str, args: ModelArgs) -> dict[str, Tensor]:
    """A runner Block's attention and MLP weights (`src` prefix) under Hugging Face names (`dst` prefix), q/k/v and
    gate/up split; with a q/k/v bias, vLLM's Llama layer also has an o_proj bias (attention_bias): zeros unless
    trained."""
    out = {}
    sizes = [args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim, args.n_kv_heads * args.head_dim]
    for kind in ("weight", "bias"):
        if f"{src}attention.wqkv.{kind}" in ours:
            for n, w in zip("qkv", ours[f"{src}attention.wqkv.{kind}"].split(sizes)):
                out[f"{dst}self_attn.{n}_proj.{kind}"] = w
    out[f"{dst}self_attn.o_proj.weight"] = ours[f"{src}attention.wo.weight"]
    if args.qkv_bias or args.o_bias:
        out[f"{dst}self_attn.o_proj.bias"] = ours.get(f"{src}attention.wo.bias", torch.zeros(args.dim))
    out[f"{dst}mlp.gate_proj.weight"], out[f"{dst}mlp.up_proj.weight"] = ours[f"{src}feed_forward.w13.weight"].chunk(2)
    out[f"{dst}mlp.down_proj.weight"] = ours[f"{src}feed_forward.w2.weight"]
    out[f"{dst}post_attention_layernorm.weight"] = ours[f"{src}ffn_norm.weight"]
    return out


def export_eagle3(draft: Eagle3Draft, model: Transformer, out: str | Path, backbone_path: str | Path,
                  speculative_tokens: int = 3, dtype: torch.dtype = torch.bfloat16) -> Export:
    """An EAGLE-3 draft in the speculators format (see the module docstring); `backbone_path` is written as the
    verifier (vLLM serves it as the target when the draft directory alone is served)."""
    args, c = model.args, draft.config
    ours = {k: v.float().cpu() for k, v in draft.state_dict().items()}
    state = {"fc.weight": ours["fc.weight"], "norm.weight": ours["norm.weight"],
             "lm_head.weight": ours["lm_head.weight"],
             "layers.0.input_layernorm.weight": ours["layer.embed_norm.weight"],
             "layers.0.hidden_norm.weight": ours["layer.hidden_norm.weight"],
             **block_state(ours, "layer.", "layers.0.", args)}
    tensors = {k: v.to(dtype) for k, v in state.items()}
    tensors["d2t"], tensors["t2d"] = draft.d2t.long().cpu(), draft.t2d.bool().cpu()
    verifier = {"name_or_path": str(Path(backbone_path).resolve()),
                "architectures": [ARCHITECTURES[args.hf_config.get("model_type", "llama")]]}
    config = {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
              "transformer_layer_config": layer_config(args, dtype), "draft_vocab_size": c.draft_vocab,
              "target_hidden_size": args.dim, "norm_before_residual": False,
              "eagle_aux_hidden_state_layer_ids": list(c.aux_layers),
              "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                     "proposal_methods": [{"proposal_type": "greedy", "accept_tolerance": 0.0,
                                                           "speculative_tokens": speculative_tokens,
                                                           "verifier_accept_k": 1}],
                                     "verifier": verifier},
              "torch_dtype": str(dtype).removeprefix("torch.")}
    path = _write(out, config, tensors)
    return Export(path, "eagle3",
                  {"method": "eagle3", "model": str(path), "num_speculative_tokens": speculative_tokens})


def fold_fc_bias(draft: EagleDraft, embed: Tensor) -> Tensor:
    """The token embedding that carries fc's bias: E + W_e^-1 b for every row (exact up to float rounding)."""
    d = draft.config.dim
    w_e, b = draft.fc.weight[:, :d].double().cpu(), draft.fc.bias.double().cpu()
    shift = torch.linalg.lstsq(w_e, b[:, None]).solution[:, 0]  # least squares: a singular W_e leaves a residual
    residual = float((w_e @ shift - b).norm() / b.norm().clamp_min(1e-30))
    if not residual <= FOLD_TOLERANCE:
        raise ValueError(f"the EAGLE draft's fc bias cannot be folded into its token embedding: fc's embedding half is "
                         f"(near) singular (residual {residual:.2g}); vLLM's EAGLE fc has no bias")
    return (embed.double().cpu() + shift).float()


def export_eagle(draft: EagleDraft, model: Transformer, out: str | Path, speculative_tokens: int = 3,
                 dtype: torch.dtype = torch.bfloat16) -> Export:
    """An EAGLE-1 draft in SafeAILab's layout (see the module docstring)."""
    args, notes = model.args, []
    if draft.config.input_norm:
        raise ValueError("this EAGLE draft's layer has an input RMSNorm; vLLM's EAGLE-1 layer has none (as EAGLE's)")
    ours = {k: v.float().cpu() for k, v in draft.state_dict().items()}
    state = {"fc.weight": ours["fc.weight"], **block_state(ours, "layer.", "layers.0.", args)}
    if draft.config.fc_bias:
        embed = state["embed_tokens.weight"] = fold_fc_bias(draft, model.tok_embeddings.weight)
        notes.append("fc bias folded into the draft's own embed_tokens (vLLM's EAGLE fc has no bias)")
        rows = embed[:: max(1, len(embed) // 4096)]
        error = float(((rows.to(dtype).float() - rows) @ ours["fc.weight"][:, : args.dim].T).abs().max())
        bias = float(ours["fc.bias"].abs().max())
        if error > 0.05 * bias:  # an ill-conditioned W_e makes the shift large, and its rounding reaches fc's output
            notes.append(f"in {str(dtype).removeprefix('torch.')} the folded embedding rounds to fc output errors up "
                         f"to {error:.3g} (the bias itself is at most {bias:.3g}): export and serve in fp32 to keep "
                         "the fold exact")
    if draft.config.draft_vocab:
        notes.append(f"draft vocabulary of {draft.config.draft_vocab} tokens dropped: vLLM's EAGLE-1 scores the whole "
                     "vocabulary with the backbone's lm_head, so its drafts can differ where the top token lies "
                     "outside the cut")
    config = layer_config(args, dtype)
    path = _write(out, config, {k: v.to(dtype) for k, v in state.items()})
    return Export(path, "eagle", {"method": "eagle", "model": str(path), "num_speculative_tokens": speculative_tokens},
                  notes)


def export_medusa(heads: MedusaHeads, model: Transformer, out: str | Path,
                  dtype: torch.dtype = torch.bfloat16) -> Export:
    """Medusa heads in vLLM's Medusa layout (see the module docstring); vLLM drafts a top-1 chain, one token a
    head."""
    c = heads.config
    if any(c.trigram):
        raise ValueError("trigram-conditioned Medusa heads cannot be exported to vLLM: its Medusa heads read only the "
                         "last hidden state, while these add a projection of the embeddings of two context tokens "
                         f"({c.trigram_tokens!r}) that vLLM's format has no weights or inputs for")
    ours = {k: v.float().cpu() for k, v in heads.state_dict().items()}
    state = {}
    for i in range(c.num_heads):
        for j in range(c.num_layers):
            for p in ("weight", "bias"):
                state[f"blocks.{i}.layers.{j}.{p}"] = ours[f"heads.{i}.blocks.{j}.linear.{p}"]
    if c.own_lm_head:
        for i in range(c.num_heads):
            state[f"lm_heads.{i}.weight"] = ours[f"heads.{i}.lm_head.weight"]
    else:
        state["lm_heads.0.weight"] = heads.draft_lm_head(model.output.weight).float().cpu()
    tensors = {k: v.to(dtype) for k, v in state.items()}
    vocab = c.draft_vocab or c.vocab_size
    notes, engine_args = [], {}
    if c.draft_vocab:
        tensors["token_map"] = heads.vocab_ids.long().cpu()
        # vLLM 0.32 makes token_map a parameter while loading but does not report it loaded: its strict check fails
        engine_args["model_loader_extra_config"] = {"enable_weights_track": False}
        notes.append("vLLM 0.32 needs model_loader_extra_config={'enable_weights_track': False} to load token_map "
                     "(the draft vocabulary)")
    config = {"architectures": ["MedusaModel"], "model_type": "medusa", "hidden_size": c.dim,
              "vocab_size": c.vocab_size, "num_heads": c.num_heads, "num_hidden_layers": c.num_layers,
              "truncated_vocab_size": vocab, "original_lm_head": not c.own_lm_head, "medusa_fc_bias": True,
              "torch_dtype": str(dtype).removeprefix("torch.")}
    path = _write(out, config, tensors)
    return Export(path, "medusa", {"method": "medusa", "model": str(path), "num_speculative_tokens": c.num_heads},
                  notes, engine_args)


def export_draft(draft: EagleDraft | Eagle3Draft | MedusaHeads, model: Transformer, out: str | Path,
                 backbone_path: str | Path, speculative_tokens: int = 3,
                 dtype: torch.dtype | str = torch.bfloat16) -> Export:
    """Any trained draft in the layout vLLM serves for its kind."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if isinstance(draft, Eagle3Draft):
        return export_eagle3(draft, model, out, backbone_path, speculative_tokens, dtype)
    if isinstance(draft, EagleDraft):
        return export_eagle(draft, model, out, speculative_tokens, dtype)
    if isinstance(draft, MedusaHeads):
        return export_medusa(draft, model, out, dtype)
    raise TypeError(f"cannot export a {type(draft).__name__}: expected EAGLE, EAGLE-3 or Medusa weights")


def _write(out: str | Path, config: dict, tensors: dict[str, Tensor]) -> Path:
    """config.json + model.safetensors, atomically (a half-written export never replaces a good one)."""
    with atomic_directory(out) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return Path(out)


def load_draft(weights: str | Path, model: Transformer) -> EagleDraft | Eagle3Draft | MedusaHeads:
    """Trained weights of any kind (a directory or a shipped name: eagle, eagle3, medusa, medusa-trigram), in fp32."""
    from specdec import eagle, medusa
    from specdec.checkpoint import read_config, resolve_weights

    path = resolve_weights(weights, model, eagle.SHIPPED + medusa.SHIPPED)
    meta = read_config(path)
    is_medusa = meta.get("kind") == medusa.KIND or "medusa_num_heads" in meta or meta.get("model_type") == "medusa"
    draft, _ = medusa.load_medusa(path, model) if is_medusa else eagle.load_eagle(path, model)
    return draft.float()


def export_heads(weights: list[str | Path], out: str | Path, backbone: str | Path | None = None,
                 speculative_tokens: int = 3, dtype: str = "bf16") -> tuple[Path, dict[str, Export]]:
    """The backbone (into out/backbone) and each trained draft (into out/<its name>) in vLLM's layouts; returns the
    backbone directory and one Export per weights argument."""
    from specdec.backbone import backbone_dir, load_transformer

    source = backbone_dir(backbone)
    model = load_transformer(source, torch.float32, pack=False)  # fp32: folds and copies stay exact
    out = Path(out)
    target = export_backbone(source, out / "backbone")
    exports = {}
    for w in weights:
        name = Path(w).name
        exports[name] = export_draft(load_draft(w, model), model, out / name, target, speculative_tokens, dtype)
    return target, exports
