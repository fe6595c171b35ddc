"""CPU linears with their weights packed once into oneDNN's blocked layout, as torch.compile's CPU freezing pass does.

A plain nn.Linear on a CPU hands oneDNN a row-major weight, which it reorders on every call; for SmolLM2's small
matrices that reorder costs as much as the product (`scripts/bench_runner.py` times both runners; results/README.md,
"Runner cost").
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
# the rows oneDNN is told to expect: decode steps run 1 to ~32 nodes, and a layout packed for 16 rows was as fast as
# or faster than one packed for 1 at 1, 4, 16 and 64 rows (measured, bf16 and fp32)
ROWS_HINT = 16


def can_pack(weight: Tensor) -> bool:
    """True where oneDNN runs this weight's dtype on this CPU (bf16 needs hardware support, else it is emulated)."""
    if weight.device.type != "cpu" or weight.dtype not in PACKABLE_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    return weight.dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


class PackedLinear(nn.Module):
    """An inference-only linear layer whose weight oneDNN packed once; `weight` still reads as the dense matrix.

    The dense copy is kept only when asked (a tied lm_head is the embedding table, a drafter's lm_head is shared)."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, keep_dense: bool = False):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dense = weight if keep_dense else None
        self.bias = bias
        # a non-persistent buffer: counted with the model's tensors, never saved (its layout is this CPU's)
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT),
                             persistent=False)

    @property
    def weight(self) -> Tensor:
        """The dense [out, in] weight (unpacked into a new tensor unless it was kept)."""
        return self.dense if self.dense is not None else self.packed.to_dense()

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:  # oneDNN's packed op has no backward
            return F.linear(x, self.weight, self.bias)
        out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.packed, self.bias, "none", [],
                                                 "")
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"


def pack_linears(module: nn.Module) -> int:
    """Replace, in place, every nn.Linear under `module` whose weight oneDNN can pack; returns how many.

    Their dense weights are freed unless another module shares them."""
    linears = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear and can_pack(child.weight)]
    shared = {id(p) for m in module.modules() if type(m) is not nn.Linear for p in m.parameters(recurse=False)}
    for parent, name, child in linears:
        setattr(parent, name, PackedLinear(child.weight, child.bias, keep_dense=id(child.weight) in shared))
    return len(linears)


def linear_fn(weight: Tensor) -> Callable[[Tensor], Tensor]:
    """x -> x @ weight.T for a frozen weight the caller keeps (a drafter's lm_head): packed where oneDNN can."""
    return PackedLinear(weight, keep_dense=True) if can_pack(weight) else partial(F.linear, weight=weight)


def unpack_linears(module: nn.Module) -> int:
    """Turn every PackedLinear under `module` back into an nn.Linear over its dense weight, in place; returns how
    many. For torch.compile, which cannot trace oneDNN's opaque packed tensors and packs dense weights itself when
    freezing."""
    packed = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
              if isinstance(child, PackedLinear)]
    for parent, name, child in packed:
        linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
        weight = child.weight  # a kept dense weight stays the very parameter it is (a tied lm_head: the embedding)
        linear.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        if child.bias is not None:
            linear.bias = nn.Parameter(child.bias, requires_grad=False)
        setattr(parent, name, linear)
    return len(packed)
