"""EAGLE-3 draft model (placeholder while written)."""
from __future__ import annotations


def default_aux_layers(n_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's fused features: the hidden states entering layers 2, L//2 and L-3 (low, middle, high)."""
    return (min(2, n_layers - 1), n_layers // 2, max(n_layers - 3, 0))
