"""KV commit: move each row's accepted tree nodes' keys and values into place after its committed prefix."""
from __future__ import annotations

from functools import cache

import torch
from torch import Tensor


def commit_kv_torch(kv: Tensor, starts: Tensor, accepted: Tensor, counts: Tensor) -> None:
    """kv: [layers, 2, rows, kv_heads, slots, head_dim]; in row r, slot starts[r]+i takes slot starts[r]+accepted[r, i]
    for i < counts[r] (accepted ascending; entries past counts[r] are ignored)."""
    rows = torch.arange(kv.shape[2], device=kv.device)[:, None]
    # entries past a row's count repeat its last move (the same value to the same slot); a row with none copies its
    # start slot onto itself
    i = torch.minimum(torch.arange(accepted.shape[1], device=kv.device), (counts[:, None] - 1).clamp(min=0))
    dst = starts[:, None] + i
    src = torch.where(counts[:, None] > 0, starts[:, None] + accepted.gather(1, i), dst)
    # advanced indexing copies the source first, so overlapping slots are safe
    kv[:, :, rows, :, dst] = kv[:, :, rows, :, src]


@cache
def _commit_kernel():
    # built on first use so that importing specdec.kernels never needs triton
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(kv_ptr, starts_ptr, accepted_ptr, counts_ptr, rows, kv_heads, max_len, head_dim, width,
               BLOCK_D: tl.constexpr):
        line = tl.program_id(0).to(tl.int64)  # one (layer, k/v, row, head) line; a long cache overflows int32
        row = (line // kv_heads) % rows
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        inside = cols < head_dim
        base = kv_ptr + (line * max_len + tl.load(starts_ptr + row)) * head_dim
        # ascending i: step i writes slot i <= accepted[i] < accepted[j] for all j > i, so no later step reads it
        for i in range(tl.load(counts_ptr + row)):
            src = tl.load(accepted_ptr + row * width + i)
            tl.store(base + i * head_dim + cols, tl.load(base + src * head_dim + cols, mask=inside), mask=inside)

    return kernel


def commit_kv_triton(kv: Tensor, starts: Tensor, accepted: Tensor, counts: Tensor) -> None:
    """Triton commit, one program per (layer, k/v, row, head) line and head_dim block; same contract as
    commit_kv_torch (kv contiguous). Launches without a host sync."""
    import triton

    rows, kv_heads, max_len, head_dim = kv.shape[2:]
    block = min(triton.next_power_of_2(head_dim), 256)
    grid = (kv.numel() // (max_len * head_dim), triton.cdiv(head_dim, block))
    _commit_kernel()[grid](kv, starts, accepted.contiguous(), counts, rows, kv_heads, max_len, head_dim,
                           accepted.shape[1], BLOCK_D=block)
