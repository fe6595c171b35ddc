"""MT-Bench first turns on llama.cpp (llama-cpp-python, built for this CPU in .venv-llamacpp), plain decoding and its
prompt-lookup speculative decoding, on the same prompts as specdec: the embedded backbone's own GGUF (Q4_1), the
prompt token ids specdec's chat template makes, greedy, the same stop ids and threads. Each turn's wall time counts
its prompt (no prefix cache between turns), as specdec's tokens/s does.

    bash scripts/setup_llamacpp.sh      # once: .venv-llamacpp, llama-cpp-python built from source (minutes)
    python scripts/llamacpp_bench.py --questions 16 --max-new-tokens 128
    python scripts/mtbench_speedup.py --peers llamacpp,vllm   # the same rows in specdec's own table

llama.cpp runs in .venv-llamacpp, one process per method (this script re-runs itself there with --worker); rows
`llamacpp` (plain) and `llamacpp-lookup` (llama_cpp.llama_speculative.LlamaPromptLookupDecoding). steps: target
forwards after the prompt; tau = tokens they emitted per forward (1 for plain decoding).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from peer_worker import peak_rss_mb, reset_peak_rss, run_worker, worker_entry

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-llamacpp"
LLAMACPP_PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".specdec-llamacpp-installed"
MISSING = f"no llama.cpp environment at {VENV}: bash scripts/setup_llamacpp.sh makes it (a source build, minutes)"
# llama-cpp-python's README: num_pred_tokens 10 suits a GPU, 2 a CPU-only machine; max_ngram_size is its default
LOOKUP = {"max_ngram_size": 2, "num_pred_tokens": 2}
METHODS = {"llamacpp": None, "llamacpp-lookup": LOOKUP}  # row name -> prompt-lookup settings (None: plain)


# ------------------------------------------------------------------------------------------------ the llama.cpp side

def llamacpp_worker(spec: dict) -> dict:
    """Runs in .venv-llamacpp: load the GGUF, warm up, then time each prompt; per-turn tokens, wall seconds, target
    forwards after the prompt, tokens they emitted and peak RSS."""
    import llama_cpp
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    draft = LlamaPromptLookupDecoding(**spec["lookup"]) if spec["lookup"] else None
    threads = spec["threads"]
    llm = Llama(model_path=spec["gguf"], n_ctx=spec["n_ctx"], n_threads=threads, n_threads_batch=threads, seed=0,
                draft_model=draft, verbose=False)
    forwards = 0
    evaluate = llm.eval

    def counted_eval(tokens):  # one call is one target forward (the prompt's, chunked by n_batch, counts once)
        nonlocal forwards
        forwards += 1
        evaluate(tokens)

    llm.eval = counted_eval
    stops = set(spec["stop_ids"])

    def generate(ids: list[int], max_new_tokens: int) -> list[int]:
        llm.reset()  # forget the previous turn: no prefix reuse, every prompt is evaluated whole
        out: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            out.append(token)
            if token in stops or len(out) == max_new_tokens:  # a stop id is kept, as specdec keeps it
                break
        return out

    generate(spec["prompts"][0], 8)  # warm-up
    turns = []
    for ids in spec["prompts"]:
        reset_peak_rss()
        forwards = 0
        t0 = time.perf_counter()
        tokens = generate(ids, spec["max_new_tokens"])
        wall = time.perf_counter() - t0
        turns.append({"tokens": tokens, "wall_s": wall, "steps": forwards - 1, "accepted": len(tokens) - 1,
                      "peak_mem_mb": peak_rss_mb()})
    return {"turns": turns, "version": llama_cpp.__version__,
            "system_info": llama_cpp.llama_print_system_info().decode()}


# ------------------------------------------------------------------------------------------------ the specdec side

def build_flags() -> str:
    """The llama-cpp-python version and CMake flags .venv-llamacpp was built with (its setup stamp)."""
    return STAMP.read_text().strip() if STAMP.is_file() else "unknown (no setup stamp)"


def peer_runs(prompts: list[list[int]], stop_ids: list[int], max_new_tokens: int, threads: int) -> dict[str, dict]:
    """Each llama.cpp method on these prompt ids, its own process: {row name: {"turns": [per prompt: tokens, wall_s,
    steps, accepted, peak_mem_mb], "info": engine, version, build flags, settings}}."""
    from specdec.backbone import embedded_gguf_path

    if not LLAMACPP_PYTHON.is_file():
        raise FileNotFoundError(MISSING)
    gguf = embedded_gguf_path()
    runs = {}
    for name, lookup in METHODS.items():
        spec = {"gguf": str(gguf), "prompts": prompts, "stop_ids": list(stop_ids), "max_new_tokens": max_new_tokens,
                "threads": threads, "lookup": lookup, "n_ctx": max(map(len, prompts)) + max_new_tokens + 64}
        t0 = time.perf_counter()
        res = run_worker(LLAMACPP_PYTHON, __file__, spec, {"OMP_NUM_THREADS": str(threads)}, f"llama.cpp ({name})")
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        draft = "plain" if lookup is None else "prompt lookup (LlamaPromptLookupDecoding " + ", ".join(
            f"{k}={v}" for k, v in lookup.items()) + ")"
        runs[name] = {"turns": res["turns"], "info": {
            "engine": "llama.cpp", "package": f"llama-cpp-python {res['version']}", "build": build_flags(),
            "system_info": res["system_info"], "model": f"{gguf.name} (the embedded backbone's GGUF, as stored)",
            "threads": threads, "decoding": draft}}
    return runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from specdec import cli

    p = cli.parser(__doc__)
    p.add_argument("--questions", type=int, default=16, help="MT-Bench first turns (stratified subset)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="llama.cpp threads")
    p.add_argument("--out", default="results/tmp/llamacpp_bench")
    args = p.parse_args(argv)
    if args.questions < 1 or args.max_new_tokens < 1 or args.threads < 1:
        p.error("--questions, --max-new-tokens and --threads must be at least 1")
    if not LLAMACPP_PYTHON.is_file():
        p.error(MISSING)
    return args


def main(argv: list[str] | None = None) -> dict:
    """llama.cpp alone on MT-Bench first turns: write llamacpp_bench.json into --out and print tokens/s and tau."""
    from specdec.backbone import load_backbone
    from specdec.data import load_mtbench, stratified_subset

    args = parse_args(argv)
    questions = stratified_subset(load_mtbench(), args.questions)
    backbone = load_backbone(max_seq_len=2048 + args.max_new_tokens)  # for its tokenizer, chat template, stop ids
    prompts = [backbone.encode_chat(q.turns[0]) for q in questions]
    runs = peer_runs(prompts, backbone.stop_ids, args.max_new_tokens, args.threads)
    report = {"config": {"questions": [q.question_id for q in questions], "max_new_tokens": args.max_new_tokens,
                         "threads": args.threads}, "methods": {}}
    for name, run in runs.items():
        turns = run["turns"]
        new, steps = sum(len(t["tokens"]) for t in turns), sum(t["steps"] for t in turns)
        report["methods"][name] = {"tokens_per_s": new / sum(t["wall_s"] for t in turns), "new_tokens": new,
                                   "tau": sum(t["accepted"] for t in turns) / max(steps, 1), **run}
        print(f"{name}: {report['methods'][name]['tokens_per_s']:.1f} tok/s, tau "
              f"{report['methods'][name]['tau']:.2f}, {new} tokens")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "llamacpp_bench.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__" and not worker_entry(llamacpp_worker):
    from specdec import cli

    cli.run(main)
