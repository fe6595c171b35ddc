"""Early-exit self-speculation: the backbone's own first E layers (or any subset of its layers, SWIFT-style) draft a
chain of tokens through an exit head, the whole backbone verifies it (LayerSkip, Draft & Verify, Kangaroo, SWIFT).

A draft step runs one token through the drafting layers, writing its K/V into the backbone's own cache past the
committed length: committed tokens' K/V of those layers are already the backbone's (for a prefix of layers, exactly
what a draft from scratch would compute), and the verify forward overwrites the drafted slots. The exit head is the
final norm + lm_head as they are ("early-exit", training-free) or a trained adapter block first
("early-exit-adapter", specdec.early_exit), which keeps a one-layer cache of its own for committed tokens, fed by the
verify forward's output of the last drafting layer. Drafting stops after the first token whose probability falls
below min_confidence (or after draft_len tokens); the chain, with lookup=True a prompt-lookup branch beside it
("+lookup"), is cut to the prefix worth its verify cost.

Batched decoding (specdec.batch): row r drafts in row r of the batch cache (model.__dict__["batch_kv"]; batch.py hands
propose_batch the rows' drafters in cache-row order), all rows one token per pass; each row writes only past its own
committed length, so no row touches another's cache.
"""
from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from specdec.drafters.base import DecodeState, Drafter, root_only
from specdec.drafters.lookup import lookup_branch
from specdec.drafters.ngram import NgramConfig
from specdec.early_exit import ExitAdapter, exit_layers, load_adapter
from specdec.machine import machine_kind, verify_cost_curve, verify_points
from specdec.model import Transformer
from specdec.packed import linear_fn, pack_linears
from specdec.tree import Tree, best_tree

# training-free default: the fastest exit of scripts/sweep_exit.py on SmolLM2-135M (results/early_exit/), where no
# training-free exit beats plain decoding: its shallow layers agree with the last one on ~5% of tokens
EXIT_LAYER = 2
DRAFT_LEN = 3  # these two: tuned on 8 MT-Bench questions other than the 16 measured
MIN_CONFIDENCE = 0.6


