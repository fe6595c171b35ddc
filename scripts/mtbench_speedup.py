"""MT-Bench speedup: each method's tok/s, speedup over transformers `generate`, tau and lossless identity.

All methods run in one process, interleaved question by question, batch 1, same dtype; greedy by default.
With --temperature > 0 every method samples (hf: generate(do_sample=True), same temperature/top-p/top-k) and
identity is n/a; --lossy-typical-acceptance switches the drafters to Medusa's typical acceptance (rows say LOSSY).
    python scripts/mtbench_speedup.py --questions 8 --max-new-tokens 64          # into results/tmp/mtbench
    python scripts/mtbench_speedup.py --methods medusa,eagle2 --weights medusa=runs/x/heads,eagle2=eagle
"""
from __future__ import annotations

import argparse
import ast
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

import specdec
from bench_output import write_results
from copy_prompts import copy_prompts
from peers import missing_environments, parse_peers, peer_records
from specdec import cli, machine
from specdec.backbone import resolve_dtype
from specdec.data import Question, load_mtbench, stratified_subset
from specdec.drafters import Drafter, drafter_names, make_drafter
from specdec.drafters import drafter_options as registry_options
from specdec.metrics import (
    PEAK_MEM_MEANING,
    TurnRecord,
    markdown,
    peak_memory_mb,
    reset_peak_memory,
    summarize,
)
from specdec.sampling import SamplingConfig
from specdec.verify_step import MODES as VERIFY_MODES
from specdec.verify_step import VerifyStep

BASELINE, REFERENCE = "hf", "vanilla"
HF_METHODS = {"hf": None, "hf-pld": 10}  # name -> transformers prompt_lookup_num_tokens
DEFAULT_METHODS = "hf,hf-pld,vanilla,ngram,eagle2,eagle2+lookup,eagle3,eagle3+lookup"
DEFAULT_QUESTIONS = 16
WARMUP_TOKENS = 8
# drafter keywords with a flag of their own, refused by --drafter-option
OWN_FLAGS = {"model": "--backbone", "weights": "--weights", "tree": "--tree"}


@dataclass
class Generation:
    """One method's answer to one prompt: new token ids, verify steps and tokens they emitted (None if unknown)."""

    tokens: list[int]
    steps: int | None
    accepted: int | None
    top2_gaps: list[float] | None = None


