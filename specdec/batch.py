"""Batched speculative decoding: many prompts share each verify forward, every row lossless on its own.

Each row is one prompt with its own drafter (forked: shared weights, own state), its own tree, its own accepted path
and its own KV length in a batch cache [layers, 2, rows, kv_heads, slots, head_dim]. A step pads the rows' trees to
the largest (padding nodes see only themselves, nobody sees them) and runs one forward over all active rows; row r's
nodes sit at its own cache slots, so no row's prefix is padded or shifted. Rows that finish stop costing: the last
active row moves into the freed cache row, so the active rows are always the first R (a view, no gather); with
`continuous=True` a waiting prompt takes the freed row instead. Drafting runs per row (the drafters keep per-sequence
state); only the backbone's forward, the part whose cost batching amortises, is batched.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from specdec.decode import DecodeResult, DecodeSequence, check_prompt
from specdec.drafters.base import Drafter, NoDrafter
from specdec.kernels import commit_kv, greedy_accept
from specdec.model import ForwardOut, Transformer
from specdec.sampling import SamplingConfig
from specdec.tree import Tree

MAX_TREE = 256  # cache slots past the context: room for the padded tree of a row near the context end


def check_prompts(model: Transformer, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    """Every prompt checked before any work; an error names the prompt's index."""
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    checked = []
    for i, p in enumerate(prompts):
        try:
            checked.append(check_prompt(model, p))
        except ValueError as e:
            raise ValueError(f"prompt {i}: {e}") from None
    return checked


def batch_cache(model: Transformer, rows: int) -> Tensor:
    """The model's batch cache [layers, 2, rows, kv_heads, max_seq_len + MAX_TREE, head_dim], kept for the next batch
    of as many rows (slots past a row's length are never attended, so old values are harmless; a fresh allocation
    costs about as much as ten decode steps)."""
    a, w = model.args, model.tok_embeddings.weight
    kv = model.__dict__.get("batch_kv")
    size = model.max_seq_len + MAX_TREE
    if kv is None or kv.shape[2] != rows or kv.shape[4] != size or kv.dtype != w.dtype or kv.device != w.device:
        model.__dict__.pop("batch_kv", None)  # free the old one first
        kv = model.__dict__["batch_kv"] = torch.zeros(a.n_layers, 2, rows, a.n_kv_heads, size, a.head_dim,
                                                      dtype=w.dtype, device=w.device)
    return kv


