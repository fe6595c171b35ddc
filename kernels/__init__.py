"""Kernels of the decode loop: Triton on CUDA, their pure-torch twins elsewhere.

SPECDEC_TRITON=1 forces the Triton kernels on any device (on CPU together with TRITON_INTERPRET=1)."""
from __future__ import annotations

import os
from functools import cache

from torch import Tensor

from .accept import greedy_accept_torch, greedy_accept_triton
from .commit import commit_kv_torch, commit_kv_triton

__all__ = ["greedy_accept", "commit_kv"]


@cache
def _have_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _use_triton(x: Tensor) -> bool:
    return (x.is_cuda or os.environ.get("SPECDEC_TRITON") == "1") and _have_triton()


def greedy_accept(tokens: Tensor, target: Tensor, paths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: the longest accepted root-to-leaf prefix and its bonus token; see greedy_accept_torch."""
    if _use_triton(paths):
        return greedy_accept_triton(tokens, target, paths)
    return greedy_accept_torch(tokens, target, paths)


def commit_kv(kv: Tensor, starts: Tensor, accepted: Tensor, counts: Tensor) -> None:
    """Keep each row's accepted nodes' K/V in place; see commit_kv_torch."""
    if _use_triton(kv):
        commit_kv_triton(kv, starts, accepted, counts)
    else:
        commit_kv_torch(kv, starts, accepted, counts)