Generate = Callable[[list[int], int], Generation]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags, with --methods resolved to a list."""
    p = cli.parser(__doc__)
    p.add_argument("--backbone", default=None, help="local Hugging Face directory (default: embedded SmolLM2-135M)")
    p.add_argument("--weights", action="append", default=[], metavar="METHOD=PATH_OR_SHIPPED_NAME[,...]",
                   help="weights for a method among --methods that takes them (Medusa heads, an EAGLE draft): a "
                        "directory or a shipped name (medusa, medusa-trigram, eagle, eagle3); repeatable")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma list; hf and vanilla are always added (default {DEFAULT_METHODS})")
    p.add_argument("--prompts", choices=("mtbench", "copy"), default="mtbench",
                   help="MT-Bench, or built-in copy-heavy prompts")
    p.add_argument("--questions", type=int, default=None,
                   help=f"stratified subset size (default {DEFAULT_QUESTIONS}, or all if fewer)")
    p.add_argument("--all", action="store_true", help="every question")
    p.add_argument("--skip-questions", type=int, default=0,
                   help="pass over the stratified order's first N questions (--questions 8 --skip-questions 16: the "
                        "8 held-aside ones after the 16 reported, for tuning)")
    p.add_argument("--turns", type=int, choices=(1, 2), default=1,
                   help="2 adds second turns after the method's own first answer")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sampling")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling (0: off)")
    p.add_argument("--lossy-typical-acceptance", action="store_true",
                   help="Medusa's typical acceptance for the drafters (LOSSY: not plain sampling's distribution)")
    p.add_argument("--tree", default=None, help="tree for drafters that take one")
    p.add_argument("--drafter-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword for the drafters that take it, value as a Python literal, e.g. depth=6, "
                        "verify_cost={} (no cost cut); repeatable")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    p.add_argument("--quantize", choices=("int8", "bnb-int8"), default=None,
                   help="int8 backbone for our methods (weight-only, or bitsandbytes LLM.int8); "
                        "hf stays float in --dtype")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="torch threads (default: $OMP_NUM_THREADS when set, else every core this process may use)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--verify", choices=("auto",) + VERIFY_MODES, default="auto",
                   help="our methods' verify forward (auto: eager on CPU, CUDA graphs on GPU)")
    p.add_argument("--verify-cost", choices=("measured", "fixed"), default="measured",
                   help="the verify-cost curve our drafters cut trees by: measured on this machine "
                        "(specdec.machine.calibrate, cached per CPU, dtype, threads) or the machine kind's fixed one")
    p.add_argument("--seed", type=int, default=0, help="torch seed (hf sampling) and our samplers' seed")
    p.add_argument("--peers", action="append", default=[], metavar="PEER[,PEER]",
                   help="peer engines as rows of the same table, on the same first turns (same prompt ids, greedy, "
                        "threads): llamacpp (rows llamacpp, llamacpp-lookup; .venv-llamacpp from "
                        "scripts/setup_llamacpp.sh) and vllm (rows vllm, vllm-ngram; its CPU build in .venv-vllm from "
                        "scripts/setup_vllm.sh); comma list or repeated")
    p.add_argument("--out", default="results/tmp/mtbench",
                   help="output directory (default git-ignored: a quick run never overwrites reference results)")
    args = p.parse_args(argv)
    try:
        sampling_config(args)
    except ValueError as e:
        p.error(str(e))
    if args.lossy_typical_acceptance and args.temperature == 0:
        p.error("--lossy-typical-acceptance needs --temperature > 0")
    if args.max_new_tokens < 1:
        p.error("--max-new-tokens must be at least 1")
    if args.questions is not None and args.questions < 1:
        p.error("--questions must be at least 1")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    if args.skip_questions < 0 or (args.skip_questions and args.all):
        p.error("--skip-questions must be at least 0, and does not go with --all")
    try:
        args.peers = parse_peers(args.peers)
        check_peers(args)
        args.methods = resolve_methods(args.methods)
        args.drafter_option = parse_drafter_options(args.drafter_option, args.methods)
        args.weights = parse_weights(args.weights, args.methods)
    except ValueError as e:
        p.error(str(e))
    return args


def check_peers(args: argparse.Namespace) -> None:
    """What the peer rows need: greedy first turns on the CPU, llama.cpp the embedded backbone (its GGUF), and each
    peer's environment (the error says how to make a missing one)."""
    if not args.peers:
        return
    if args.turns != 1 or args.temperature != 0 or args.device != "cpu":
        raise ValueError("--peers runs greedy first turns on the CPU: use --turns 1, --temperature 0, --device cpu")
    if "llamacpp" in args.peers and args.backbone is not None:
        raise ValueError("--peers llamacpp decodes the embedded backbone's GGUF: it does not go with --backbone")
    if missing := missing_environments(args.peers):
        raise ValueError("; ".join(missing))


def parse_drafter_options(items: list[str], methods: list[str]) -> dict:
    """KEY=VALUE strings as a dict (values read as Python literals, else kept as text); a key that no drafter among
    `methods` takes is an error, not a silent no-op."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--drafter-option {item!r}: expected KEY=VALUE")
        if key in OWN_FLAGS:
            raise ValueError(f"--drafter-option {key}: set by {OWN_FLAGS[key]}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    takers = [registry_options(m) for m in methods if m not in HF_METHODS]
    for key in options:
        if not any(key in params for params in takers):
            raise ValueError(f"--drafter-option {key}: none of the drafters {', '.join(methods)} takes it")
    return options


def default_threads() -> int:
    """--threads' default: OMP_NUM_THREADS when set (how a shared machine is usually told), else every core this
    process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # OpenMP allows a nested list: "4,2"
    return int(env) if env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0))


def takes_weights(method: str) -> bool:
    """Whether a method's drafter loads weights (Medusa heads or an EAGLE draft)."""
    return method not in HF_METHODS and "weights" in registry_options(method)


def parse_weights(items: list[str], methods: list[str]) -> dict[str, str]:
    """--weights values (comma lists of METHOD=PATH_OR_SHIPPED_NAME) as {method: weights}. A method not among
    `methods`, one that takes no weights, or one given twice is an error, not a silent no-op."""
    weights: dict[str, str] = {}
    for item in (i.strip() for value in items for i in value.split(",") if i.strip()):
        method, sep, spec = (part.strip() for part in item.partition("="))
        if not sep or not method or not spec:
            raise ValueError(f"--weights {item!r}: expected METHOD=PATH_OR_SHIPPED_NAME")
        if method not in methods:
            raise ValueError(f"--weights {method}: not among the methods ({', '.join(methods)})")
        if not takes_weights(method):
            raise ValueError(f"--weights {method}: it takes no weights; ones that do: "
                             f"{', '.join(m for m in available_methods() if takes_weights(m))}")
        if method in weights:
            raise ValueError(f"--weights {method}: given twice")
        weights[method] = spec
    return weights


def available_methods() -> list[str]:
    """Method names that can run now: the transformers baselines and every registered drafter."""
    return list(HF_METHODS) + drafter_names()