class EarlyExitDrafter(Drafter):
    """Drafts a chain with the backbone's `layers` (default: the first exit_layer) and an exit head: the final norm
    and lm_head (adapter=None) or a trained ExitAdapter (a directory, the shipped "early-exit", or a module), which
    fixes the layers it was trained after."""

    name = "early-exit"

    def __init__(self, model: Transformer, adapter: str | Path | ExitAdapter | None = None,
                 exit_layer: int | None = None, layers: str | list[int] | None = None, draft_len: int = DRAFT_LEN,
                 min_confidence: float = MIN_CONFIDENCE, verify_cost: dict[int, float] | None = None,
                 lookup: bool | NgramConfig = False):
        w = model.tok_embeddings.weight
        kind = machine_kind(w)
        self.model = model
        n_layers = model.args.n_layers
        if adapter is None:
            self.adapter, self.vocab_ids, self.score = None, None, model.output
            self.layers = exit_layers(n_layers, EXIT_LAYER if exit_layer is None and layers is None else exit_layer,
                                      layers)
        else:
            if isinstance(adapter, torch.nn.Module):  # a copy: packing must not touch a module still being trained
                self.adapter = copy.deepcopy(adapter).to(w.dtype).eval().requires_grad_(False)
            else:
                self.adapter = load_adapter(adapter, model)[0]
            self.layers = self.adapter.layers
            asked = exit_layers(n_layers, exit_layer, layers) if exit_layer is not None or layers is not None else None
            if asked is not None and asked != self.layers:
                raise ValueError(f"the adapter was trained after layers {list(self.layers)}, not {list(asked)}: "
                                 "train one for those layers (train/train_heads.py --head early-exit)")
            pack_linears(self.adapter)
            self.vocab_ids = self.adapter.vocab_ids
            self.score = linear_fn(self.adapter.draft_lm_head(model.output.weight))
            self.hidden_layers = (self.layers[-1],)
        if draft_len < 1:
            raise ValueError(f"draft_len must be at least 1, got {draft_len}")
        if not 0.0 <= min_confidence < 1.0:
            raise ValueError(f"min_confidence must be in [0, 1), got {min_confidence}")
        self.draft_len, self.min_confidence = draft_len, min_confidence
        self.lookup = lookup_branch(lookup, kind)
        if self.lookup is not None:
            self.name = "early-exit+lookup"
        extra = self.lookup.draft_len if self.lookup else 0
        points = verify_points(model) if verify_cost is None else verify_cost
        self.cost_of_rows = partial(verify_cost_curve, kind, draft_len + 1 + extra, w.device, points)
        self.cost, self.rows = self.cost_of_rows(), 1
        self.batched = False  # set by set_rows: only specdec.batch calls it, and then drafts through propose_batch
        self.kv: Tensor | None = None  # the adapter's own cache
        self.length = 0

    @property
    def plan(self) -> tuple:
        """What shapes a draft: rows with equal plans draft together."""
        return self.layers, id(self.adapter), self.draft_len, self.min_confidence

    def set_rows(self, rows: int) -> None:
        self.batched = True
        if rows != self.rows:
            self.cost, self.rows = self.cost_of_rows(rows=rows), rows

    # ---------------------------------------------------------------- the adapter's cache

    def begin(self, state: DecodeState) -> None:
        self.batched = False
        if self.adapter is not None:
            size = self.model.max_seq_len + self.draft_len
            if self.kv is None or self.kv.shape[2] != size:
                self.kv = self.adapter.new_cache(size)
            self.length = 0
            self._commit(state.layers[self.layers[-1]])
        if self.lookup is not None:
            self.lookup.begin(state)

    def update(self, state: DecodeState) -> None:
        if self.adapter is not None:
            self._commit(state.layers[self.layers[-1]])
        if self.lookup is not None:
            self.lookup.update(state)

    def _commit(self, h: Tensor) -> None:
        """The adapter's K/V of newly committed tokens (h: the last drafting layer's output at each)."""
        cos, sin, mask = self.model.appended(self.length, h.shape[0])
        self.adapter(h, cos, sin, self.kv, self.length, mask)
        self.length += h.shape[0]

    # ---------------------------------------------------------------- drafting

    def propose(self, state: DecodeState) -> Tree:
        if self.batched:
            raise ValueError("early-exit drafts in its row of the batch cache: in a batch every row needs an "
                             "early-exit drafter (specdec.batch then drafts them through propose_batch)")
        if len(state.tokens) + self.draft_len > self.model.max_seq_len:
            return root_only(state)
        return self._draft_rows([self], [state], self.model.kv.unsqueeze(2))[0]

    @staticmethod
    def propose_batch(drafters: list["EarlyExitDrafter"], states: list[DecodeState]) -> list[Tree]:
        """Row r (drafters[r], states[r]) drafts in row r of the model's batch cache; rows with one plan draft
        together, one token per pass; a row too near the context end gets the root alone."""
        model = drafters[0].model
        kv = model.__dict__["batch_kv"]
        live = [len(s.tokens) + d.draft_len <= d.model.max_seq_len for d, s in zip(drafters, states)]
        if all(live) and all(d.model is model and d.plan == drafters[0].plan for d in drafters):
            return EarlyExitDrafter._draft_rows(drafters, states, kv[:, :, : len(drafters)])
        return [EarlyExitDrafter._draft_rows([d], [s], kv[:, :, r : r + 1])[0] if ok else root_only(s)
                for r, (d, s, ok) in enumerate(zip(drafters, states, live))]

    @staticmethod
    def _draft_rows(drafters: list["EarlyExitDrafter"], states: list[DecodeState], kv: Tensor) -> list[Tree]:
        """Each row's chain, drafted together into kv [layers, 2, R, kv_heads, slots, head_dim] (row r: that row's
        cache, committed length len(states[r].tokens) - 1), then each cut to a tree."""
        lead = drafters[0]
        tokens, scores, sizes = lead.chains(states, kv, [d.kv for d in drafters])
        trees = []
        for d, state, toks, scs, n in zip(drafters, states, tokens, scores, sizes):
            toks, scs = toks[:n], scs[:n]
            parents = torch.arange(-1, n - 1, device=toks.device)
            limit = n
            if d.lookup is not None:
                toks, parents, scs = d.lookup.unite(state.tokens, toks, parents, scs)
                limit = len(toks)
            trees.append(best_tree(state.tokens[-1], toks, parents, scs, limit, d.cost))
        return trees

    @torch.no_grad()
    def chains(self, states: list[DecodeState], kv: Tensor,
               adapter_caches: list[Tensor | None]) -> tuple[Tensor, Tensor, list[int]]:
        """Greedy draft chains of R rows [R, S] (tokens, path log-probabilities) and each row's length: up to and
        including its first token below min_confidence. The drafted tokens' K/V go into kv's rows past each row's
        committed length (and into the adapter caches' scratch slots)."""
        model = self.model
        device = kv.device
        lengths = [len(s.tokens) - 1 for s in states]
        R, longest = len(states), max(lengths)
        starts = torch.tensor(lengths, device=device)[:, None]
        token = torch.tensor([[s.tokens[-1]] for s in states], device=device)
        akv = None
        if self.adapter is not None:  # one row: a view, else a stacked copy (drafted K/V are scratch either way)
            akv = (adapter_caches[0].unsqueeze(1) if R == 1 else
                   torch.stack([c[:, :, : longest + self.draft_len] for c in adapter_caches], dim=1))
        floor = math.log(self.min_confidence) if self.min_confidence > 0 else -math.inf
        drafted, logps = [], []
        for j in range(self.draft_len):
            if R == 1:  # one row: the lean one-sequence attention (slices of its own cache, no mask)
                start = lengths[0] + j
                cos, sin = model.rope_cos[start : start + 1], model.rope_sin[start : start + 1]
                x, caches, mask = model.tok_embeddings(token[0]), kv[:, :, 0], None
                head_cache = None if akv is None else akv[:, 0]
            else:
                start = starts + j
                mask = (torch.arange(longest + j + 1, device=device) <= start)[:, None, None, :]
                cos, sin = model.rope_cos[start].unsqueeze(1), model.rope_sin[start].unsqueeze(1)
                x, caches, head_cache = model.tok_embeddings(token), kv, akv
            for i in self.layers:
                x = model.layers[i](x, cos, sin, caches[i], start, mask)
            h = model.norm(x) if akv is None else self.adapter(x, cos, sin, head_cache, start, mask)
            logp, idx = F.log_softmax(self.score(h.reshape(R, -1)).float(), dim=-1).max(dim=-1)
            token = (idx if self.vocab_ids is None else self.vocab_ids[idx])[:, None]
            drafted.append(token[:, 0])
            logps.append(logp)
            if j + 1 < self.draft_len and not bool((logp >= floor).any()):
                break
        logp = torch.stack(logps, dim=1)
        confident = (logp >= floor).long().cumprod(dim=1).sum(dim=1)
        sizes = (confident + 1).clamp(max=logp.shape[1]).tolist()
        return torch.stack(drafted, dim=1), logp.cumsum(dim=1), sizes


def early_exit_adapter(model: Transformer, adapter: str | Path | ExitAdapter = "early-exit",
                       exit_layer: int | None = None, layers: str | list[int] | None = None,
                       draft_len: int = DRAFT_LEN, min_confidence: float = MIN_CONFIDENCE,
                       verify_cost: dict[int, float] | None = None,
                       lookup: bool | NgramConfig = False) -> EarlyExitDrafter:
    """Early exit through a trained adapter (the shipped "early-exit" one by default)."""
    drafter = EarlyExitDrafter(model, adapter, exit_layer, layers, draft_len, min_confidence, verify_cost, lookup)
    drafter.name = "early-exit-adapter+lookup" if drafter.lookup else "early-exit-adapter"
    return drafter
