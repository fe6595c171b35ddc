"""The verify forward: eager, or a padded static-shape step compiled once per node bucket (captured as CUDA graphs on
a GPU).

A tree of k nodes is padded to the next power-of-two bucket (padding nodes see only themselves and nobody sees
them), the committed length enters as a 0-dim tensor and the attention mask [bucket, T] as a tensor, so each bucket
is one graph that every step reuses. CUDA graphs need fixed shapes, so there T spans the whole cache; elsewhere T is
the committed length plus the bucket, rounded up to SPAN_QUANTUM, and enters the graph as a dynamic size: a CPU pays
for every attended slot, a GPU does not.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from specdec.model import ForwardOut, Transformer
from specdec.packed import unpack_linears

MODES = ("eager", "static", "compile", "graphs")
DEFAULT_MODE = {"cpu": "eager", "cuda": "graphs"}
# graphs of one compiled function, shared by every step in the process (each model's, each bucket's, each
# hidden_layers tuple's): far above dynamo's default of 8; the tests count that none is made after warm-up
RECOMPILE_LIMIT = 512
SPAN_QUANTUM = 64  # attended slots are rounded up to a multiple of this (never 0 or 1: sizes a compiler specialises)


def buckets_up_to(max_nodes: int) -> tuple[int, ...]:
    """Powers of two from 1 up to the first one >= max_nodes."""
    sizes = [1]
    while sizes[-1] < max_nodes:
        sizes.append(sizes[-1] * 2)
    return tuple(sizes)


class VerifyStep:
    """Runs a tree's nodes through the backbone: eagerly ("eager"), or padded through one static-shape function per
    bucket, uncompiled ("static"), torch.compile'd ("compile") or compiled and captured as CUDA graphs ("graphs").

    "compile" on a CPU turns the model's oneDNN-packed linears back into plain ones (inductor cannot trace packed
    weights) and compiles with inductor's freezing, which packs them again inside the graph; the eager forward
    (prefill, trees past the largest bucket) then runs the plain linears."""

    def __init__(self, model: Transformer, mode: str = "auto", max_nodes: int = 128, backend: str | None = None):
        device = model.tok_embeddings.weight.device
        self.mode = DEFAULT_MODE.get(device.type, "eager") if mode == "auto" else mode
        if self.mode not in MODES:
            raise ValueError(f"unknown verify mode {mode!r}; choose auto or one of {', '.join(MODES)}")
        if self.mode == "graphs" and device.type != "cuda":
            raise ValueError("verify mode 'graphs' captures CUDA graphs: it needs the model on a CUDA device")
        self.model = model
        self.buckets = buckets_up_to(max_nodes)
        self.warmed: set[tuple[int, ...]] = set()  # hidden_layers tuples whose buckets are all compiled
        if self.mode == "eager":
            return
        spare = self.buckets[-1] + SPAN_QUANTUM  # the last step's padding nodes, and its span rounded up
        if model.kv is None or model.kv.shape[3] < model.max_seq_len + spare:
            model.setup_cache(model.max_seq_len, spare=spare)
        self.start = torch.zeros((), dtype=torch.long, device=device)
        self.fn = model.static_forward
        inductor = {}
        if self.mode == "graphs":
            for t in (model.kv, model.rope_cos, model.rope_sin):
                torch._dynamo.mark_static_address(t)  # graphs read and write them in place at fixed addresses
            self.fn = torch.compile(self.fn, mode="reduce-overhead", fullgraph=True, dynamic=False)
        elif self.mode == "compile":
            self.fn = torch.compile(self.fn, fullgraph=True, dynamic=False, backend=backend or "inductor")
            if device.type == "cpu" and backend is None:
                unpack_linears(model)
                # freezing makes the weights constants that inductor packs for oneDNN itself (the step's main CPU
                # gain); the C++ wrapper calls the kernels without a Python frame each (results/README.md, runner).
                # With options={"freezing": True} passed to torch.compile the linears stayed plain matmuls.
                inductor = {"freezing": True, "cpp_wrapper": True}
        if self.mode != "static":
            self.fn = with_config(self.fn, inductor, {"recompile_limit": RECOMPILE_LIMIT,
                                                      "accumulated_recompile_limit": RECOMPILE_LIMIT})

    @torch.inference_mode()  # as decoding runs: a graph compiled under another grad mode would not be reused
    def warm_up(self, hidden_layers: tuple[int, ...] = ()) -> None:
        """Compile (and capture) every bucket for this hidden_layers tuple now, so that no first use lands inside a
        timed turn; the committed cache is untouched (a step only writes K/V past the committed length). A call
        asking for a tuple not warmed yet warms it first: a drafter's first step compiles all its graphs."""
        self.warmed.add(tuple(hidden_layers))
        if self.mode in ("eager", "static"):
            return
        device = self.model.tok_embeddings.weight.device
        for size in self.buckets:
            if self.model.length + size <= self.model.max_seq_len:
                self(torch.zeros(size, dtype=torch.long, device=device), hidden_layers=hidden_layers)

    def __call__(self, tokens: Tensor, positions: Tensor | None = None, tree_mask: Tensor | None = None,
                 hidden_layers: tuple[int, ...] = ()) -> ForwardOut:
        """Same contract as `Transformer.forward` (logits for every node); tree_mask None is a chain."""
        k = tokens.shape[0]
        model = self.model
        if tuple(hidden_layers) not in self.warmed:
            self.warm_up(hidden_layers)
        if self.mode == "eager" or k > self.buckets[-1]:
            return model.forward(tokens, positions=positions, tree_mask=tree_mask, hidden_layers=hidden_layers)
        length = model.length
        if length + k > model.max_seq_len:
            raise ValueError(f"{length + k} tokens exceed the cache of {model.max_seq_len}")
        size = next(b for b in self.buckets if b >= k)
        device = tokens.device
        if positions is None:
            positions = length + torch.arange(k, device=device)
        width = model.kv.shape[3] if self.mode == "graphs" else -(-(length + size) // SPAN_QUANTUM) * SPAN_QUANTUM
        mask = torch.zeros(size, width, dtype=torch.bool, device=device)
        mask[:, :length] = True
        mask[:, length : length + size] = torch.eye(size, dtype=torch.bool, device=device)
        mask[:k, length : length + k] = torch.ones(k, k, dtype=torch.bool, device=device).tril() \
            if tree_mask is None else tree_mask
        if self.mode != "graphs":
            torch._dynamo.mark_dynamic(mask, 1)
        pad = size - k
        tokens = torch.cat((tokens, tokens[:1].expand(pad)))
        positions = torch.cat((positions, positions[:1].expand(pad)))
        self.start.fill_(length)
        if self.mode == "graphs":
            torch.compiler.cudagraph_mark_step_begin()
        logits, hidden, layers = self.fn(tokens, positions, mask, self.start, tuple(hidden_layers))
        if self.mode == "graphs":  # a graph's outputs live in its pool: the next replay overwrites them
            return ForwardOut(logits[:k].clone(), hidden[:k].clone(), {i: h[:k].clone() for i, h in layers.items()})
        return ForwardOut(logits[:k], hidden[:k], {i: h[:k] for i, h in layers.items()})


def with_config(fn: Callable, inductor: dict, dynamo: dict) -> Callable:
    """fn run under these inductor and dynamo settings. Patched around each call rather than set once, so that a
    graph compiled late (a new hidden_layers tuple) is built the same way and nothing leaks to the caller's own
    compiled code."""

    def run(*args):
        with torch._inductor.config.patch(inductor), torch._dynamo.config.patch(dynamo):
            return fn(*args)

    return run


def default_step(model: Transformer) -> VerifyStep:
    """The model's "auto" verify step (eager on CPU, CUDA graphs on GPU), made once and shared: decode() and
    SpecModel use it unless given another."""
    step = model.__dict__.get("default_verify_step")
    if step is None:
        step = model.__dict__["default_verify_step"] = VerifyStep(model)
    return step


def make_step(model: Transformer, mode: str = "auto", **options) -> VerifyStep:
    """The model's shared default step for "auto", else a new VerifyStep of that mode."""
    return default_step(model) if mode == "auto" else VerifyStep(model, mode, **options)