def resolve_methods(spec: str) -> list[str]:
    """Parse a comma list; hf and vanilla are prepended when missing, unknown names raise."""
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    available = available_methods()
    for n in names:
        if n not in available:
            raise ValueError(f"method {n!r} is unknown; available: {', '.join(available)}")
    return [m for m in (BASELINE, REFERENCE) if m not in names] + names


def select_questions(args: argparse.Namespace) -> list[Question]:
    """The prompt set, cut to a stratified subset (after --skip-questions) unless --all."""
    pool = copy_prompts() if args.prompts == "copy" else load_mtbench()
    if args.all:
        return stratified_subset(pool, len(pool))
    n = min(DEFAULT_QUESTIONS, len(pool) - args.skip_questions) if args.questions is None else args.questions
    return stratified_subset(pool, args.skip_questions + n)[args.skip_questions :]


def sampling_config(args: argparse.Namespace) -> SamplingConfig:
    """Our decode loop's sampling settings from the flags."""
    return SamplingConfig(args.temperature, args.top_p, args.top_k, args.seed, args.lossy_typical_acceptance)


def method_label(name: str, args: argparse.Namespace) -> str:
    """The report row's name: drafters under typical acceptance are marked LOSSY."""
    lossy = args.lossy_typical_acceptance and name not in HF_METHODS and name != REFERENCE
    return f"{name} (typical, LOSSY)" if lossy else name


def drafter_options(name: str, args: argparse.Namespace) -> dict:
    """The method's --weights (Medusa heads or an EAGLE draft), --tree and --drafter-option for the drafters that take
    them."""
    known = registry_options(name)
    given = {"weights": args.weights.get(name), "tree": args.tree, **args.drafter_option}
    return {k: v for k, v in given.items() if v is not None and k in known}


def hf_generate(model: torch.nn.Module, stop_ids: list[int], prompt_lookup: int | None,
                sampling: SamplingConfig) -> Generate:
    """transformers `generate`, greedy or sampling as `sampling` says; with prompt_lookup, its prompt-lookup
    decoding."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device

    def run(ids: list[int], max_new_tokens: int) -> Generation:
        sample = {} if sampling.greedy else dict(temperature=sampling.temperature, top_p=sampling.top_p,
                                                  top_k=sampling.top_k)
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=not sampling.greedy, eos_token_id=stop_ids,
                               pad_token_id=stop_ids[0], prompt_lookup_num_tokens=prompt_lookup, **sample)
        x = torch.tensor([ids], device=device)
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), generation_config=cfg)
        tokens = out[0, len(ids):].tolist()
        # plain generate: one forward per token after prefill; prompt lookup's forwards are not exposed
        steps = None if prompt_lookup else len(tokens) - 1
        return Generation(tokens, steps, steps)

    return run


def specdec_generate(backbone: specdec.Backbone, name: str, args: argparse.Namespace,
                     step: VerifyStep | None = None) -> Generate:
    """Our decode loop with a registered drafter; vanilla also records the top-2 logit gaps."""
    drafter = make_drafter(name, backbone.model, **drafter_options(name, args))
    return drafter_generate(backbone, drafter, sampling_config(args), track_top2_gaps=name == REFERENCE, step=step)


def drafter_generate(backbone: specdec.Backbone, drafter: Drafter, sampling: SamplingConfig,
                     track_top2_gaps: bool = False, step: VerifyStep | None = None) -> Generate:
    """Our decode loop with an already built drafter (the ablation scripts pass several of one kind)."""

    def run(ids: list[int], max_new_tokens: int) -> Generation:
        r = specdec.decode(backbone.model, ids, drafter, max_new_tokens, backbone.stop_ids,
                           track_top2_gaps=track_top2_gaps, sampling=sampling, step=step)
        return Generation(r.tokens, r.stats.steps, sum(r.stats.accepted), r.top2_gaps)

    return run


def build_methods(names: list[str], backbone: specdec.Backbone, args: argparse.Namespace,
                  step: VerifyStep | None = None) -> dict[str, Generate]:
    """A generate function per method; the transformers model is loaded once, in the backbone's dtype."""
    from transformers import AutoModelForCausalLM

    dtype = backbone.model.output.weight.dtype
    hf_model = AutoModelForCausalLM.from_pretrained(backbone.path, dtype=dtype).to(args.device).eval()
    return {method_label(n, args): hf_generate(hf_model, backbone.stop_ids, HF_METHODS[n], sampling_config(args))
            if n in HF_METHODS else specdec_generate(backbone, n, args, step) for n in names}


