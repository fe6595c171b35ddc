"""Which kind of machine a backbone runs on, what a verify forward of k nodes costs there, and what every drafter
drafts there by default: the one place where defaults depend on the machine.

On a CPU the runner's linears are oneDNN-packed (specdec.packed): a forward of 2-8 nodes then costs about as much as
one token in fp32 and bf16 alike, 16 nodes ~1.3-1.5x and 32 ~2x (before packing, fp32 paid 1.4-1.8x for any k >= 2);
on a GPU verification is nearly flat up to ~64 nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

KINDS = ("cpu-fp32", "cpu-bf16", "cuda")

# Forward time of k tree nodes relative to k = 1 on a 200-token cache, `python scripts/bench_runner.py --dtype ...`
# (results/runner/), 2-core AMD EPYC with AVX512-BF16, SmolLM2-135M, packed linears. A GPU has no entry: nothing is cut.
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