def _step_inputs(trees: list[Tree], starts: Tensor, longest: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The padded batch of trees after each row's committed length (starts; `longest`, their maximum, known on the
    host): tokens, positions [R, k], the attention mask [R, k, T] over cache slots 0..T-1, and the paths [R, P, L]
    (-1 padded) for acceptance."""
    device, R = starts.device, len(trees)
    k = max(t.shape.size for t in trees)
    P = max(t.shape.paths.shape[0] for t in trees)
    L = max(t.shape.paths.shape[1] for t in trees)
    tokens = torch.zeros(R, k, dtype=torch.long, device=device)
    depth = torch.zeros(R, k, dtype=torch.long, device=device)
    tree_mask = torch.eye(k, dtype=torch.bool, device=device).repeat(R, 1, 1)
    paths = torch.full((R, P, L), -1, dtype=torch.long, device=device)
    for r, t in enumerate(trees):
        n, (n_paths, width) = t.shape.size, t.shape.paths.shape
        tokens[r, :n], depth[r, :n] = t.tokens, t.shape.depth
        tree_mask[r, :n, :n] = t.shape.mask
        paths[r, :n_paths, :width] = t.shape.paths
    span = longest + k
    offset = torch.arange(span, device=device)[None, :] - starts[:, None]  # slot relative to the row's first node
    inside = (offset >= 0) & (offset < k)
    seen = tree_mask.gather(2, offset.clamp(0, k - 1)[:, None, :].expand(R, k, span))
    mask = (offset < 0)[:, None, :] | (seen & inside[:, None, :])
    return tokens, starts[:, None] + depth, mask, paths


@torch.inference_mode()
def decode_batch(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    drafter: Drafter | Sequence[Drafter] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    stop_ids: Sequence[int] = (),
    sampling: SamplingConfig | None = None,
    continuous: bool = True,
    on_tokens: Callable[[int, list[int]], bool | None] | None = None,
    track_top2_gaps: bool = False,
) -> list[DecodeResult]:
    """Decode many prompts, up to batch_size at a time; one DecodeResult per prompt, in order. Each row's output is
    what `decode` gives that prompt alone: greedy token for token, sampling in distribution (each prompt draws from
    its own generator: seed + its index when seeded).

    drafter: one drafter (forked per row) or one per prompt; continuous: a finished row takes the next waiting prompt
    at once (else the next batch_size prompts start when the whole batch has finished); on_tokens(index, new tokens)
    streams, and stops that prompt when it returns True. A row's stats time its own prefill and its decode until it
    finished (while sharing the steps with the other rows)."""
    prompts = check_prompts(model, prompts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if isinstance(drafter, Sequence):
        if len(drafter) != len(prompts):
            raise ValueError(f"{len(drafter)} drafters for {len(prompts)} prompts: give one, or one per prompt")
        per_prompt = list(drafter)
    else:
        per_prompt = None
        drafter = drafter or NoDrafter()
    rows = min(batch_size, len(prompts))
    device = model.tok_embeddings.weight.device
    kv = batch_cache(model, rows)
    sampling = sampling if sampling is not None and not sampling.greedy else None
    free = [] if per_prompt else [drafter.fork() for _ in range(rows)]  # the caller's drafter stays as it was
    hidden_layers = tuple(sorted(set().union(*(d.hidden_layers for d in (per_prompt or free)))))
    results: list[DecodeResult | None] = [None] * len(prompts)
    active: list[tuple[int, DecodeSequence, float]] = []  # (prompt index, sequence, its decode start), row r = [r]
    waiting = list(range(len(prompts)))[::-1]

    def admit(i: int) -> None:
        t0 = time.perf_counter()
        r = len(active)
        seq_drafter = per_prompt[i] if per_prompt else free.pop()
        generator = None
        if sampling:
            generator = torch.Generator(device)
            if sampling.seed is None:
                generator.seed()
            else:
                generator.manual_seed(sampling.seed + i)
        stream = None if on_tokens is None else (lambda new, i=i: on_tokens(i, new))
        seq = DecodeSequence(model, prompts[i], seq_drafter, max_new_tokens, stop_ids, stream, sampling, generator,
                             track_top2_gaps)
        n = len(seq.prompt)
        out = model.forward_rows(torch.tensor([seq.prompt], device=device),
                                 torch.arange(n, device=device)[None],
                                 torch.ones(n, n, dtype=torch.bool, device=device).tril()[None],
                                 kv[:, :, r : r + 1], torch.zeros(1, dtype=torch.long, device=device),
                                 hidden_layers)
        seq.start(out.logits[0, -1], out.hidden[0], {j: h[0] for j, h in out.layers.items()})
        seq.stats.prefill_s = time.perf_counter() - t0
        active.append((i, seq, time.perf_counter()))

    def finish(r: int) -> None:
        i, seq, t0 = active[r]
        seq.stats.decode_s = time.perf_counter() - t0
        results[i] = seq.result()
        if not per_prompt:
            free.append(seq.drafter)
        last = len(active) - 1
        if r != last:  # the last row moves into the freed one: the active rows stay the first R
            n = active[last][1].length
            kv[:, :, r, :, :n] = kv[:, :, last, :, :n]
            active[r] = active[last]
        active.pop()

    while waiting or active:
        if continuous or not active:
            while waiting and len(active) < rows:
                admit(waiting.pop())
                if active[-1][1].done:
                    finish(len(active) - 1)
            if not active:
                continue
        seqs = [seq for _, seq, _ in active]
        for seq in seqs:
            seq.drafter.set_rows(len(seqs))
        drafters = [seq.drafter for seq in seqs]
        if all(type(d) is type(drafters[0]) for d in drafters):
            drafted = type(drafters[0]).propose_batch(drafters, [seq.state for seq in seqs])
            trees = [seq.fit(tree) for seq, tree in zip(seqs, drafted)]
        else:
            trees = [seq.propose() for seq in seqs]
        lengths = [seq.length for seq in seqs]
        starts = torch.tensor(lengths, device=device)
        tokens, positions, mask, paths = _step_inputs(trees, starts, max(lengths))
        if tokens.shape[1] > MAX_TREE:
            raise ValueError(f"a tree of {tokens.shape[1]} nodes exceeds the batch cache's {MAX_TREE} spare slots")
        out = model.forward_rows(tokens, positions, mask, kv[:, :, : len(seqs)], starts, hidden_layers)
        target = out.logits.argmax(dim=-1)  # also when sampling: drafters (lookahead) use each node's argmax
        if sampling is None:
            best, n_drafts, bonus = greedy_accept(tokens, target, paths)
        accepted = torch.zeros(rows, tokens.shape[1], dtype=torch.long, device=device)
        counts = torch.zeros(rows, dtype=torch.long, device=device)
        for r, (seq, tree) in enumerate(zip(seqs, trees)):
            n = tree.shape.size
            row_out = ForwardOut(out.logits[r, :n], out.hidden[r, :n], {j: h[r, :n] for j, h in out.layers.items()})
            if sampling is None:
                verdict = best[r], n_drafts[r], bonus[r]
            else:
                verdict = seq.sample_accept(tree, row_out.logits, target[r, :n])
            kept = seq.advance(tree, row_out, target[r, :n], *verdict)
            accepted[r, : kept.shape[0]] = kept
            counts[r] = kept.shape[0]
        commit_kv(kv, F.pad(starts, (0, rows - len(seqs))), accepted, counts)
        for r in reversed(range(len(active))):
            if active[r][1].done:
                finish(r)
    return results
