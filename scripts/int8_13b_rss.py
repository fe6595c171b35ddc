"""Peak memory of a 13B-shaped Llama in weight-only int8: built one linear at a time with random weights (no full
float copy ever exists), then prefill + a few speculative decode steps with random Medusa heads.

    OMP_NUM_THREADS=1 python scripts/int8_13b_rss.py --out results/int8/int8_13b_rss.json

Reports peak RSS (ru_maxrss) and, on CUDA, torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path

import torch
from torch import nn

from memory_plan import SHAPES, plan
from specdec import cli
from specdec.backbone import resolve_dtype
from specdec.decode import decode
from specdec.drafters import MedusaDrafter
from specdec.medusa import MedusaConfig, MedusaHeads
from specdec.model import ModelArgs, Transformer
from specdec.quantize import LINEAR_NAMES, WeightOnlyInt8Linear


def peak_rss_bytes() -> int:
    """This process's peak resident set (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@torch.no_grad()
def build_int8(args: ModelArgs, dtype: torch.dtype, device: torch.device, seed: int) -> Transformer:
    """The runner with random int8 linears made one at a time; embeddings and norms random in `dtype`."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(args)
    model.tok_embeddings = nn.Embedding(args.vocab_size, args.dim, device=device, dtype=dtype)
    model.tok_embeddings.weight.normal_(0, 1)
    for parent in [m for m in model.modules() if not isinstance(m, nn.Linear)]:
        for name in LINEAR_NAMES:
            old = getattr(parent, name, None)
            if isinstance(old, nn.Linear):  # fp32 once, for this matrix only, then int8 on the device
                linear = nn.Linear(old.in_features, old.out_features, bias=False)
                linear.weight.normal_(0, old.in_features ** -0.5, generator=g)
                linear.weight.data = linear.weight.data.to(dtype)
                setattr(parent, name, WeightOnlyInt8Linear.from_linear(linear, device))
                del linear
        for name, p in list(parent.named_parameters(recurse=False)):  # the norms
            if p.is_meta:
                setattr(parent, name,
                        nn.Parameter(torch.ones(p.shape, dtype=dtype, device=device), requires_grad=False))
    return model.eval()


def random_heads(args: ModelArgs, n: int, dtype: torch.dtype, device: torch.device) -> MedusaHeads:
    """n one-block Medusa heads with small random weights."""
    heads = MedusaHeads(MedusaConfig(args.dim, args.vocab_size, n, 1))
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.02)
    return heads.to(device=device, dtype=dtype).eval()


def main(argv: list[str] | None = None) -> dict:
    p = cli.parser(__doc__)
    p.add_argument("--shape", choices=tuple(SHAPES), default="13b")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="activations, embeddings, KV cache")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--context", type=int, default=64, help="static cache length")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=4)
    p.add_argument("--medusa-heads", type=int, default=4)
    p.add_argument("--tree", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results/int8/int8_13b_rss.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), resolve_dtype(a.dtype, a.device)
    cfg = SHAPES[a.shape]
    args = ModelArgs.from_hf(cfg)

    t0 = time.perf_counter()
    model = build_int8(args, dtype, device, seed=0)
    model.setup_cache(a.context)
    build_s = time.perf_counter() - t0
    rss_built = peak_rss_bytes()
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    drafter = MedusaDrafter(model, random_heads(args, a.medusa_heads, dtype, device), tree=a.tree, min_confidence=0.0)
    prompt = torch.randint(3, args.vocab_size, (a.prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    t1 = time.perf_counter()
    res = decode(model, prompt, drafter, max_new_tokens=a.new_tokens)
    decode_s = time.perf_counter() - t1
    out = {
        "shape": a.shape, "config": {k: cfg[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                          "intermediate_size", "vocab_size")},
        "quantize": "int8 weight-only per channel", "dtype": a.dtype, "device": a.device, "threads": a.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
        "context": a.context, "prompt_tokens": a.prompt_tokens, "medusa_heads": a.medusa_heads, "tree": a.tree,
        "weights_bytes": weight_bytes, "build_s": round(build_s, 1), "decode_s": round(decode_s, 1),
        "new_tokens": res.stats.new_tokens, "verify_steps": res.stats.steps, "tree_sizes": res.stats.tree_sizes,
        "peak_rss_after_build_bytes": rss_built, "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_gib": round(peak_rss_bytes() / 2**30, 2), "under_16gb": peak_rss_bytes() < 16e9,
        "memory_plan_total_bytes": plan(cfg, a.shape, a.dtype, "int8", a.context, a.tree,
                                        a.medusa_heads).total,
    }
    if device.type == "cuda":
        out["cuda_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    cli.run(main)
