"""Benchmark bookkeeping: per-turn records, their aggregation (tok/s, speedup, tau, identity), and JSON/Markdown/PNG."""
from __future__ import annotations

import json
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
    both are None when the method does not expose them (transformers prompt lookup)."""

    method: str
    question_id: int
    category: str
    turn: int
    tokens: list[int]
    wall_s: float
    steps: int | None
    accepted: int | None
    peak_mem_mb: float
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
    """Per-method results: tok/s, speedup vs baseline, tau, identity vs reference (reference vs baseline), peak memory.
    identity=False (sampled outputs, where token identity means nothing): "identical" is "n/a"."""
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
            "peak_mem_mb": max(r.peak_mem_mb for r in recs),
            "per_category": per_category(recs, base),
        }
    return out


def per_category(records: list[TurnRecord], base: list[TurnRecord]) -> dict[str, dict]:
    """Speedup (vs the baseline's turns of the same category) and tau per category."""
    cats: dict[str, list[TurnRecord]] = defaultdict(list)
    for r in records:
        cats[r.category].append(r)
    return {c: {"speedup": tokens_per_s(rs) / tokens_per_s([b for b in base if b.category == c]), "tau": tau(rs)}
            for c, rs in cats.items()}


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _identity(m: dict) -> str:
    if m["identical"] is None:
        return "—"
    if m["identical"] == "n/a":
        return "n/a (sampled)"
    return "yes" if m["identical"] else f"no ({len(m['divergences'])} q)"


def markdown(methods: dict[str, dict]) -> str:
    """The summary table, then per-category speedup / tau."""
    lines = ["| method | tok/s | speedup | tau | identical | peak MB |", "|---|---:|---:|---:|---|---:|"]
    for name, m in methods.items():
        lines.append(f"| {name} | {m['tokens_per_s']:.1f} | {m['speedup']:.2f}x | {_num(m['tau'], '.2f')} | "
                     f"{_identity(m)} | {m['peak_mem_mb']:.0f} |")
    cats = list(next(iter(methods.values()))["per_category"])
    lines += ["", "Per category: speedup / tau", "", "| category | " + " | ".join(methods) + " |",
              "|---|" + "---:|" * len(methods)]
    for c in cats:
        cells = [f"{m['per_category'][c]['speedup']:.2f}x / {_num(m['per_category'][c]['tau'], '.2f')}"
                 for m in methods.values()]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_speedups(methods: dict[str, dict], path: Path) -> None:
    """Grouped bars: speedup per category (and overall) for each method."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on benchmark machines
    import matplotlib.pyplot as plt

    cats = ["overall"] + list(next(iter(methods.values()))["per_category"])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cats)), 4.0))
    for i, (name, m) in enumerate(methods.items()):
        values = [m["speedup"]] + [m["per_category"][c]["speedup"] for c in cats[1:]]
        ax.bar([x + (i - (len(methods) - 1) / 2) * width for x in range(len(cats))], values, width, label=name)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
    ax.set_ylabel("speedup vs hf generate")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(out_dir: str | Path, config: dict, methods: dict[str, dict], stem: str = "mtbench_speedup") -> list[Path]:
    """Write STEM.json ({"config", "methods"}), STEM.md and STEM.png into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    paths[0].write_text(json.dumps({"config": config, "methods": methods}, indent=2, default=str) + "\n")
    paths[1].write_text(markdown(methods))
    plot_speedups(methods, paths[2])
    return paths