def timed(generate: Generate, ids: list[int], max_new_tokens: int,
          device: torch.device) -> tuple[Generation, float, float]:
    """Run one turn: its generation, wall seconds (prefill included) and peak memory in MiB."""
    reset_peak_memory(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    gen = generate(ids, max_new_tokens)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return gen, time.perf_counter() - t0, peak_memory_mb(device)


def run_question(name: str, generate: Generate, q: Question, backbone: specdec.Backbone,
                 args: argparse.Namespace, device: torch.device) -> list[TurnRecord]:
    """All turns of one question for one method; later turns follow the method's own earlier answers."""
    messages: list[dict[str, str]] = []
    records = []
    for turn, text in enumerate(q.turns[: args.turns], start=1):
        messages.append({"role": "user", "content": text})
        gen, wall, mem = timed(generate, backbone.encode_chat(messages), args.max_new_tokens, device)
        records.append(TurnRecord(name, q.question_id, q.category, turn, gen.tokens, wall, gen.steps, gen.accepted,
                                  mem, gen.top2_gaps))
        answer = backbone.tokenizer.decode(gen.tokens, skip_special_tokens=True)
        messages.append({"role": "assistant", "content": answer})
    return records


def run_all(methods: dict[str, Generate], questions: list[Question], backbone: specdec.Backbone,
            args: argparse.Namespace) -> list[TurnRecord]:
    """Warm every method up, then run them interleaved question by question."""
    device = torch.device(args.device)
    warm_ids = backbone.encode_chat(questions[0].turns[0])
    with tqdm(methods.items(), unit="method") as warm:  # warm-up takes tens of seconds: say what it is doing
        for name, generate in warm:
            warm.set_description(f"warming up {name}")
            generate(warm_ids, WARMUP_TOKENS)
    records: list[TurnRecord] = []
    with tqdm(total=len(questions) * len(methods), desc="mtbench", unit="run") as bar:
        for q in questions:
            for name, generate in methods.items():
                bar.set_postfix(q=q.question_id, method=name)
                records += run_question(name, generate, q, backbone, args, device)
                bar.update()
    return records


def machine_info(device: torch.device) -> dict:
    """CPU model, cores, torch threads, library versions, and the GPU when there is one."""
    import transformers

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, write JSON/Markdown/PNG/SVG into --out, print the table; returns the JSON object."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    questions = select_questions(args)
    dtype = resolve_dtype(args.dtype, args.device)
    if "vllm" in args.peers and dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"--peers vllm runs bf16 or fp32, not {dtype}")
    # prompts (even copy-heavy ones with a follow-up) stay well under 2048 tokens
    backbone = specdec.load_backbone(args.backbone, dtype, args.device,
                                     max_seq_len=2048 + args.turns * args.max_new_tokens, quantize=args.quantize)
    step = VerifyStep(backbone.model, args.verify)
    step.warm_up()  # every bucket compiled (on a GPU: captured) before any turn is timed
    measured = machine.calibrate(backbone.model, step) if args.verify_cost == "measured" else None
    methods = build_methods(args.methods, backbone, args, step)
    t0 = time.perf_counter()
    records = run_all(methods, questions, backbone, args)
    records_peers, peers = run_peers(args, questions, backbone, dtype)
    results = summarize(records + records_peers, BASELINE, REFERENCE, identity=args.temperature == 0)
    config = {
        "flags": vars(args), "question_ids": [q.question_id for q in questions],
        "backbone_path": str(backbone.path), "dtype": str(dtype).removeprefix("torch."), "device": args.device,
        "machine": machine_info(torch.device(args.device)),
        "verify_cost": {"source": args.verify_cost if measured else "fixed",
                        "points": measured or machine.VERIFY_COST.get(machine.machine_kind(backbone.model.kv))},
        "peak_mem": PEAK_MEM_MEANING[torch.device(args.device).type],
        "benchmark_wall_s": time.perf_counter() - t0,
        **({"peers": peers} if peers else {}),
    }
    paths = write_results(args.out, config, results)
    print(markdown(results, config))
    print("wrote " + ", ".join(map(str, paths)))
    return {"config": config, "methods": results}


def run_peers(args: argparse.Namespace, questions: list[Question], backbone: specdec.Backbone,
              dtype: torch.dtype) -> tuple[list[TurnRecord], dict]:
    """--peers: the same first turns on llama.cpp and / or vLLM's CPU build (vLLM in our dtype), after our methods
    (scripts/peers.py): their TurnRecords and what each row ran."""
    if not args.peers:
        return [], {}
    prompts = [backbone.encode_chat(q.turns[0]) for q in questions]
    print(f"peers: {', '.join(args.peers)} on the same {len(prompts)} prompts", flush=True)
    return peer_records(args.peers, questions, prompts, backbone.stop_ids, args.max_new_tokens,
                        "bf16" if dtype == torch.bfloat16 else "fp32", args.threads, Path(backbone.path),
                        Path(args.out))


if __name__ == "__main__":
    cli.run(main)
