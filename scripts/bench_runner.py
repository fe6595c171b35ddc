"""Verify-cost curve of the lean runner against transformers: one forward of k tree nodes on a filled cache.

    python scripts/bench_runner.py --dtype fp32 --nodes 1,4,8,16,32,64 --out results/runner
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from specdec.backbone import load_backbone, resolve_dtype


def best_ms(fn, repeats: int, rounds: int = 3) -> float:
    """Fastest mean over a few rounds, in ms (the minimum filters out other processes' noise)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        times.append((time.perf_counter() - t0) / repeats * 1e3)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--context", type=int, default=200, help="tokens already in the cache")
    ap.add_argument("--nodes", default="1,4,8,16,32,64")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="results/runner")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, args.device)
    bb = load_backbone(args.backbone, dtype, args.device)
    model = bb.model
    hf = AutoModelForCausalLM.from_pretrained(bb.path, dtype=dtype).to(args.device).eval()
    prefix = torch.arange(args.context, device=args.device) + 100

    model.reset()
    model.forward(prefix)
    model.commit(None, args.context)
    with torch.inference_mode():
        cache = hf(prefix[None], use_cache=True).past_key_values

    rows = []
    for k in (int(x) for x in args.nodes.split(",")):
        tokens = torch.arange(k, device=args.device) + 500
        # a chain is the worst case for the mask (every node sees all earlier ones); trees cost the same
        mask = torch.ones(k, k, dtype=torch.bool, device=args.device).tril()

        def ours():
            model.forward(tokens, tree_mask=mask if k > 1 else None)

        def theirs():
            with torch.inference_mode():
                hf(tokens[None], past_key_values=cache, use_cache=True)
            cache.crop(-k)

        ours_ms, hf_ms = best_ms(ours, args.repeats), best_ms(theirs, args.repeats)
        rows.append({"nodes": k, "specdec_ms": ours_ms, "transformers_ms": hf_ms})
        print(f"k={k:3d}  specdec {ours_ms:7.1f} ms  transformers {hf_ms:7.1f} ms")
    base = rows[0]
    for r in rows:
        r["specdec_ratio_vs_k1"] = r["specdec_ms"] / base["specdec_ms"]
        r["transformers_ratio_vs_k1"] = r["transformers_ms"] / base["transformers_ms"]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"verify_cost_{str(dtype).removeprefix('torch.')}"
    config = {"dtype": str(dtype), "device": args.device, "threads": torch.get_num_threads(), "context": args.context,
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "backbone": str(bb.path)}
    (out / f"{name}.json").write_text(json.dumps({"config": config, "rows": rows}, indent=2))
    lines = ["| nodes | specdec ms | x k=1 | transformers ms | x k=1 |", "|---|---|---|---|---|"]
    lines += [f"| {r['nodes']} | {r['specdec_ms']:.1f} | {r['specdec_ratio_vs_k1']:.2f} | {r['transformers_ms']:.1f} | "
              f"{r['transformers_ratio_vs_k1']:.2f} |" for r in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
