"""GPU benchmark: MT-Bench tokens/s and speedups of every method, plain decoding's achieved memory bandwidth, and
the verify-cost curve of a 7B-shaped Llama (bf16 and int8) -> results/gpu/<device>.json and .md.

    python scripts/gpu_bench.py                              # on a CUDA machine: everything (~10 min on an H100)
    python scripts/gpu_bench.py --parts curve --nodes 1,8,64  # one part
    python scripts/gpu_bench.py --quick --device cpu          # smoke test: tiny shapes, a few tokens
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mtbench_speedup  # noqa: E402  (a sibling script)
from specdec import cli
from specdec.backbone import load_backbone, resolve_dtype  # noqa: E402
from specdec.decode import decode  # noqa: E402
from specdec.metrics import markdown as methods_table  # noqa: E402
from specdec.model import ModelArgs, Transformer  # noqa: E402
from specdec.quantize import quantize_model  # noqa: E402
from specdec.verify_step import VerifyStep  # noqa: E402

METHODS = "hf,vanilla,ngram,lookahead,medusa,medusa-trigram,eagle,eagle2"
PARTS = ("mtbench", "bandwidth", "curve")
# peak DRAM bandwidth by device-name pattern, bytes/s (vendor data sheets)
CARD_BANDWIDTH = {r"H200": 4.8e12, r"H100.*NVL": 3.9e12, r"H100.*PCIe": 2.0e12, r"H100": 3.35e12,
                  r"A100.*80GB": 2.039e12, r"A100": 1.555e12, r"L40S": 0.864e12, r"A10G": 0.6e12}
# Llama-2-7B's shape; "tiny" keeps the same code path for the CPU smoke test
SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
}


def card_bandwidth(name: str) -> float | None:
    """The card's peak memory bandwidth in bytes/s, None when unknown (CPUs included)."""
    return next((bw for pattern, bw in CARD_BANDWIDTH.items() if re.search(pattern, name)), None)


