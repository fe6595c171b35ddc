"""Shared plumbing of the ablation scripts (ablate_trigram, sweep_tree, sweep_heads).

MT-Bench runs of several named drafters against transformers `generate` (mtbench_speedup's harness, interleaved
per question), Medusa heads trained with train/train_heads.py or loaded when already trained, held-out accuracy
with train_heads' own evaluation, the tiny self-made data sets of --quick, and JSON/Markdown/PNG output.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

import mtbench_speedup as mtb
import specdec
from copy_prompts import copy_prompts
from specdec.backbone import resolve_dtype
from specdec.checkpoint import read_config
from specdec.data import Question, load_mtbench
from specdec.decode import decode
from specdec.drafters import Drafter
from specdec.medusa import MedusaHeads
from specdec.metrics import markdown, summarize
from specdec.training.data import append_records, head_data
from specdec.training.medusa import evaluate

ROOT = Path(__file__).resolve().parents[1]

# --quick: a CI smoke test on the real backbone, seconds not minutes
QUICK_QUESTIONS, QUICK_TOKENS = 2, 8
QUICK_ANSWER_TOKENS = 16  # greedy answer length of the self-made held-out / training records
DISTILL_TRAIN = Path("data/distill_train.jsonl")  # relative: the recorded training command stays portable
DISTILL_HELDOUT = Path("data/distill_heldout.jsonl")
# train/train_heads.py flags of the shipped medusa / medusa-trigram heads (their config.json), less data, eval and --out
SHIPPED_TRAIN_FLAGS = ["--draft-vocab", "8192", "--micro-batch", "128", "--lr", "3e-3", "--epochs", "3",
                       "--eval-every", "400"]
TRIGRAM_FLAGS = {"off": ["--trigram", "none"], "on": ["--trigram", "all", "--trigram-tokens", "pending"]}


def add_common_flags(p: argparse.ArgumentParser, questions: int, max_new_tokens: int, out: str) -> None:
    """Flags every ablation takes: MT-Bench subset and length, dtype, threads, seed, output directory, --quick."""
    p.add_argument("--questions", type=int, default=questions, help="stratified MT-Bench subset (first turns)")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="fp32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=out, help="output directory")
    p.add_argument("--quick", action="store_true",
                   help=f"CI smoke test: {QUICK_QUESTIONS} questions x {QUICK_TOKENS} tokens, tiny self-made data")


def setup(args: argparse.Namespace) -> tuple[specdec.Backbone, argparse.Namespace]:
    """Threads and seed, the backbone, and mtbench_speedup's flags for the same run (greedy, first turns)."""
    if args.quick:
        args.questions, args.max_new_tokens = (min(args.questions, QUICK_QUESTIONS),
                                               min(args.max_new_tokens, QUICK_TOKENS))
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    torch.manual_seed(args.seed)
    bench = mtb.parse_args(["--questions", str(args.questions), "--max-new-tokens", str(args.max_new_tokens),
                            "--dtype", args.dtype, "--seed", str(args.seed), "--methods", "hf,vanilla"])
    backbone = specdec.load_backbone(None, resolve_dtype(args.dtype, "cpu"), "cpu",
                                     max_seq_len=2048 + args.max_new_tokens)
    return backbone, bench


def run_mtbench(backbone: specdec.Backbone, bench: argparse.Namespace,
                drafters: dict[str, Drafter]) -> tuple[dict, dict]:
    """hf, vanilla and each named drafter on the same MT-Bench questions, interleaved; (per-method results, config)."""
    methods = mtb.build_methods(bench.methods, backbone, bench)
    sampling = mtb.sampling_config(bench)
    methods.update({name: mtb.drafter_generate(backbone, d, sampling) for name, d in drafters.items()})
    questions = mtb.select_questions(bench)
    t0 = time.perf_counter()
    results = summarize(mtb.run_all(methods, questions, backbone, bench), mtb.BASELINE, mtb.REFERENCE)
    config = {"question_ids": [q.question_id for q in questions], "max_new_tokens": bench.max_new_tokens,
              "dtype": str(backbone.model.output.weight.dtype).removeprefix("torch."),
              "machine": mtb.machine_info(torch.device("cpu")), "mtbench_wall_s": round(time.perf_counter() - t0, 1)}
    return results, config


