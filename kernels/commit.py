"""KV commit: move the accepted tree nodes' keys and values into place after the committed prefix."""
from __future__ import annotations

from torch import Tensor


def commit_kv_torch(kv: Tensor, start: int, accepted: Tensor) -> None:
    """kv: [layers, 2, kv_heads, max_len, head_dim]; slot start+i takes slot start+accepted[i] (ascending)."""
    n = accepted.shape[0]
    # advanced indexing copies the source first, so overlapping slots are safe
    kv[:, :, :, start : start + n] = kv[:, :, :, start + accepted]