def weight_bytes(model: Transformer) -> int:
    """Bytes of weights one decoding step reads: every parameter and buffer except the embedding table (a step reads
    one of its rows), unless the lm_head multiplies by that table itself (tied and not packed)."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    table = model.tok_embeddings.weight
    if not (type(model.output) is torch.nn.Linear and model.output.weight is table):
        tensors.pop(id(table))
    return sum(t.numel() * t.element_size() for t in tensors.values())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of fn in ms after two warm-up calls (graphs and caches settle)."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def bandwidth(args: argparse.Namespace, device: torch.device) -> dict:
    """Plain decoding of the default backbone through the verify step: steps/s x weight bytes, against the card."""
    bb = load_backbone(None, resolve_dtype(args.dtype, device), device)
    step = VerifyStep(bb.model, args.verify)
    ids = bb.encode_chat("Tell me a long story about a lighthouse keeper.")
    step.warm_up()
    decode(bb.model, ids, None, 16, step=step)  # warm-up (caches)
    res = decode(bb.model, ids, None, args.bandwidth_tokens, step=step)
    steps_per_s = res.stats.steps / res.stats.decode_s
    nbytes = weight_bytes(bb.model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = card_bandwidth(name) if device.type == "cuda" else None
    achieved = nbytes * steps_per_s
    return {"backbone": str(bb.path), "dtype": str(bb.model.output.weight.dtype).removeprefix("torch."),
            "verify": step.mode, "steps": res.stats.steps, "steps_per_s": steps_per_s, "weight_bytes": nbytes,
            "achieved_GBps": achieved / 1e9, "card_peak_GBps": peak / 1e9 if peak else None,
            "fraction_of_peak": achieved / peak if peak else None}


def random_llama(shape: str, dtype: torch.dtype, device: torch.device, context: int, max_nodes: int) -> Transformer:
    """A random-weight Llama of the named shape, built directly in dtype on device, with its cache set up."""
    cfg = dict(SHAPES[shape], model_type="llama", rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Transformer(ModelArgs.from_hf(cfg)).eval()
    finally:
        torch.set_default_dtype(default)
    model.setup_cache(context + 2 * max_nodes)
    return model


def verify_curve(args: argparse.Namespace, device: torch.device, quantize: str | None) -> list[dict]:
    """Forward time of k tree nodes (a chain: the densest mask) on a filled cache, per k, and its ratio to k = 1."""
    nodes = [int(x) for x in args.nodes.split(",")]
    model = random_llama(args.shape, torch.bfloat16 if device.type == "cuda" else torch.float32, device,
                         args.context, max(nodes))
    if quantize:
        quantize_model(model, quantize, device)
    step = VerifyStep(model, args.curve_verify, max_nodes=max(nodes))
    prefix = torch.randint(0, model.args.vocab_size, (args.context,), device=device)
    model.reset()
    model.forward(prefix, logits_for=slice(-1, None))
    model.commit(None, args.context)
    rows = []
    for k in tqdm(nodes, desc=f"verify cost {quantize or 'float'}"):
        tokens = torch.randint(0, model.args.vocab_size, (k,), device=device)
        rows.append({"nodes": k, "ms": median_ms(lambda: step(tokens), device, args.repeats)})
    for r in rows:
        r["ratio_vs_k1"] = r["ms"] / rows[0]["ms"]
    return rows


def report(result: dict) -> str:
    """The report: MT-Bench table, bandwidth line, verify-cost table."""
    lines = [f"# GPU benchmark: {result['device']}", ""]
    if "mtbench" in result:
        lines += ["## MT-Bench", "", methods_table(result["mtbench"]["methods"]), ""]
    if "bandwidth" in result:
        b = result["bandwidth"]
        frac = (f" = {b['fraction_of_peak']:.0%} of the card's {b['card_peak_GBps']:.0f} GB/s"
                if b["card_peak_GBps"] else "")
        lines += ["## Plain decoding bandwidth", "",
                  f"{b['weight_bytes'] / 1e6:.0f} MB of weights x {b['steps_per_s']:.1f} steps/s = "
                  f"{b['achieved_GBps']:.1f} GB/s{frac} ({b['dtype']}, verify {b['verify']})", ""]
    if "curve" in result:
        kinds = list(result["curve"])
        lines += [f"## Verify cost, {result['curve_shape']}-shaped random Llama, {result['context']}-token cache", "",
                  "| nodes | " + " | ".join(f"{q} ms | {q} x k=1" for q in kinds) + " |",
                  "|---:|" + "---:|---:|" * len(kinds)]
        for i, r in enumerate(result["curve"][kinds[0]]):
            cells = " | ".join(f"{result['curve'][q][i]['ms']:.2f} | {result['curve'][q][i]['ratio_vs_k1']:.2f}"
                               for q in kinds)
            lines.append(f"| {r['nodes']} | {cells} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.parser(__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--dtype", default="auto", help="SmolLM2's dtype (auto: bf16 on CUDA)")
    ap.add_argument("--verify", default="auto", help="verify step for our methods (auto: CUDA graphs on GPU)")
    ap.add_argument("--bandwidth-tokens", type=int, default=256)
    ap.add_argument("--shape", default="7b", choices=list(SHAPES), help="verify-cost model shape")
    ap.add_argument("--nodes", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--context", type=int, default=1024, help="tokens in the cache for the verify-cost curve")
    ap.add_argument("--curve-verify", default="eager", help="verify step for the curve (graphs: one capture per k)")
    ap.add_argument("--quantize", default="none,int8", help="curve variants: none (bf16) and/or int8")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny shapes, 2 questions, 16 tokens")
    ap.add_argument("--out", default=None, help="default: results/gpu (results/tmp/gpu with --quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.questions, args.max_new_tokens, args.bandwidth_tokens = 2, 16, 16
        args.shape, args.nodes, args.context, args.repeats = "tiny", "1,4,16", 64, 3
        args.methods = "hf,vanilla,ngram"
    args.out = Path(args.out or ("results/tmp/gpu" if args.quick else "results/gpu"))
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the chosen parts, write <out>/<device>.json and .md, print the report; returns the JSON object."""
    args = parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    parts = args.parts.split(",")
    result: dict = {"device": name, "machine": mtbench_speedup.machine_info(device), "flags": {
        k: str(v) for k, v in vars(args).items()}}
    if "mtbench" in parts:
        result["mtbench"] = mtbench_speedup.main([
            "--device", args.device, "--dtype", args.dtype, "--verify", args.verify, "--methods", args.methods,
            "--questions", str(args.questions), "--max-new-tokens", str(args.max_new_tokens),
            "--out", str(args.out / "mtbench")])
    if "bandwidth" in parts:
        result["bandwidth"] = bandwidth(args, device)
    if "curve" in parts:
        result["curve_shape"], result["context"] = args.shape, args.context
        float_name = "bf16" if device.type == "cuda" else "fp32"
        result["curve"] = {}
        for q in args.quantize.split(","):
            result["curve"][float_name if q == "none" else q] = verify_curve(args, device, None if q == "none" else q)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the last 7B model is gone with verify_curve's frame: free its blocks
    args.out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    text = report(result)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {args.out / stem}.json and .md")
    return result


if __name__ == "__main__":
    cli.run(main)
