"""Benchmark bookkeeping: per-turn records, their aggregation (tok/s, speedup, tau, identity) and Markdown tables.
Plots and result files are the benchmark scripts' (scripts/bench_output.py)."""
from __future__ import annotations

import re
import resource
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

PEAK_MEM_MEANING = {
    "cpu": "process peak RSS (VmHWM) while the method ran, reset before each turn through /proc/self/clear_refs; "
           "it counts everything resident in the process (both loaded models included), not the method's own share",
    "cuda": "torch.cuda.max_memory_allocated while the method ran, reset before each turn",
}


@dataclass
class TurnRecord:
    """One generated turn of one method: its tokens, wall time (prefill included), verify steps and peak memory.

    steps counts the target forwards after prefill and accepted the tokens they emitted (bonus included);
    both are None when the method does not expose them (transformers prompt lookup); peak_mem_mb is None for a peer
    engine that does not measure it."""

    method: str
    question_id: int
    category: str
    turn: int
    tokens: list[int]
    wall_s: float
    steps: int | None
    accepted: int | None
    peak_mem_mb: float | None
    top2_gaps: list[float] | None = None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window for the next turn."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: resets VmHWM to the current RSS
    except OSError:
        pass  # no /proc: the peak below is then the process's lifetime peak


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last reset_peak_memory, in MiB (see PEAK_MEM_MEANING)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)\s+kB", status).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def tokens_per_s(records: list[TurnRecord]) -> float:
    """Total new tokens over total wall time."""
    return sum(len(r.tokens) for r in records) / max(sum(r.wall_s for r in records), 1e-9)


def tau(records: list[TurnRecord]) -> float | None:
    """Tokens emitted per verify forward, bonus included; None when steps are unknown or zero."""
    if any(r.steps is None for r in records) or not sum(r.steps for r in records):
        return None
    return sum(r.accepted for r in records) / sum(r.steps for r in records)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token; a length mismatch diverges where the shorter one ends."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def divergences(records: list[TurnRecord], reference: list[TurnRecord], gaps: list[TurnRecord]) -> list[dict]:
    """Each question's first divergence from the reference, with the top-2 logit gap of `gaps` there.

    Later turns of a diverged question are skipped: their contexts already differ."""
    ref = {(r.question_id, r.turn): r.tokens for r in reference}
    gap = {(r.question_id, r.turn): r.top2_gaps or [] for r in gaps}
    found: dict[int, dict] = {}
    for r in sorted(records, key=lambda r: (r.question_id, r.turn)):
        key = (r.question_id, r.turn)
        pos = None if r.question_id in found else first_divergence(r.tokens, ref[key])
        if pos is not None:
            g = gap.get(key, [])
            found[r.question_id] = {"question_id": r.question_id, "turn": r.turn, "position": pos,
                                    "top2_gap": g[pos] if pos < len(g) else None}
    return list(found.values())


def summarize(records: list[TurnRecord], baseline: str = "hf", reference: str = "vanilla",
              identity: bool = True) -> dict[str, dict]:
    """Per-method results: tok/s, speedup vs baseline, tau, identity vs reference (reference vs baseline), peak memory,
    speedup per category and per question. identity=False (sampled outputs, where token identity means nothing):
    "identical" is "n/a"."""
    by_method: dict[str, list[TurnRecord]] = defaultdict(list)
    for r in records:
        by_method[r.method].append(r)
    base = by_method[baseline]
    out = {}
    for name, recs in by_method.items():
        divs = None
        if name != baseline and identity:
            divs = divergences(recs, by_method[baseline if name == reference else reference], by_method[reference])
        out[name] = {
            "tokens_per_s": tokens_per_s(recs),
            "speedup": tokens_per_s(recs) / tokens_per_s(base),
            "tau": tau(recs),
            "identical": "n/a" if not identity and name != baseline else None if divs is None else not divs,
            "divergences": divs or [],
            "peak_mem_mb": max((r.peak_mem_mb for r in recs if r.peak_mem_mb is not None), default=None),
            "per_category": per_category(recs, base),
            "per_question_speedup": per_question_speedup(recs, base),
        }
    return out


def per_question_speedup(records: list[TurnRecord], base: list[TurnRecord]) -> list[dict]:
    """Each question's speedup (its turns' tok/s over the baseline's on the same question), with its category, in the
    order the questions ran: the spread behind the overall speedup."""
    questions: dict[int, list[TurnRecord]] = defaultdict(list)
    for r in records:
        questions[r.question_id].append(r)
    return [{"question_id": q, "category": rs[0].category,
             "speedup": tokens_per_s(rs) / tokens_per_s([b for b in base if b.question_id == q])}
            for q, rs in questions.items()]


def per_category(records: list[TurnRecord], base: list[TurnRecord]) -> dict[str, dict]:
    """Speedup (vs the baseline's turns of the same category) and tau per category."""
    cats: dict[str, list[TurnRecord]] = defaultdict(list)
    for r in records:
        cats[r.category].append(r)
    return {c: {"speedup": tokens_per_s(rs) / tokens_per_s([b for b in base if b.category == c]), "tau": tau(rs)}
            for c, rs in cats.items()}


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


