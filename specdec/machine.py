"""Which kind of machine a backbone runs on, and what a verify forward of k nodes costs there: drafter defaults key on it.

A CPU in fp32 (or without native bf16) runs one token at GEMV speed and any k >= 2 on a slower GEMM path; in bf16 on a
CPU with AVX512-BF16 one token takes a GEMV path slower than the GEMM path of 2-8 tokens, so small trees are free and
16-32 nodes cost ~1.3-1.4x one; on a GPU verification is nearly flat up to ~64 nodes.
"""
from __future__ import annotations

import torch
from torch import Tensor

KINDS = ("cpu-fp32", "cpu-bf16", "cuda")

# Forward time of k tree nodes relative to k = 1 on a 200-token cache, `python scripts/bench_runner.py --dtype ...`
# (results/runner/), 2-core AMD EPYC, SmolLM2-135M. A GPU has no entry: nothing is cut there.
VERIFY_COST = {
    "cpu-fp32": {1: 1.0, 2: 1.55, 4: 1.75, 8: 1.85, 16: 2.2, 32: 3.0, 64: 4.6},
    "cpu-bf16": {1: 1.0, 2: 0.87, 4: 0.86, 8: 1.03, 12: 1.27, 16: 1.29, 24: 1.41, 32: 1.43, 48: 1.99, 64: 2.26},
}


def machine_kind(weights_or_hidden: Tensor) -> str:
    """"cuda" for any accelerator; on a CPU "cpu-bf16" for bf16 weights (or activations), else "cpu-fp32"."""
    t = weights_or_hidden
    if t.device.type != "cpu":
        return "cuda"
    return "cpu-bf16" if t.dtype == torch.bfloat16 else "cpu-fp32"


def cost_curve(points: dict[int, float], n: int) -> Tensor:
    """Relative verify cost for 1..n nodes (index k - 1), linear between measured points, flat past the last."""
    ks = sorted(points)
    out = []
    for k in range(1, n + 1):
        hi = next((x for x in ks if x >= k), ks[-1])
        lo = max((x for x in ks if x <= k), default=ks[0])
        w = 0.0 if hi == lo else (k - lo) / (hi - lo)
        out.append(points[lo] + w * (points[hi] - points[lo]))
    return torch.tensor(out)
