"""Which kind of machine a backbone runs on, what a verify forward of k nodes costs there, and what every drafter
drafts there by default: the one place where defaults depend on the machine.

On a CPU the runner's linears are oneDNN-packed (specdec.packed): a forward of 2-8 nodes then costs about as much as
one token in fp32 and bf16 alike, 16 nodes ~1.3-1.5x and 32 ~2x (before packing, fp32 paid 1.4-1.8x for any k >= 2);
on a GPU verification is nearly flat up to ~64 nodes.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

KINDS = ("cpu-fp32", "cpu-bf16", "cuda")

# The fallback where no curve was measured on the machine in use (`calibrate`): forward time of k tree nodes relative
# to k = 1 on a 200-token cache, `python scripts/bench_runner.py --dtype ...` (results/runner/), 2-core AMD EPYC with
# AVX512-BF16, SmolLM2-135M, packed linears. A GPU has no entry: nothing is cut.
VERIFY_COST = {
    "cpu-fp32": {1: 1.0, 2: 1.18, 4: 1.13, 8: 1.09, 12: 1.27, 16: 1.31, 24: 1.92, 32: 2.04, 48: 2.86, 64: 3.56},
    "cpu-bf16": {1: 1.0, 2: 1.06, 4: 1.01, 8: 1.12, 12: 1.27, 16: 1.51, 24: 1.69, 32: 2.08, 48: 2.99, 64: 3.42},
}


@dataclass(frozen=True)
class DrafterDefaults:
    """What the drafters draft by default on one machine kind: EAGLE-2's (depth, top_k, total_tokens), the drafted
    nodes of EAGLE-1's and Medusa's static trees, and NgramConfig / LookaheadConfig fields that differ from their
    class defaults. How they were chosen: results/README.md, "Drafter defaults"."""

    eagle2_tree: tuple[int, int, int]
    eagle_nodes: int
    medusa_nodes: int
    ngram: dict = field(default_factory=dict)
    lookahead: dict = field(default_factory=dict)


# a GPU verifies ~64 nodes for the price of one (the papers' trees); a 2-core CPU with packed linears pays ~1.1x for 8
DRAFTER_DEFAULTS = {
    "cpu-fp32": DrafterDefaults(eagle2_tree=(3, 4, 12), eagle_nodes=11, medusa_nodes=7),
    "cpu-bf16": DrafterDefaults(eagle2_tree=(3, 4, 12), eagle_nodes=11, medusa_nodes=7,
                                ngram={"min_ngram": 1, "draft_len": 6, "max_nodes": 8}),
    "cuda": DrafterDefaults(eagle2_tree=(6, 10, 60), eagle_nodes=63, medusa_nodes=63,
                            lookahead={"window": 15, "ngram": 5, "guesses": 15, "always_window": True}),
}


def machine_kind(weights_or_hidden: Tensor) -> str:
    """"cuda" for any accelerator; on a CPU "cpu-bf16" for bf16 weights (or activations), else "cpu-fp32"."""
    t = weights_or_hidden
    if t.device.type != "cpu":
        return "cuda"
    return "cpu-bf16" if t.dtype == torch.bfloat16 else "cpu-fp32"


def cost_curve(points: dict[int, float], n: int, rows: int = 1) -> Tensor:
    """Relative verify cost of k = 1..n nodes (index k - 1) in each of `rows` sequences verified together, taken as
    the cost of rows * k nodes over that of rows nodes (how well that predicts a batch step: results/throughput/);
    linear between measured points and past the last."""
    ks = sorted(points)

    def at(k: int) -> float:
        if len(ks) > 1 and k > ks[-1]:
            slope = (points[ks[-1]] - points[ks[-2]]) / (ks[-1] - ks[-2])
            return points[ks[-1]] + slope * (k - ks[-1])
        hi = next((x for x in ks if x >= k), ks[-1])
        lo = max((x for x in ks if x <= k), default=ks[0])
        w = 0.0 if hi == lo else (k - lo) / (hi - lo)
        return points[lo] + w * (points[hi] - points[lo])

    return torch.tensor([at(rows * k) / at(rows) for k in range(1, n + 1)])


def verify_cost_curve(kind: str, n: int, device: torch.device | str, points: dict[int, float] | None = None,
                      rows: int = 1) -> Tensor | None:
    """cost_curve for 1..n nodes per row from `points` (default: the kind's measured ones) on `device`; None where
    there are none (a GPU, or `points={}`): drafters then cut nothing."""
    points = VERIFY_COST.get(kind) if points is None else points
    return cost_curve(points, n, rows).to(device) if points else None


CALIBRATION_NODES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
CALIBRATION_CONTEXT = 200  # committed tokens the timed forwards attend over


def verify_points(model) -> dict[int, float] | None:
    """The verify-cost points `calibrate` measured for this model on this machine, or None (the drafters then take
    their machine kind's fallback, VERIFY_COST)."""
    return model.__dict__.get("verify_points")


def best_times(fns: dict, rounds: int, repeats: int = 1, bar=None) -> dict:
    """Per function, its fastest mean time (s) over `rounds` of `repeats` calls; each round times every function
    once, so a noisy neighbour's load drifts across all of them alike instead of skewing one (the minimum filters the
    rest). `bar` (a tqdm) advances once per timing."""
    for fn in fns.values():
        fn()
    best = {key: float("inf") for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            best[key] = min(best[key], (time.perf_counter() - t0) / repeats)
            if bar is not None:
                bar.update()
    return best


def measure_verify_cost(step: Callable, model, nodes: tuple[int, ...] = CALIBRATION_NODES,
                        context: int = CALIBRATION_CONTEXT, rounds: int = 4) -> dict[int, float]:
    """Time `step` (a verify forward: specdec.verify_step.VerifyStep) on k chained nodes after `context` committed
    tokens, for each k in `nodes`, relative to k = 1. The model's committed cache is reset before and after."""
    device = model.tok_embeddings.weight.device
    room = model.max_seq_len - max(nodes)
    if room < 1:
        raise ValueError(f"a context of {model.max_seq_len} leaves no room to time {max(nodes)} nodes")
    context = min(context, room)
    model.reset()
    model.forward(torch.arange(context, device=device) % model.args.vocab_size)
    model.commit(None, context)

    def forward(k: int) -> None:
        step(torch.arange(k, device=device), tree_mask=torch.ones(k, k, dtype=torch.bool, device=device).tril())
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        times = best_times({k: (lambda k=k: forward(k)) for k in nodes}, rounds)
    model.reset()
    return {k: round(times[k] / times[nodes[0]], 3) for k in nodes}


def cpu_identity() -> dict:
    """What makes one CPU's timings another's: its model name and instruction-set flags (/proc/cpuinfo)."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "flags") and key.strip() not in info:
                info[key.strip()] = value.strip()
    except OSError:
        pass
    flags = " ".join(sorted(info.get("flags", "").split()))
    return {"cpu": info.get("model name", "unknown"), "flags": hashlib.sha1(flags.encode()).hexdigest()[:16]}


def calibration_key(model, step_mode: str) -> dict:
    """Everything a verify-cost curve depends on: the CPU, torch and its threads, the model's shape, dtype and linear
    layers (packed, int8), and the verify step's mode."""
    a = model.args
    linears = sorted({type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__})
    return {**cpu_identity(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "dtype": str(model.tok_embeddings.weight.dtype).removeprefix("torch."),
            "model": [a.n_layers, a.dim, a.n_heads, a.n_kv_heads, a.intermediate_size, a.vocab_size],
            "linears": linears, "step": step_mode, "nodes": list(CALIBRATION_NODES), "context": CALIBRATION_CONTEXT}


def calibrate(model, step=None, cache_dir: str | Path | None = None, refresh: bool = False) -> dict[int, float] | None:
    """Measure (a few seconds) or load the verify-cost curve of `model`'s verify step (default: its "auto" one) on
    this CPU, keep it on the model for the drafters made after this call (`verify_points`) and return it. Curves are
    cached in `cache_dir` (default: <specdec cache>/machine) under a key of everything they depend on
    (`calibration_key`), so another machine, thread count or dtype never reuses one; refresh=True measures again.
    On a GPU nothing is measured (verification there is nearly flat up to ~64 nodes) and None comes back."""
    from specdec.verify_step import default_step

    if model.tok_embeddings.weight.device.type != "cpu":
        return None
    step = step or default_step(model)
    key = calibration_key(model, step.mode)
    if cache_dir is None:
        from specdec.backbone import cache_root

        cache_dir = cache_root() / "machine"
    path = Path(cache_dir) / (hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")
    points = None
    if path.is_file() and not refresh:
        try:
            saved = json.loads(path.read_text())
            points = {int(k): float(v) for k, v in saved["points"].items()} if saved.get("key") == key else None
        except (ValueError, KeyError, AttributeError):
            points = None  # a corrupt or foreign file is measured over
    if points is None:
        points = measure_verify_cost(step, model)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "points": points}, indent=1))
        tmp.replace(path)
    model.__dict__["verify_points"] = points
    return points
