"""The verify forward, chosen by device: eager on CPU, a padded static-shape step captured as CUDA graphs on GPU.

A tree of k nodes is padded to the next power-of-two bucket (padding nodes see only themselves and nobody sees
them), and the committed length enters as a 0-dim tensor, so each bucket is one graph that every step reuses.
On a CPU the step is matmul-bound and attending over the whole cache costs more than launches save: eager.
"""
from __future__ import annotations

import torch
from torch import Tensor

from specdec.model import ForwardOut, Transformer

MODES = ("eager", "static", "compile", "graphs")
DEFAULT_MODE = {"cpu": "eager", "cuda": "graphs"}


def buckets_up_to(max_nodes: int) -> tuple[int, ...]:
    """Powers of two from 1 up to the first one >= max_nodes."""
    sizes = [1]
    while sizes[-1] < max_nodes:
        sizes.append(sizes[-1] * 2)
    return tuple(sizes)


class VerifyStep:
    """Runs a tree's nodes through the backbone: eagerly ("eager"), or padded through one static-shape function per
    bucket, uncompiled ("static"), torch.compile'd ("compile") or compiled and captured as CUDA graphs ("graphs")."""

    def __init__(self, model: Transformer, mode: str = "auto", max_nodes: int = 128, backend: str | None = None):
        device = model.tok_embeddings.weight.device
        self.mode = DEFAULT_MODE.get(device.type, "eager") if mode == "auto" else mode
        if self.mode not in MODES:
            raise ValueError(f"unknown verify mode {mode!r}; choose auto or one of {', '.join(MODES)}")
        if self.mode == "graphs" and device.type != "cuda":
            raise ValueError("verify mode 'graphs' captures CUDA graphs: it needs the model on a CUDA device")
        self.model = model
        self.buckets = buckets_up_to(max_nodes)
        if self.mode == "eager":
            return
        if model.kv is None or model.kv.shape[3] < model.max_seq_len + self.buckets[-1]:
            model.setup_cache(model.max_seq_len, spare=self.buckets[-1])  # room for the last step's padding nodes
        self.start = torch.zeros((), dtype=torch.long, device=device)
        self.fn = model.static_forward
        if self.mode == "graphs":
            for t in (model.kv, model.rope_cos, model.rope_sin):
                torch._dynamo.mark_static_address(t)  # graphs read and write them in place at fixed addresses
            self.fn = torch.compile(self.fn, mode="reduce-overhead", fullgraph=True, dynamic=False)
        elif self.mode == "compile":
            self.fn = torch.compile(self.fn, fullgraph=True, dynamic=False, backend=backend or "inductor")

    @torch.inference_mode()  # as decoding runs: a graph compiled under another grad mode would not be reused
    def warm_up(self) -> None:
        """Compile (and capture) every bucket now, so that no first use lands inside a timed turn; the committed
        cache is untouched (a step only writes K/V past the committed length)."""
        if self.mode == "eager":
            return
        device = self.model.tok_embeddings.weight.device
        for size in self.buckets:
            if self.model.length + size <= self.model.max_seq_len:
                self(torch.zeros(size, dtype=torch.long, device=device))

    def __call__(self, tokens: Tensor, positions: Tensor | None = None, tree_mask: Tensor | None = None,
                 hidden_layers: tuple[int, ...] = ()) -> ForwardOut:
        """Same contract as `Transformer.forward` (logits for every node); tree_mask None is a chain."""
        k = tokens.shape[0]
        model = self.model
        if self.mode == "eager" or k > self.buckets[-1]:
            return model.forward(tokens, positions=positions, tree_mask=tree_mask, hidden_layers=hidden_layers)
        if model.length + k > model.max_seq_len:
            raise ValueError(f"{model.length + k} tokens exceed the cache of {model.max_seq_len}")
        size = next(b for b in self.buckets if b >= k)
        device = tokens.device
        if positions is None:
            positions = model.length + torch.arange(k, device=device)
        mask = torch.eye(size, dtype=torch.bool, device=device)
        mask[:k, :k] = torch.ones(k, k, dtype=torch.bool, device=device).tril() if tree_mask is None else tree_mask
        pad = size - k
        tokens = torch.cat((tokens, tokens[:1].expand(pad)))
        positions = torch.cat((positions, positions[:1].expand(pad)))
        self.start.fill_(model.length)
        if self.mode == "graphs":
            torch.compiler.cudagraph_mark_step_begin()
        logits, hidden, layers = self.fn(tokens, positions, mask, self.start, tuple(hidden_layers))
        if self.mode == "graphs":  # a graph's outputs live in its pool: the next replay overwrites them
            return ForwardOut(logits[:k].clone(), hidden[:k].clone(), {i: h[:k].clone() for i, h in layers.items()})
        return ForwardOut(logits[:k], hidden[:k], {i: h[:k] for i, h in layers.items()})


def default_step(model: Transformer) -> VerifyStep:
    """The model's "auto" verify step (eager on CPU, CUDA graphs on GPU), made once and shared: decode() and
    SpecModel use it unless given another."""
    step = model.__dict__.get("default_verify_step")
    if step is None:
        step = model.__dict__["default_verify_step"] = VerifyStep(model)
    return step
