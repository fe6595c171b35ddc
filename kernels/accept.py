"""Greedy tree acceptance per row: the longest root-to-leaf prefix the backbone agrees with, plus its bonus token."""
from __future__ import annotations

from functools import cache

import torch
from torch import Tensor


def greedy_accept_torch(tokens: Tensor, target: Tensor, paths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pure-torch acceptance. tokens, target: [R, k] node tokens and the backbone's argmax at each node; paths:
    [R, P, L] node indices per root-to-leaf path, padded with -1 (a row's unused paths: all -1 after the root).
    Returns [R] each: (best path, accepted drafts, bonus); the first best path on ties."""
    R, P, L = paths.shape
    valid = paths[..., 1:] >= 0
    nodes = paths.clamp(min=0)
    node_tokens = tokens.gather(1, nodes.flatten(1)).view(R, P, L)
    node_targets = target.gather(1, nodes.flatten(1)).view(R, P, L)
    match = (node_tokens[..., 1:] == node_targets[..., :-1]) & valid
    lengths = match.to(torch.int32).cumprod(dim=-1).sum(dim=-1)
    best = lengths.argmax(dim=-1)
    rows = torch.arange(R, device=paths.device)
    n = lengths[rows, best]
    return best, n, target[rows, nodes[rows, best, n]]


@cache
def _accept_kernel():
    # built on first use so that importing specdec.kernels never needs triton
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(tokens_ptr, target_ptr, paths_ptr, out_ptr, k, P, L, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        tokens_ptr += r * k
        target_ptr += r * k
        paths_ptr += r * P * L
        rows = tl.arange(0, BLOCK_P)[:, None]
        cols = tl.arange(0, BLOCK_L)[None, :]
        node = tl.load(paths_ptr + rows * L + cols, mask=(rows < P) & (cols < L), other=-1)
        valid = (cols >= 1) & (node >= 0)
        parent = tl.load(paths_ptr + rows * L + cols - 1, mask=valid, other=0)
        tok = tl.load(tokens_ptr + node, mask=valid, other=0)
        tgt = tl.load(target_ptr + parent, mask=valid, other=0)
        miss = (cols >= 1) & ~(valid & (tok == tgt))
        # a fully matched path misses first at column L, or nowhere when L == BLOCK_L: L - 1 drafts either way
        lengths = tl.min(tl.where(miss, cols, BLOCK_L), axis=1) - 1
        # first maximum, like torch.argmax; padded rows score 0, so a tie always goes to a real path before them
        best = tl.argmax(lengths, axis=0, tie_break_left=True)
        n = tl.max(lengths, axis=0)
        bonus = tl.load(target_ptr + tl.maximum(tl.load(paths_ptr + best * L + n), 0))
        tl.store(out_ptr + 3 * r, best)
        tl.store(out_ptr + 3 * r + 1, n)
        tl.store(out_ptr + 3 * r + 2, bonus)

    return kernel


def greedy_accept_triton(tokens: Tensor, target: Tensor, paths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Triton acceptance, one program per row over all its paths (contiguous inputs); same contract as
    greedy_accept_torch. Launches without a host sync."""
    import triton

    R, P, L = paths.shape
    out = torch.empty(R, 3, dtype=torch.int64, device=paths.device)
    blocks = dict(BLOCK_P=triton.next_power_of_2(P), BLOCK_L=triton.next_power_of_2(L))
    _accept_kernel()[(R,)](tokens, target, paths, out, tokens.shape[1], P, L, **blocks)
    return out[:, 0], out[:, 1], out[:, 2].to(target.dtype)