def self_distill(backbone: specdec.Backbone, questions: list[Question], path: Path, max_new_tokens: int) -> Path:
    """gen_distill.py's format made here: greedy answers to `questions` plus the runner's final hidden states."""
    model, records, hidden = backbone.model, [], []
    for q in tqdm(questions, desc=f"self-distill {path.stem}", unit="answer"):
        prompt = backbone.encode_chat(q.turns[0])
        answer = decode(model, prompt, max_new_tokens=max_new_tokens, stop_ids=backbone.stop_ids).tokens
        model.reset()
        with torch.inference_mode():
            hidden.append(model.forward(torch.tensor(prompt + answer[:-1])).hidden)
        records.append({"id": f"{path.stem}-{q.question_id}", "prompt": prompt, "answer": answer})
    model.reset()
    append_records(path, "00000.safetensors", records, hidden)
    return path


def quick_data(backbone: specdec.Backbone, workdir: Path, n_train: int = 0,
               n_heldout: int = 2) -> tuple[Path | None, Path]:
    """Tiny (train, held-out) files for --quick: copy-heavy prompts to train on, MT-Bench's last questions held out
    (the benchmark takes its first ones)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for f in workdir.glob("quick_*"):  # a rerun starts clean: append_records appends
        if f.is_dir():
            for g in f.iterdir():
                g.unlink()
            f.rmdir()
        else:
            f.unlink()
    heldout = self_distill(backbone, load_mtbench()[-n_heldout:], workdir / "quick_heldout.jsonl", QUICK_ANSWER_TOKENS)
    train = (self_distill(backbone, copy_prompts()[:n_train], workdir / "quick_train.jsonl", QUICK_ANSWER_TOKENS)
             if n_train else None)
    return train, heldout


def require(path: Path, what: str) -> Path:
    """A data file the full run needs, with the command that makes it when it is missing."""
    if not path.is_file():
        raise SystemExit(f"{what} not found: {path}. Make it with train/gen_distill.py (README, 'Medusa heads'), "
                         "or pass another file, or use --quick")
    return path


def train_or_load(out: Path, flags: list[str]) -> Path:
    """Heads trained by train_heads.py with `flags` into out/heads, or loaded when that exact command already ran."""
    argv = [*flags, "--out", str(out)]
    heads = out / "heads"
    command = shlex.join(["train/train_heads.py", *argv])
    if (heads / "config.json").is_file():
        done = read_config(heads).get("train", {}).get("command")
        if done == command:
            print(f"loading {heads} (already trained with this command)")
            return heads
        raise SystemExit(f"{heads} was trained with another command:\n  {done}\nnot\n  {command}\n"
                         "pass another --run-dir or delete it")
    print(f"training: {command}", flush=True)
    subprocess.run([sys.executable, str(ROOT / "train" / "train_heads.py"), *argv], check=True)
    return heads


def heldout_accuracy(heads: MedusaHeads, model, path: Path, positions: int) -> dict:
    """Per-head top-1/top-5 and per-rank accuracy on held-out positions (the training's own evaluation)."""
    data = head_data(path, heads.config.num_heads, positions)
    lm_head = heads.draft_lm_head(model.output.weight)
    return evaluate(heads, data, model.tok_embeddings.weight, lm_head, 512)


def first_heads(heads: MedusaHeads, k: int) -> MedusaHeads:
    """The first k heads of a checkpoint as a k-head model (heads share no parameters)."""
    if not 1 <= k <= heads.config.num_heads:
        raise ValueError(f"cannot take {k} of {heads.config.num_heads} heads")
    config = replace(heads.config, num_heads=k, trigram=heads.config.trigram[:k])
    small = MedusaHeads(config)
    keep = {n: t for n, t in heads.state_dict().items() if not n.startswith("heads.") or int(n.split(".")[1]) < k}
    small.load_state_dict(keep)
    w = heads.vocab_ids
    return small.to(device=w.device, dtype=next(heads.parameters()).dtype).eval().requires_grad_(False)


def write_outputs(out: str | Path, stem: str, payload: dict, table: str, methods: dict, plot) -> list[Path]:
    """STEM.json (payload), STEM.md (the ablation table, then mtbench's per-method/per-category table) and STEM.png
    (plot(path)) into out; prints the table and the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    paths[0].write_text(json.dumps(payload, indent=2, default=str) + "\n")
    paths[1].write_text(table + "\nMT-Bench detail (speedup vs transformers `generate`, same run):\n\n"
                        + markdown(methods))
    plot(paths[2])
    print(table)
    print("wrote " + ", ".join(map(str, paths)))
    return paths


def settings_line(config: dict) -> str:
    """One line saying where and how the numbers were measured."""
    m = config["machine"]
    return (f"{m['cpu']}, {m['cores']} cores, {m['threads']} torch thread(s), {config['dtype']}, torch {m['torch']}; "
            f"MT-Bench first turns {config['question_ids']}, {config['max_new_tokens']} new tokens, greedy, batch 1")
