"""Kernels of the decode loop: Triton on CUDA, their pure-torch twins elsewhere."""
from specdec.kernels.accept import greedy_accept_torch
from specdec.kernels.commit import commit_kv_torch

__all__ = ["greedy_accept", "commit_kv"]


def greedy_accept(tokens, target, paths):
    """Longest accepted root-to-leaf prefix and its bonus token; see greedy_accept_torch."""
    return greedy_accept_torch(tokens, target, paths)


def commit_kv(kv, start, accepted):
    """Keep the accepted nodes' K/V in place; see commit_kv_torch."""
    commit_kv_torch(kv, start, accepted)
