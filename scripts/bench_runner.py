"""Verify-cost curve of the lean runner against transformers: one forward of k tree nodes on a filled cache.
On a CPU the runner is timed with oneDNN-packed linears (the default) and with plain nn.Linear ("unpacked").

    python scripts/bench_runner.py --dtype fp32 --nodes 1,4,8,16,32,64 --out results/runner
"""
from __future__ import annotations

import functools
import json
import platform
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from specdec import cli
from specdec.backbone import load_backbone, resolve_dtype
from specdec.packed import PackedLinear


def best_ms(fns: dict, repeats: int, rounds: int, bar=None) -> dict:
    """Per function, the fastest mean over rounds in ms; each round times every function once, so a noisy
    neighbour's load drifts across all of them alike instead of skewing one (the minimum filters the rest).
    `bar` (a tqdm) advances once per timing."""
    for fn in fns.values():
        fn()
    best = {key: float("inf") for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            best[key] = min(best[key], (time.perf_counter() - t0) / repeats * 1e3)
            if bar is not None:
                bar.update()
    return best


def main() -> None:
    ap = cli.parser(__doc__)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--context", type=int, default=200, help="tokens already in the cache")
    ap.add_argument("--nodes", default="1,4,8,16,32,64")
    ap.add_argument("--repeats", type=int, default=5, help="forwards per timing")
    ap.add_argument("--rounds", type=int, default=8, help="timings per k, interleaved over all k")
    ap.add_argument("--out", default="results/runner")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, args.device)
    bb = load_backbone(args.backbone, dtype, args.device)
    runners = {"specdec": bb.model}
    if any(isinstance(m, PackedLinear) for m in bb.model.modules()):
        runners["unpacked"] = load_backbone(args.backbone, dtype, args.device, pack=False).model
    hf = AutoModelForCausalLM.from_pretrained(bb.path, dtype=dtype).to(args.device).eval()
    prefix = torch.arange(args.context, device=args.device) + 100

    for model in runners.values():
        model.reset()
        model.forward(prefix)
        model.commit(None, args.context)
    with torch.inference_mode():
        cache = hf(prefix[None], use_cache=True).past_key_values

    def ours(model, tokens: torch.Tensor, mask: torch.Tensor | None):
        model.forward(tokens, tree_mask=mask)

    def theirs(tokens: torch.Tensor):
        with torch.inference_mode():
            hf(tokens[None], past_key_values=cache, use_cache=True)
        cache.crop(-tokens.shape[0])

    fns = {}
    ks = [int(x) for x in args.nodes.split(",")]
    for k in ks:
        tokens = torch.arange(k, device=args.device) + 500
        # a chain is the worst case for the mask (every node sees all earlier ones); trees cost the same
        mask = torch.ones(k, k, dtype=torch.bool, device=args.device).tril() if k > 1 else None
        for name, model in runners.items():
            fns[(name, k)] = functools.partial(ours, model, tokens, mask)
        fns[("transformers", k)] = functools.partial(theirs, tokens)
    ms = best_ms(fns, args.repeats, args.rounds)
    names = [*runners, "transformers"]
    rows = [{"nodes": k, **{f"{n}_ms": ms[(n, k)] for n in names}} for k in ks]
    base = rows[0]
    for r in rows:
        for n in names:
            r[f"{n}_ratio_vs_k1"] = r[f"{n}_ms"] / base[f"{n}_ms"]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"verify_cost_{str(dtype).removeprefix('torch.')}"
    config = {"dtype": str(dtype), "device": args.device, "threads": torch.get_num_threads(), "context": args.context,
              "repeats": args.repeats, "rounds": args.rounds,
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "backbone": str(bb.path)}
    (out / f"{name}.json").write_text(json.dumps({"config": config, "rows": rows}, indent=2))
    lines = ["| nodes | " + " | ".join(f"{n} ms | x k=1" for n in names) + " |", "|---" * (1 + 2 * len(names)) + "|"]
    lines += ["| " + " | ".join([str(r["nodes"])]
                                + [f"{r[f'{n}_ms']:.1f} | {r[f'{n}_ratio_vs_k1']:.2f}" for n in names])
              + " |" for r in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main)
