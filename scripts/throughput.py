"""Batched throughput: MT-Bench first turns through batch sizes 1, 2, 4, 8, 16 for transformers' batched `generate`
(left padding), our plain decoding and each drafter; total tokens/s, per-request latency, tau, identity.

Every method decodes the same prompts greedily at each batch size, in one process, same dtype. Ours run continuous
batching (a finished row takes the next prompt at once); transformers runs the prompts batch_size at a time.
A request's latency is from its prefill to its last token (transformers: its batch's wall time). "stops paying":
the smallest batch size at which a drafter's tokens/s falls to our plain decoding's at that size or below.
    python scripts/throughput.py --questions 16 --max-new-tokens 96             # into results/tmp/throughput
    python scripts/throughput.py --methods ngram,eagle2+lookup --batch-sizes 1,4,8
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

import specdec
from mtbench_speedup import default_threads, machine_info, parse_weights, resolve_methods
from specdec import cli, machine
from specdec.backbone import resolve_dtype
from specdec.batch import decode_batch
from specdec.data import load_mtbench, stratified_subset
from specdec.decode import DecodeResult
from specdec.drafters import make_drafter
from specdec.metrics import first_divergence

DEFAULT_METHODS = "hf,vanilla,ngram,lookahead,eagle2+lookup,eagle3+lookup"
WARMUP_TOKENS = 8


def parse_args(argv: list[str] | None = None):
    p = cli.parser(__doc__)
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma list; hf and vanilla are always added (default {DEFAULT_METHODS})")
    p.add_argument("--batch-sizes", default="1,2,4,8,16", help="comma list of batch sizes")
    p.add_argument("--questions", type=int, default=80, help="MT-Bench first turns, a stratified subset")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    p.add_argument("--backbone", default=None, help="local Hugging Face directory (default: embedded SmolLM2-135M)")
    p.add_argument("--weights", action="append", default=[], metavar="METHOD=PATH_OR_SHIPPED_NAME[,...]",
                   help="weights for a method that takes them (Medusa heads, an EAGLE draft); repeatable")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="torch threads (default: $OMP_NUM_THREADS when set, else every core this process may use)")
    p.add_argument("--peers", choices=("vllm",), action="append", default=[],
                   help="add vLLM's CPU build (.venv-vllm, scripts/setup_vllm.sh), plain and n-gram, on the same "
                        "prompts at each batch size (static batches)")
    p.add_argument("--out", default="results/tmp/throughput",
                   help="output directory (default git-ignored: a quick run never overwrites reference results)")
    args = p.parse_args(argv)
    try:
        args.methods = resolve_methods(args.methods)
        args.weights = parse_weights(args.weights, args.methods)
        args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    except ValueError as e:
        p.error(str(e))
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--batch-sizes must be positive integers")
    if args.questions < 1 or args.max_new_tokens < 1 or args.threads < 1:
        p.error("--questions, --max-new-tokens and --threads must be at least 1")
    return args


def hf_batched(model, stop_ids: list[int], prompts: list[list[int]], batch_size: int,
               max_new_tokens: int) -> tuple[list[list[int]], list[float], float]:
    """transformers `generate`, greedy, left-padded batches of batch_size in order: each prompt's tokens (cut after
    its first stop id, as ours are), each request's latency (its batch's wall time) and the total wall time."""
    pad = stop_ids[0]
    tokens, latency, t_all = [], [], time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                 eos_token_id=stop_ids, pad_token_id=pad)
        wall = time.perf_counter() - t0
        for row in out[:, width:].tolist():
            cut = next((j for j, t in enumerate(row) if t in stop_ids), None)
            tokens.append(row if cut is None else row[: cut + 1])
            latency.append(wall)
    return tokens, latency, time.perf_counter() - t_all


def ours(backbone: specdec.Backbone, drafter, prompts: list[list[int]], batch_size: int, max_new_tokens: int,
         track_top2_gaps: bool = False) -> tuple[list[DecodeResult], float]:
    t0 = time.perf_counter()
    res = decode_batch(backbone.model, prompts, drafter, batch_size, max_new_tokens, backbone.stop_ids,
                       track_top2_gaps=track_top2_gaps)
    return res, time.perf_counter() - t0


def identity(tokens: list[list[int]], reference: list[DecodeResult]) -> dict:
    """How many prompts equal the reference (our plain decoding at batch 1) token for token; for the others, the
    reference's top-2 logit gap where they first differ (a near-tie under bf16 rounding, or a real difference)."""
    gaps = []
    for got, ref in zip(tokens, reference):
        pos = first_divergence(got, ref.tokens)
        if pos is not None:
            gaps.append(ref.top2_gaps[pos] if ref.top2_gaps and pos < len(ref.top2_gaps) else None)
    return {"identical": len(tokens) - len(gaps), "of": len(tokens), "divergence_top2_gaps": gaps}


