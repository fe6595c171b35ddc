"""How much accelerator memory a backbone + drafter needs in the lean runner, and which cards it fits.

    python scripts/memory_plan.py --model 13b --quantize int8 --context 2048 --tree 64 --medusa-heads 4
    python scripts/memory_plan.py --model ~/models/vicuna-7b-v1.3/config.json --dtype fp16 --eagle --json

Counts what the runner allocates: weights (int8 linears + one scale per output channel; embeddings, norms and,
under LLM.int8, the lm_head stay in --dtype), the static KV cache (context + tree slots), the drafter, and the
peak activations of the one-pass prefill. GiB = 2**30 bytes; a card "fits" with --reserve-gib left for the CUDA
context and allocator slack.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from specdec import cli
from specdec.model import ModelArgs

GIB = 2**30
CARDS_GIB = (32, 48, 80)
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def llama(dim: int, layers: int, heads: int, intermediate: int, kv_heads: int | None = None,
          vocab: int = 32000) -> dict:
    """A Llama config.json dict of the given shape."""
    return {"model_type": "llama", "hidden_size": dim, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads or heads, "intermediate_size": intermediate, "vocab_size": vocab,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "tie_word_embeddings": False}


SHAPES = {  # Llama-1/2 and Vicuna v1.3/v1.5 share these; 70B is Llama-2's (GQA, 8 KV heads)
    "7b": llama(4096, 32, 32, 11008),
    "13b": llama(5120, 40, 40, 13824),
    "33b": llama(6656, 60, 52, 17920),
    "70b": llama(8192, 80, 64, 28672, kv_heads=8),
}


@dataclass
class Plan:
    """Bytes per part, their sum, and whether it fits each card."""

    model: str
    dtype: str
    quantize: str
    context: int
    tree: int
    drafter: str
    weights: int
    kv_cache: int
    drafter_weights: int
    activations: int
    total: int
    fits: dict[str, bool]


def linear_shapes(a: ModelArgs) -> list[tuple[int, int]]:
    """(out, in) of one decoder layer's linears: fused qkv, o, fused gate/up, down."""
    qkv = (a.n_heads + 2 * a.n_kv_heads) * a.head_dim
    return [(qkv, a.dim), (a.dim, a.n_heads * a.head_dim), (2 * a.intermediate_size, a.dim),
            (a.dim, a.intermediate_size)]


def linear_bytes(out_f: int, in_f: int, quantize: str, b: int) -> int:
    """A linear's weight memory: int8 + one scale per row (weight-only), int8 + fp32 row scale (LLM.int8), or float."""
    if quantize == "int8":
        return out_f * in_f + out_f * b
    if quantize == "bnb-int8":
        return out_f * in_f + out_f * 4
    return out_f * in_f * b


def weight_bytes(a: ModelArgs, quantize: str, b: int) -> int:
    """Backbone weights; LLM.int8 leaves the lm_head in float (as transformers does), weight-only int8 quantises it."""
    layers = a.n_layers * (sum(linear_bytes(o, i, quantize, b) for o, i in linear_shapes(a)) + 2 * a.dim * b)
    embed = a.vocab_size * a.dim * b
    lm_head = linear_bytes(a.vocab_size, a.dim, quantize if quantize == "int8" else "none", b)
    return layers + embed + lm_head + a.dim * b


def drafter_bytes(a: ModelArgs, quantize: str, b: int, medusa_heads: int, medusa_layers: int, eagle: bool,
                  slots: int) -> int:
    """Medusa: residual blocks per head; EAGLE: fc (2d -> d) + one decoder layer + its KV cache. Both score with the
    backbone's lm_head, so over an int8 lm_head the drafter holds a dequantised float copy of it."""
    total = medusa_heads * medusa_layers * (a.dim * a.dim + a.dim) * b
    if eagle:
        total += (2 * a.dim * a.dim + a.dim) * b + sum(o * i for o, i in linear_shapes(a)) * b + a.dim * b
        total += 2 * a.n_kv_heads * slots * a.head_dim * b
    if (medusa_heads or eagle) and quantize == "int8":
        total += a.vocab_size * a.dim * b
    return total