IDENTITY_NOTE = (
    "*identical*: the greedy output ids, token for token. vanilla (our plain decoding) is compared with transformers "
    "`generate` (hf), every other method with vanilla; a question's later turns are not compared after it diverged. "
    "no (n q, top-2 gap ≤ g): n questions diverged, and g is the largest gap between vanilla's top two logits at "
    "those divergences (gap unknown: the divergence lies past the end of vanilla's answer). In fp32 no divergence is "
    "allowed; in bf16/fp16 the project's rule (README, lossless) allows one at a near-tie (a small top-2 gap), where "
    "a k-token verify rounds differently from one-token steps. n/a (sampled): temperature > 0, where identity means "
    "nothing.")
PROMPT_SETS = {"mtbench": "MT-Bench questions", "copy": "copy-heavy prompts"}


def _identity(m: dict) -> str:
    if m["identical"] is None:
        return "—"
    if m["identical"] == "n/a":
        return "n/a (sampled)"
    if m["identical"]:
        return "yes"
    divs = m["divergences"]
    gaps = [d["top2_gap"] for d in divs if d["top2_gap"] is not None]
    parts = [f"{len(divs)} q"] + ([f"top-2 gap ≤ {max(gaps):.3g}"] if gaps else [])
    if len(gaps) < len(divs):
        parts.append(f"{len(divs) - len(gaps)} gap unknown")
    return f"no ({', '.join(parts)})"


def _prompt_set(config: dict) -> str:
    flags = config["flags"]
    skipped = f" (after the stratified order's first {flags['skip_questions']})" if flags["skip_questions"] else ""
    return f"{len(config['question_ids'])} {PROMPT_SETS[flags['prompts']]}{skipped}"


def _machine(config: dict) -> str:
    m = config["machine"]
    return m["cpu"] + (f", {m['gpu']}" if "gpu" in m else "")


def _decoding(flags: dict) -> str:
    if flags["temperature"] == 0:
        return "greedy"
    typical = ", Medusa typical acceptance (LOSSY)" if flags["lossy_typical_acceptance"] else ""
    return (f"sampling: temperature {flags['temperature']}, top-p {flags['top_p']}, top-k {flags['top_k']}, "
            f"seed {flags['seed']}{typical}")


def _drafter_settings(flags: dict) -> str:
    items = [f"weights {m}={w}" for m, w in flags["weights"].items()]
    items += [f"tree {flags['tree']}"] if flags["tree"] is not None else []
    items += [f"{k}={v!r}" for k, v in flags["drafter_option"].items()]
    return ", ".join(items or ["defaults"]) + f"; verify forward {flags['verify']}"


def caption(config: dict) -> str:
    """One line with every setting of the run and the machine, so the table can be read (and rerun) on its own."""
    flags, m = config["flags"], config["machine"]
    quantized = f" ({flags['quantize']} for our methods)" if flags["quantize"] else ""
    return (f"Settings: backbone `{Path(config['backbone_path']).name}`{quantized}, {config['dtype']} on "
            f"{config['device']}; {_prompt_set(config)}, {flags['turns']} turn(s), up to {flags['max_new_tokens']} new "
            f"tokens; {_decoding(flags)}; drafters: {_drafter_settings(flags)}; machine: {_machine(config)}, "
            f"{m['threads']} torch thread(s), torch {m['torch']}.")


def plot_title(config: dict) -> str:
    """The settings a figure needs to be read on its own: backbone, dtype, prompts, tokens, machine."""
    return (f"Speedup vs transformers generate: {Path(config['backbone_path']).name}, {config['dtype']}, "
            f"{_prompt_set(config)}, {config['flags']['max_new_tokens']} new tokens\n{_machine(config)}, "
            f"{config['machine']['threads']} thread(s); error bars: ±1 std over questions")


def peers_note(peers: dict[str, dict]) -> str:
    """What each peer row ran (mtbench_speedup.py --peers), and how its tau and identity read."""
    items = [f"{name}: {p['engine']} ({p['package']}), {p['decoding']}" for name, p in peers.items()]
    return ("*Peers* (other engines, run after our methods on the same prompt token ids, greedy, same stop ids, "
            "threads and new-token budget, each turn's wall time with its prompt): " + "; ".join(items) + ". Their "
            "*identical* compares with vanilla, though they compute in their own numerics (llama.cpp on the Q4_1 "
            "GGUF as stored); vLLM's tau with a speculator is its mean acceptance length over the steps that "
            "drafted.")


def markdown(methods: dict[str, dict], config: dict | None = None) -> str:
    """The settings caption (given mtbench_speedup's config), the summary table with its identity note, then
    per-category speedup / tau."""
    lines = [caption(config), ""] if config else []
    lines += ["| method | tok/s | speedup | tau | identical |", "|---|---:|---:|---:|---|"]
    for name, m in methods.items():
        lines.append(f"| {name} | {m['tokens_per_s']:.1f} | {m['speedup']:.2f}x | {_num(m['tau'], '.2f')} | "
                     f"{_identity(m)} |")
    cats = list(next(iter(methods.values()))["per_category"])
    lines += ["", IDENTITY_NOTE] + (["", peers_note(config["peers"])] if config and config.get("peers") else [])
    lines += ["", "Per category: speedup / tau", "", "| category | " + " | ".join(methods) + " |",
              "|---|" + "---:|" * len(methods)]
    for c in cats:
        cells = [f"{m['per_category'][c]['speedup']:.2f}x / {_num(m['per_category'][c]['tau'], '.2f')}"
                 for m in methods.values()]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
