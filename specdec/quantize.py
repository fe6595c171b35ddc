"""Int8 backbones: gpt-fast-style weight-only per-channel int8, or bitsandbytes LLM.int8, for the runner's linears."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from specdec.model import ModelArgs, Transformer
from specdec.packed import PackedLinear

METHODS = ("int8", "bnb-int8")
LINEAR_NAMES = ("wqkv", "wo", "w13", "w2", "output")
# fp32 on CPU: dequantise this many weights at a time (2 MB) so the block stays in cache and the int8 matrix is
# read once; a whole-matrix .to(float32) writes and rereads 4 bytes per weight and was 2-10x slower (measured).
CPU_BLOCK_ELEMENTS = 1 << 19


def int8_weight(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: w ~= q * scale[:, None]; computed in fp32, deterministic."""
    w32 = w.float()
    scale = w32.abs().amax(dim=1).clamp(min=1e-8) / 127
    q = torch.round(w32 / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class WeightOnlyInt8Linear(nn.Module):
    """A linear layer with int8 weights and one scale per output channel; activations stay in `dtype`.

    `weight` returns the dequantised matrix (for heads that share the backbone's lm_head); forward never builds it
    whole.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype,
                 device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("int8_weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=dtype, device=device))
        self.bias = (nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
                     if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, device: torch.device | str) -> "WeightOnlyInt8Linear":
        """Quantise an nn.Linear (its float weight is read on `device`, then left to be freed)."""
        w = linear.weight.detach()
        q, scale = int8_weight(w.to(device))
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, w.dtype, device="meta")
        out.int8_weight, out.scales = q, scale.to(w.dtype)
        if linear.bias is not None:
            out.bias = nn.Parameter(linear.bias.detach().to(device), requires_grad=False)
        return out

    @property
    def weight(self) -> Tensor:
        """The dequantised weight [out, in] in the activation dtype (a new tensor each call)."""
        return self.int8_weight.to(self.scales.dtype) * self.scales[:, None]

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":  # gpt-fast's form; torch.compile fuses the cast into the matmul
            out = F.linear(x, self.int8_weight.to(x.dtype)) * self.scales
        elif x.dtype in (torch.bfloat16, torch.float16):  # PyTorch's fused CPU int8 x bf16/fp16 kernel
            out = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.int8_weight, self.scales)
            out = out.view(*x.shape[:-1], self.out_features)
        else:
            out = self._blocked(x)
        return out if self.bias is None else out + self.bias

    def _blocked(self, x: Tensor) -> Tensor:
        """fp32 on CPU: dequantise a block of rows into a reused buffer, multiply, next block."""
        x2 = x.reshape(-1, self.in_features)
        rows = max(1, CPU_BLOCK_ELEMENTS // self.in_features)
        buf = x2.new_empty(min(rows, self.out_features), self.in_features)
        out = x2.new_empty(x2.shape[0], self.out_features)
        for s in range(0, self.out_features, rows):
            w = buf[: min(rows, self.out_features - s)]
            w.copy_(self.int8_weight[s : s + rows])
            out[:, s : s + w.shape[0]] = x2 @ w.t()
        return out.mul_(self.scales).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def bnb_linear(linear: nn.Linear, device: torch.device | str, threshold: float = 6.0) -> nn.Module:
    """bitsandbytes LLM.int8 (Linear8bitLt; outlier threshold 6.0 as transformers' load_in_8bit); quantised on the move.

    With threshold > 0 a row's result may depend on its batch (columns where any row has an outlier run in float for all
    rows), so a tree verify is not guaranteed to equal one-token steps; threshold=0 keeps vector-wise int8 only."""
    import bitsandbytes as bnb

    # it logs "inputs will be cast ... to float16" on every forward of a non-fp16 model: once is enough
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    out = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              has_fp16_weights=False, threshold=threshold, device="meta")
    out.weight = bnb.nn.Int8Params(linear.weight.detach().cpu().clone(), requires_grad=False, has_fp16_weights=False)
    if linear.bias is not None:
        out.bias = nn.Parameter(linear.bias.detach().cpu().clone(), requires_grad=False)
    return out.to(device)


def linears(model: Transformer, method: str) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every linear to quantise; LLM.int8 keeps the lm_head in float, as transformers does."""
    names = LINEAR_NAMES if method == "int8" else LINEAR_NAMES[:-1]
    return [(parent, name) for parent in model.modules() for name in names
            if isinstance(getattr(parent, name, None), (nn.Linear, PackedLinear))]


@torch.no_grad()
def quantize_model(model: Transformer, method: str = "int8", device: torch.device | str | None = None,
                   bnb_threshold: float = 6.0) -> Transformer:
    """Replace the runner's linears in place, one at a time on `device` (default: where the model is), then move the
    rest there. A tied lm_head gets its own int8 copy; the embedding table stays float."""
    if method not in METHODS:
        raise ValueError(f"unknown quantisation {method!r}: use one of {', '.join(METHODS)}")
    device = torch.device(device) if device is not None else model.tok_embeddings.weight.device
    for parent, name in linears(model, method):
        old = getattr(parent, name)
        setattr(parent, name, WeightOnlyInt8Linear.from_linear(old, device) if method == "int8"
                else bnb_linear(old, device, bnb_threshold))
        del old  # the float weight goes now: peak memory is the int8 model plus one float matrix
    return model.to(device)


def save_int8(model: Transformer, path: str | Path) -> Path:
    """Write a weight-only int8 runner as one safetensors file, its config in the metadata."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(model.args.hf_config), "quantize": "int8"})
    return path


def load_int8(path: str | Path, device: torch.device | str = "cpu") -> Transformer:
    """Read back what save_int8 wrote: no float copy of the quantised weights is ever built."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("quantize") != "int8":
        raise ValueError(f"{path} is not an int8 runner checkpoint written by save_int8")
    args = ModelArgs.from_hf(json.loads(meta["config"]))
    state = load_file(str(path), device=str(device))
    with torch.device("meta"):
        model = Transformer(args)
    dtype = state["tok_embeddings.weight"].dtype
    for parent, name in linears(model, "int8"):
        old = getattr(parent, name)
        setattr(parent, name,
                WeightOnlyInt8Linear(old.in_features, old.out_features, old.bias is not None, dtype, "meta"))
    model.load_state_dict(state, assign=True)
    return model.eval()