def activation_bytes(a: ModelArgs, tokens: int, b: int) -> int:
    """Peak of the one-pass prefill over `tokens`: residual stream and layer output, qkv, attention output, the MLP's
    fused gate/up and its product, math-path attention scores [heads, T, T] (flash kernels need none), one logit row."""
    per_token = (3 * a.dim + (a.n_heads + 2 * a.n_kv_heads) * a.head_dim + a.n_heads * a.head_dim
                 + 3 * a.intermediate_size)
    return (tokens * per_token + a.n_heads * tokens * tokens + a.vocab_size) * b


def plan(cfg: dict, name: str, dtype: str = "fp16", quantize: str = "none", context: int = 2048, tree: int = 64,
         medusa_heads: int = 0, medusa_layers: int = 1, eagle: bool = False, reserve_gib: float = 1.5) -> Plan:
    """The memory plan for one backbone config and drafter."""
    a = ModelArgs.from_hf(cfg)
    b = BYTES[dtype]
    slots = context + tree  # the static cache holds the context and one tree of draft nodes after it
    weights = weight_bytes(a, quantize, b)
    kv = a.n_layers * 2 * a.n_kv_heads * slots * a.head_dim * b
    draft = drafter_bytes(a, quantize, b, medusa_heads, medusa_layers, eagle, slots)
    act = activation_bytes(a, context, b)
    total = weights + kv + draft + act
    drafter = ("eagle" if eagle else "") + (f"{'+' if eagle else ''}medusa x{medusa_heads}" if medusa_heads else "")
    return Plan(name, dtype, quantize, context, tree, drafter or "none", weights, kv, draft, act, total,
                {f"{c}GB": total + reserve_gib * GIB <= c * GIB for c in CARDS_GIB})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--model", default="13b",
                   help=f"{', '.join(SHAPES)} (Llama shapes) or a config.json / model directory")
    p.add_argument("--dtype", choices=tuple(BYTES), default="fp16", help="activations, KV cache, unquantised weights")
    p.add_argument("--quantize", choices=("none", "int8", "bnb-int8"), default="none")
    p.add_argument("--context", type=int, default=2048, help="tokens of context (prompt + answer)")
    p.add_argument("--tree", type=int, default=64, help="draft tree nodes verified per step")
    p.add_argument("--medusa-heads", type=int, default=0)
    p.add_argument("--medusa-layers", type=int, default=1, help="residual blocks per Medusa head")
    p.add_argument("--eagle", action="store_true", help="add an EAGLE draft layer")
    p.add_argument("--reserve-gib", type=float, default=1.5, help="kept free on each card (CUDA context, allocator)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return p.parse_args(argv)


def load_config(model: str) -> tuple[dict, str]:
    """A built-in shape or a local config.json (or the directory holding it)."""
    if model.lower() in SHAPES:
        return SHAPES[model.lower()], f"llama-{model.lower()}"
    path = Path(model).expanduser()
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"--model {model!r}: not one of {', '.join(SHAPES)} and no config.json there")
    return json.loads(path.read_text()), path.parent.name


def table(p: Plan) -> str:
    """The plan as a Markdown table."""
    rows = [("weights", p.weights), ("KV cache", p.kv_cache), ("drafter", p.drafter_weights),
            ("activations (prefill peak)", p.activations), ("total", p.total)]
    head = (f"{p.model}, {p.quantize if p.quantize != 'none' else p.dtype} (activations {p.dtype}), "
            f"context {p.context}, tree {p.tree}, drafter {p.drafter}")
    lines = [head, "", "| part | GiB |", "|---|---:|"] + [f"| {n} | {v / GIB:.2f} |" for n, v in rows]
    return "\n".join(lines + ["", "fits: " + ", ".join(f"{c} {'yes' if ok else 'no'}" for c, ok in p.fits.items())])


def main(argv: list[str] | None = None) -> Plan:
    args = parse_args(argv)
    cfg, name = load_config(args.model)
    p = plan(cfg, name, args.dtype, args.quantize, args.context, args.tree, args.medusa_heads, args.medusa_layers,
             args.eagle, args.reserve_gib)
    print(json.dumps(asdict(p), indent=1) if args.json else table(p))
    return p


if __name__ == "__main__":
    cli.run(main)