def summary(tokens: list[list[int]], latency: list[float] | None, wall: float, steps: int | None,
            emitted: int | None, ident: dict) -> dict:
    lat = sorted(latency or [])
    return {"tokens_per_s": sum(map(len, tokens)) / wall, "latency_mean_s": sum(lat) / len(lat) if lat else None,
            "latency_p90_s": lat[min(len(lat) - 1, int(0.9 * len(lat)))] if lat else None,
            "tau": None if not steps else emitted / steps, "identical": ident}


def vllm_peers(prompts: list[list[int]], backbone: specdec.Backbone, dtype: torch.dtype, args, out: Path,
               reference: list[DecodeResult]) -> dict[str, dict]:
    """--peers vllm: vLLM's CPU build on the same prompts, plain ("vllm") and its n-gram speculator ("vllm-ngram"),
    at each batch size (batches of that many prompts in order), in rows like ours (latency not measured; tau is
    vLLM's mean accepted length); nothing, with a line saying why, when .venv-vllm does not exist."""
    import argparse

    import vllm_bench
    from specdec.export import export_backbone

    if not vllm_bench.VLLM_PYTHON.is_file():
        print(f"vLLM peers skipped: no {vllm_bench.VLLM_PYTHON.parents[1]} (bash scripts/setup_vllm.sh makes it)")
        return {}
    served = export_backbone(backbone.path, out / "export" / "backbone")
    settings = argparse.Namespace(batch_sizes=args.batch_sizes, max_new_tokens=args.max_new_tokens,
                                  dtype="bf16" if dtype == torch.bfloat16 else "fp32", threads=args.threads,
                                  speculative_tokens=3)
    peers = {}
    for method, name in (("vanilla", "vllm"), ("ngram", "vllm-ngram")):
        rows = vllm_bench.vllm_rows(method, prompts, backbone.stop_ids, served, None, settings)
        peers[name] = {str(r["batch"]): summary(r["tokens"], None, r["wall_s"], None, None,
                                                identity(r["tokens"], reference)) | {"tau": r["mean_accepted"]}
                       for r in rows}
    return peers


def stops_paying(methods: dict[str, dict]) -> dict[str, int | None]:
    """Per drafter of ours, the smallest batch size whose tokens/s is at or below our plain decoding's (None: it always
    pays)."""
    plain = methods["vanilla"]
    return {name: next((int(b) for b, row in sorted(rows.items(), key=lambda kv: int(kv[0]))
                        if row["tokens_per_s"] <= plain[b]["tokens_per_s"]), None)
            for name, rows in methods.items() if name not in ("hf", "vanilla") and not name.startswith("vllm")}


def caption(config: dict) -> str:
    m = config["machine"]
    return (f"{config['questions']} MT-Bench first turns, {config['max_new_tokens']} new tokens, greedy, "
            f"{Path(config['backbone_path']).name}, {config['dtype']}, {m['cpu']} ({m['threads']} threads), "
            f"torch {m['torch']}; ours: continuous batching")


def markdown(methods: dict[str, dict], config: dict) -> str:
    sizes = sorted({int(b) for rows in methods.values() for b in rows})
    paying = stops_paying(methods)
    head = "| method | " + " | ".join(f"batch {b}: tok/s (x plain)" for b in sizes) + " | tau (batch 1 .. max) | " \
        "identical | stops paying at |"
    lines = [f"*{caption(config)}*", "", head, "|" + "---|" * (len(sizes) + 4)]
    for name, rows in methods.items():
        cells = []
        for b in sizes:
            row, plain = rows.get(str(b)), methods["vanilla"].get(str(b))
            ratio = None if row is None else row["tokens_per_s"] / plain["tokens_per_s"]
            cells.append("—" if row is None else f"{row['tokens_per_s']:.1f} ({ratio:.2f}x)")
        taus = [rows[str(b)]["tau"] for b in sizes if str(b) in rows and rows[str(b)]["tau"] is not None]
        tau = f"{taus[0]:.2f} .. {taus[-1]:.2f}" if taus else "—"
        same = [rows[str(b)]["identical"] for b in sizes if str(b) in rows]
        ident = f"{sum(s['identical'] for s in same)}/{sum(s['of'] for s in same)}"
        gaps = [g for s in same for g in s["divergence_top2_gaps"]]
        if gaps:
            known = [g for g in gaps if g is not None]
            ident += f", top-2 gap ≤ {max(known):.3g}" if known else ""
            ident += f", {len(gaps) - len(known)} gap unknown" if len(known) < len(gaps) else ""
        pays = "—" if name not in paying else (f"batch {paying[name]}" if paying[name] else "pays at every size")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {tau} | {ident} | {pays} |")
    lines += ["", "identical: prompts token-identical to our plain decoding at batch 1, summed over the batch sizes; "
              "for the others, the largest top-2 logit gap of plain decoding where they first differ. In fp32 no "
              "divergence is allowed; in bf16 a near-tie (a gap of a bf16 step or two) may flip, since another batch "
              "shape rounds differently (each gap is in the JSON)."]
    return "\n".join(lines) + "\n"


