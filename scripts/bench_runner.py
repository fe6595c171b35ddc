"""Verify-cost curve of the lean runner against transformers: one forward of k tree nodes on a filled cache, and a
plain step's share of the memory-bandwidth limit (the weights and the cache it reads, at the bandwidth measured
here). On a CPU the runner is timed eager with oneDNN-packed linears ("eager", the default), eager with plain
nn.Linear ("unpacked") and through the compiled static-shape step ("compile", specdec.verify_step).

    python scripts/bench_runner.py --dtype bf16 --nodes 1,2,4,8,16,32,64 --out results/runner
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from specdec import cli
from specdec.backbone import load_backbone, resolve_dtype
from specdec.machine import best_times, cpu_identity
from specdec.verify_step import VerifyStep

RUNNERS = ("eager", "unpacked", "compile", "transformers")


def read_bandwidth(gib: float = 1.0, rounds: int = 5) -> float:
    """Memory read bandwidth in GB/s: the fastest sum over a buffer far larger than any cache."""
    x = torch.ones(int(gib * 2**30) // 4)
    x.sum()
    best = min(_timed(x.sum) for _ in range(rounds))
    return x.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = cli.parser(__doc__)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--context", type=int, default=200, help="tokens already in the cache")
    ap.add_argument("--nodes", default="1,2,4,8,16,32,64")
    ap.add_argument("--runners", default=",".join(RUNNERS), help=f"comma list of {', '.join(RUNNERS)}")
    ap.add_argument("--repeats", type=int, default=5, help="forwards per timing")
    ap.add_argument("--rounds", type=int, default=8, help="timings per k, interleaved over all k")
    ap.add_argument("--out", default="results/runner")
    args = ap.parse_args()
    names = args.runners.split(",")
    if not names or set(names) - set(RUNNERS):
        ap.error(f"--runners takes a comma list of {', '.join(RUNNERS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, "cpu")
    ks = [int(x) for x in args.nodes.split(",")]
    prefix = torch.arange(args.context) + 100
    steps, compile_s = {}, None
    for name in names:
        if name == "transformers":
            continue
        model = load_backbone(args.backbone, dtype, pack=name == "eager").model
        steps[name] = VerifyStep(model, "compile" if name == "compile" else "eager", max_nodes=max(ks))
        t0 = time.perf_counter()
        steps[name].warm_up()
        if name == "compile":
            compile_s = time.perf_counter() - t0
        model.reset()
        model.forward(prefix)
        model.commit(None, args.context)
    fns = {}
    for k in ks:
        tokens = torch.arange(k) + 500
        # a chain is the worst case for the mask (every node sees all earlier ones); trees cost the same
        mask = torch.ones(k, k, dtype=torch.bool).tril()
        for name, step in steps.items():
            fns[(name, k)] = lambda step=step, tokens=tokens, mask=mask: step(tokens, tree_mask=mask)
    plain = load_backbone(args.backbone, dtype, max_seq_len=16, pack=False)  # its path, shapes and weights' bytes
    if "transformers" in names:
        hf = AutoModelForCausalLM.from_pretrained(plain.path, dtype=dtype).eval()
        with torch.inference_mode():
            cache = hf(prefix[None], use_cache=True).past_key_values

        def theirs(tokens: torch.Tensor):
            with torch.inference_mode():
                hf(tokens[None], past_key_values=cache, use_cache=True)
            cache.crop(-tokens.shape[0])

        for k in ks:
            fns[("transformers", k)] = lambda k=k: theirs(torch.arange(k) + 500)
    with torch.inference_mode():
        ms = {key: t * 1e3 for key, t in best_times(fns, args.rounds, args.repeats).items()}
    rows = [{"nodes": k, **{f"{n}_ms": ms[(n, k)] for n in names}} for k in ks]
    for r in rows:
        for n in names:
            r[f"{n}_ratio_vs_k1"] = r[f"{n}_ms"] / rows[0][f"{n}_ms"]

    # what one plain step must read: every weight once (a tied lm_head is the embedding) and the cache's K/V
    a = plain.model.args
    weight_bytes = sum(p.numel() * p.element_size() for p in plain.model.parameters())
    kv_bytes = args.context * a.n_layers * 2 * a.n_kv_heads * a.head_dim * plain.model.kv.element_size()
    bandwidth = read_bandwidth()
    floor_ms = (weight_bytes + kv_bytes) / bandwidth / 1e6
    bound = {"read_bandwidth_gb_s": round(bandwidth, 1), "bytes_per_step": weight_bytes + kv_bytes,
             "bandwidth_floor_ms": round(floor_ms, 2),
             **{f"{n}_share_of_bound": round(floor_ms / rows[0][f"{n}_ms"], 3) for n in names}}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"verify_cost_{str(dtype).removeprefix('torch.')}"
    config = {"dtype": str(dtype), "threads": torch.get_num_threads(), "context": args.context,
              "repeats": args.repeats, "rounds": args.rounds, **cpu_identity(), "torch": torch.__version__,
              "compile_warm_up_s": compile_s}
    (out / f"{name}.json").write_text(json.dumps({"config": config, "rows": rows, "bandwidth": bound}, indent=2))
    lines = ["| nodes | " + " | ".join(f"{n} ms | x k=1" for n in names) + " |", "|---" * (1 + 2 * len(names)) + "|"]
    lines += ["| " + " | ".join([str(r["nodes"])]
                                + [f"{r[f'{n}_ms']:.1f} | {r[f'{n}_ratio_vs_k1']:.2f}" for n in names])
              + " |" for r in rows]
    lines += ["", f"Read bandwidth {bandwidth:.1f} GB/s; a plain step reads {(weight_bytes + kv_bytes) / 1e6:.0f} MB: "
              f"at least {floor_ms:.1f} ms. Share of that bound at k=1: "
              + ", ".join(f"{n} {bound[f'{n}_share_of_bound']:.0%}" for n in names) + "."]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main)
