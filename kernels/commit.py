"""KV commit: move the accepted tree nodes' keys and values into place after the committed prefix."""
from __future__ import annotations

from functools import cache

from torch import Tensor


def commit_kv_torch(kv: Tensor, start: int, accepted: Tensor) -> None:
    """kv: [layers, 2, kv_heads, max_len, head_dim]; slot start+i takes slot start+accepted[i] (ascending)."""
    n = accepted.shape[0]
    # advanced indexing copies the source first, so overlapping slots are safe
    kv[:, :, :, start : start + n] = kv[:, :, :, start + accepted]


@cache
def _commit_kernel():
    # built on first use so that importing specdec.kernels never needs triton
    import triton
    import triton.language as tl

    # start and n change every step: specializing on them would recompile for each new value class
    @triton.jit(do_not_specialize=["start", "n"])
    def kernel(kv_ptr, accepted_ptr, start, n, max_len, head_dim, BLOCK_D: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)  # a long cache overflows int32 offsets
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        inside = cols < head_dim
        base = kv_ptr + (row * max_len + start) * head_dim
        # ascending i: step i writes slot i <= accepted[i] < accepted[j] for all j > i, so no later step reads it
        for i in range(n):
            src = tl.load(accepted_ptr + i)
            tl.store(base + i * head_dim + cols, tl.load(base + src * head_dim + cols, mask=inside), mask=inside)

    return kernel


def commit_kv_triton(kv: Tensor, start: int, accepted: Tensor) -> None:
    """Triton commit, one program per (layer, k/v, head) row and head_dim block; same contract as commit_kv_torch."""
    import triton

    max_len, head_dim = kv.shape[-2:]
    block = min(triton.next_power_of_2(head_dim), 256)
    grid = (kv.numel() // (max_len * head_dim), triton.cdiv(head_dim, block))
    _commit_kernel()[grid](kv, accepted, start, accepted.shape[0], max_len, head_dim, BLOCK_D=block)