def plot(methods: dict[str, dict], config: dict, paths: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, rows in methods.items():
        sizes = sorted(int(b) for b in rows)
        values = [rows[str(b)]["tokens_per_s"] for b in sizes]
        ax.plot(sizes, values, marker="o", label=name)
        for b, v in zip(sizes, values):
            ax.annotate(f"{v:.0f}", (b, v), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("total tokens/s")
    ax.set_title("Throughput vs batch size\n" + caption(config), fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=300)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, "cpu")
    backbone = specdec.load_backbone(args.backbone, dtype, max_seq_len=2048 + args.max_new_tokens)
    questions = stratified_subset(load_mtbench(), args.questions)
    prompts = [backbone.encode_chat(q.turns[0]) for q in questions]
    points = machine.calibrate(backbone.model)  # the drafters made next cut their trees by this machine's curve
    drafters = {name: make_drafter(name, backbone.model, **({"weights": args.weights[name]}
                                                            if name in args.weights else {}))
                for name in args.methods if name != "hf"}
    hf = None
    if "hf" in args.methods:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(backbone.path, dtype=dtype).eval()
    for name in tqdm(args.methods, desc="warming up", unit="method"):
        if name == "hf":
            hf_batched(hf, backbone.stop_ids, prompts[:2], 2, WARMUP_TOKENS)
        else:
            ours(backbone, drafters[name], prompts[:2], 2, WARMUP_TOKENS)
    reference, _ = ours(backbone, drafters["vanilla"], prompts, 1, args.max_new_tokens, track_top2_gaps=True)
    methods: dict[str, dict] = {name: {} for name in args.methods}
    t_start = time.perf_counter()
    with tqdm(total=len(args.batch_sizes) * len(args.methods), desc="throughput", unit="run") as bar:
        for b in args.batch_sizes:
            for name in args.methods:
                bar.set_postfix(batch=b, method=name)
                if name == "hf":
                    tokens, latency, wall = hf_batched(hf, backbone.stop_ids, prompts, b, args.max_new_tokens)
                    steps = emitted = None
                else:
                    res, wall = ours(backbone, drafters[name], prompts, b, args.max_new_tokens)
                    tokens = [r.tokens for r in res]
                    latency = [r.stats.prefill_s + r.stats.decode_s for r in res]
                    steps = sum(r.stats.steps for r in res)
                    emitted = sum(sum(r.stats.accepted) for r in res)
                methods[name][str(b)] = summary(tokens, latency, wall, steps, emitted, identity(tokens, reference))
                bar.update()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "vllm" in args.peers:
        methods |= vllm_peers(prompts, backbone, dtype, args, out, reference)
    config = {"flags": {k: v for k, v in vars(args).items()}, "questions": len(prompts),
              "question_ids": [q.question_id for q in questions], "max_new_tokens": args.max_new_tokens,
              "backbone_path": str(backbone.path), "dtype": str(dtype).removeprefix("torch."),
              "machine": machine_info(torch.device("cpu")), "verify_cost_points": points,
              "benchmark_wall_s": time.perf_counter() - t_start}
    result = {"config": config, "methods": methods, "stops_paying": stops_paying(methods)}
    (out / "throughput.json").write_text(json.dumps(result, indent=2))
    table = markdown(methods, config)
    (out / "throughput.md").write_text(table)
    plot(methods, config, [out / "throughput.png", out / "throughput.svg"])
    print(table)
    print(f"wrote {out}/throughput.json, .md, .png, .svg")
    return result


if __name__ == "__main__":
    cli.run(main)
