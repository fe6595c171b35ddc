"""Greedy tree acceptance: the longest root-to-leaf prefix the backbone agrees with, plus its bonus token."""
from __future__ import annotations

import torch
from torch import Tensor


def greedy_accept_torch(tokens: Tensor, target: Tensor, paths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pure-torch acceptance. tokens, target: [k] node tokens and the backbone's argmax at each node;
    paths: [P, L] node indices per root-to-leaf path, padded with -1. Returns (best path, accepted drafts, bonus)."""
    valid = paths[:, 1:] >= 0
    nodes = paths.clamp(min=0)
    match = (tokens[nodes[:, 1:]] == target[nodes[:, :-1]]) & valid
    lengths = match.to(torch.int32).cumprod(dim=1).sum(dim=1)
    best = lengths.argmax()
    n = lengths[best]
    bonus = target[nodes[best, n]]
    return best, n, bonus
