"""EAGLE drafting: the draft layer rolls features forward autoregressively over a tree, with its own KV cache.

eagle (EAGLE-1): a static tree (a Medusa-style choice list: path (r1, r2, ...) = rank r_d at depth d).
eagle2 (EAGLE-2): a dynamic tree: at each depth the top_k nodes by path log-probability are expanded, then all
candidates are reranked and the best total_tokens - 1 kept. eagle3: the same dynamic tree drafted by an EAGLE-3
draft (fused low/middle/high features, its own draft-vocabulary lm_head; specdec.eagle3); the drafter asks the
verify forward for the layers the draft reads. Either way the tree is cut to the size that maximises
expected tokens per unit of verify cost when the device's verify cost grows with tree size (this CPU).
Either takes a prompt-lookup branch (lookup=True, "eagle2+lookup"; specdec.drafters.lookup).
"""
from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from specdec.drafters.base import DecodeState, Drafter, root_only
from specdec.drafters.lookup import lookup_branch
from specdec.drafters.ngram import NgramConfig
from specdec.eagle import Draft, load_eagle
from specdec.eagle3 import Eagle3Draft
from specdec.machine import DRAFTER_DEFAULTS, machine_kind, verify_cost_curve, verify_points
from specdec.model import Transformer
from specdec.packed import pack_linears
from specdec.tree import Tree, best_tree, head_tree, parents_from_choices

STATIC_DEPTH = 5  # EAGLE-1's static trees reach at most this deep


class EagleDrafter(Drafter):
    """EAGLE-1 (static tree) or EAGLE-2 (tree="dynamic") drafting from an EAGLE or EAGLE-3 draft model; lookup=True
    (or an NgramConfig) adds a prompt-lookup branch to every tree."""

    name = "eagle"

    def __init__(self, model: Transformer, draft: str | Path | Draft = "eagle", tree: str | int | list = "auto",
                 depth: int | None = None, top_k: int | None = None, total_tokens: int | None = None,
                 verify_cost: dict[int, float] | None = None, lookup: bool | NgramConfig = False):
        device = model.output.weight.device
        kind = machine_kind(model.tok_embeddings.weight)
        self.model = model
        # a copy: packing its linears must not touch a module still being trained
        if isinstance(draft, torch.nn.Module):
            self.draft, meta = copy.deepcopy(draft).requires_grad_(False), {}
        else:
            self.draft, meta = load_eagle(draft, model)
        pack_linears(self.draft)
        self.embed = model.tok_embeddings.weight
        self.score = self.draft.scorer(model.output.weight)  # the draft's lm_head, packed
        self.vocab_ids = self.draft.vocab_ids
        self.hidden_layers = self.draft.hidden_layers
        self.dynamic = tree == "dynamic"
        if self.dynamic:
            d, k, n = DRAFTER_DEFAULTS[kind].eagle2_tree
            self.depth, self.top_k, self.total = (d if depth is None else depth, k if top_k is None else top_k,
                                                 n if total_tokens is None else total_tokens)
            if min(self.depth, self.top_k, self.total) < 1:
                raise ValueError("depth, top_k and total_tokens must be at least 1")
            self.top_k = min(self.top_k, len(self.vocab_ids))
            self.tree_slots = self.depth * self.top_k
        else:
            self.choices = head_tree(tree, meta, STATIC_DEPTH if depth is None else depth, len(self.vocab_ids),
                                     DRAFTER_DEFAULTS[kind].eagle_nodes)
            self._plan_static()
            self.total = len(self.choices) + 1
            self.tree_slots = len(self.choices)
        self.lookup = lookup_branch(lookup, kind)
        if self.lookup is not None:
            self.name = "eagle+lookup"
        extra = self.lookup.draft_len if self.lookup else 0
        points = verify_points(model) if verify_cost is None else verify_cost
        self.cost_of_rows = partial(verify_cost_curve, kind, self.total + extra, device, points)
        self.cost, self.rows = self.cost_of_rows(), 1
        self.kv: Tensor | None = None
        self.length = 0
        self.last: Tensor | None = None

    def _plan_static(self) -> None:
        """Per depth d: the level's nodes that have children, and for each node one level down its (parent's row
        among those, rank)."""
        self.depth = max(len(c) for c in self.choices)
        levels = [[c for c in self.choices if len(c) == d] for d in range(1, self.depth + 1)]
        self.first_ranks = [c[0] for c in levels[0]]
        self.expand: list[list[int]] = []
        self.child_of: list[tuple[list[int], list[int]]] = []
        for level, kids in zip(levels, levels[1:]):
            pos = {c: i for i, c in enumerate(level)}
            parents = sorted({pos[c[:-1]] for c in kids})
            row = {p: r for r, p in enumerate(parents)}
            self.expand.append(parents)
            self.child_of.append(([row[pos[c[:-1]]] for c in kids], [c[-1] for c in kids]))

    def set_rows(self, rows: int) -> None:
        if rows != self.rows:
            self.cost, self.rows = self.cost_of_rows(rows=rows), rows

    # ---------------------------------------------------------------- the draft cache

    def begin(self, state: DecodeState) -> None:
        size = self.model.max_seq_len + self.tree_slots
        if self.kv is None or self.kv.shape[2] != size:
            self.kv = self.draft.new_cache(size)
        self.length = 0
        prompt = state.tokens[: state.prompt_len + 1]
        self._commit(self.draft.decode_features(state.hidden, state.layers), prompt[1:])
        if self.lookup is not None:
            self.lookup.begin(state)

    def update(self, state: DecodeState) -> None:
        n = state.hidden.shape[0]
        self._commit(self.draft.decode_features(state.hidden, state.layers), state.tokens[-n:])
        if self.lookup is not None:
            self.lookup.update(state)

    def _commit(self, features: Tensor, next_tokens: list[int]) -> None:
        """Pairs (f_j, x_{j+1}) of verified positions into the draft cache; keep the last prediction."""
        cos, sin, mask = self.model.appended(self.length, len(next_tokens))
        out = self.draft(features.to(self.kv.dtype), torch.tensor(next_tokens, device=features.device), self.embed,
                         cos, sin, self.kv, self.length, mask)
        self.length += len(next_tokens)
        self.last = out[-1:]

    def _expand(self, feats: Tensor, tokens: Tensor, parent_slots: Tensor, written: int, depth: int, kv: Tensor,
                lengths: Tensor, longest: int, anc: Tensor) -> tuple[Tensor, Tensor]:
        """Draft one tree level in R rows: row r's nodes (parent feature [R, n, d], token [R, n]) go to its tree slots
        written.. after its committed length lengths[r] (at most `longest`, known on the host) in its draft cache
        kv[:, r]; anc [R, slots, slots] is each row's tree ancestry so far. Returns the nodes' outputs and log-probs."""
        (R, n), device = tokens.shape, tokens.device
        new = torch.arange(n, device=device)
        seen = anc.gather(1, parent_slots.clamp(min=0)[..., None].expand(R, n, anc.shape[2]))
        seen &= (parent_slots >= 0)[..., None]
        seen[:, new, written + new] = True
        anc[:, written : written + n] = seen
        span = longest + written + n
        offset = torch.arange(span, device=device)[None, :] - lengths[:, None]  # slot relative to the tree's first
        in_tree = (offset >= 0) & (offset < written + n)
        tree = seen.gather(2, offset.clamp(0, written + n - 1)[:, None, :].expand(R, n, span))
        mask = (offset < 0)[:, None, :] | (tree & in_tree[:, None, :])
        pos = (lengths + depth - 1)[:, None].expand(R, n)
        cos, sin = self.model.rope_cos[pos].unsqueeze(1), self.model.rope_sin[pos].unsqueeze(1)
        out = self.draft(feats, tokens, self.embed, cos, sin, kv, lengths[:, None] + written + new, mask.unsqueeze(1))
        return out, F.log_softmax(self.score(out).float(), dim=-1)

    # ---------------------------------------------------------------- trees

    def propose(self, state: DecodeState) -> Tree:
        return self.propose_batch([self], [state])[0]

    @staticmethod
    def propose_batch(drafters: list["EagleDrafter"], states: list[DecodeState]) -> list[Tree]:
        """Trees for rows decoded together, drafted in one pass per tree level when the rows' drafters are forks of
        one (the same draft and tree settings); a row too near the context end gets the root alone."""
        trees: list[Tree | None] = [None] * len(drafters)
        live = []
        for i, (d, state) in enumerate(zip(drafters, states)):
            if d.length + d.depth > d.model.max_seq_len:
                trees[i] = root_only(state)
            else:
                live.append(i)
        lead = drafters[live[0]] if live else None
        together = all(drafters[i].draft is lead.draft and drafters[i].plan == lead.plan for i in live)
        for group in [live] if together and live else [[i] for i in live]:
            rows = EagleDrafter._draft_rows([drafters[i] for i in group], [states[i] for i in group])
            for i, tree in zip(group, rows):
                trees[i] = tree
        return trees

    @property
    def plan(self) -> tuple:
        """What shapes a tree: rows with equal plans draft together."""
        return (self.depth, self.top_k) if self.dynamic else (tuple(self.choices),)

    @staticmethod
    def candidates(drafters: list["EagleDrafter"]) -> tuple[Tensor, Tensor, Tensor]:
        """Each row's tree candidates [R, N], drafted together (forks of one drafter, each begun on its own
        sequence): tokens, parent candidate index (-1: the root) and path log-probability."""
        lead = drafters[0]
        device = lead.kv.device
        lengths = torch.tensor([d.length for d in drafters], device=device)
        longest = max(d.length for d in drafters)
        if len(drafters) == 1:
            kv = lead.kv.unsqueeze(1)  # a view: the tree's scratch slots are written in place
        else:
            kv = torch.stack([d.kv[:, :, : longest + lead.tree_slots] for d in drafters], dim=1)
        last = torch.cat([d.last for d in drafters])
        logp = F.log_softmax(lead.score(last).float(), dim=-1)
        anc = torch.zeros(len(drafters), lead.tree_slots, lead.tree_slots, dtype=torch.bool, device=device)
        return (lead._dynamic if lead.dynamic else lead._static)(logp, last, kv, lengths, longest, anc)

    @staticmethod
    def _draft_rows(drafters: list["EagleDrafter"], states: list[DecodeState]) -> list[Tree]:
        trees = []
        for d, state, tokens, parents, scores in zip(drafters, states, *EagleDrafter.candidates(drafters)):
            limit = d.total - 1
            if d.lookup is not None:
                size = len(tokens)
                tokens, parents, scores = d.lookup.unite(state.tokens, tokens, parents, scores)
                limit += len(tokens) - size
            trees.append(best_tree(state.tokens[-1], tokens, parents, scores, limit, d.cost))
        return trees

    def _dynamic(self, logp: Tensor, last: Tensor, kv: Tensor, lengths: Tensor, longest: int,
                 anc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """EAGLE-2 candidates per row [R, N]: (tokens, parent candidate index or -1, path log-probability), depth by
        depth."""
        (R, _), k, device = logp.shape, self.top_k, logp.device
        score, idx = logp.topk(k, dim=-1)
        tokens, parents, scores = [self.vocab_ids[idx]], [torch.full((R, k), -1, device=device)], [score]
        feats, front = last[:, None].expand(R, k, -1), tokens[0]
        front_ids = torch.arange(k, device=device).expand(R, k)
        parent_slots, written, n = torch.full((R, k), -1, device=device), 0, k
        for depth in range(1, self.depth):
            out, logp = self._expand(feats, front, parent_slots, written, depth, kv, lengths, longest, anc)
            slots = torch.arange(written, written + k, device=device)
            written += k
            child, idx = logp.topk(k, dim=-1)
            cum = (score[..., None] + child).flatten(1)
            tokens.append(self.vocab_ids[idx.flatten(1)])
            parents.append(front_ids.repeat_interleave(k, dim=1))
            scores.append(cum)
            best = cum.topk(k, dim=-1).indices
            feats = out.gather(1, (best // k)[..., None].expand(R, k, out.shape[-1]))
            front, score = tokens[-1].gather(1, best), cum.gather(1, best)
            parent_slots, front_ids = slots[best // k], n + best
            n += k * k
        return torch.cat(tokens, dim=1), torch.cat(parents, dim=1), torch.cat(scores, dim=1)

    def _static(self, logp: Tensor, last: Tensor, kv: Tensor, lengths: Tensor, longest: int,
                anc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """EAGLE-1 candidates per row [R, N]: the static tree's nodes in choice order (depth by depth)."""
        R, device = logp.shape[0], logp.device
        top = logp.topk(max(self.first_ranks) + 1, dim=-1)
        ranks = torch.tensor(self.first_ranks, device=device)
        level_tokens, level_scores = self.vocab_ids[top.indices[:, ranks]], top.values[:, ranks]
        feats = last[:, None].expand(R, len(ranks), -1)
        parent_slots = torch.full((R, len(ranks)), -1, device=device)
        tokens, scores, written = [level_tokens], [level_scores], 0
        for depth, (expand, (rows, kid_ranks)) in enumerate(zip(self.expand, self.child_of), start=1):
            at = torch.tensor(expand, device=device)
            out, lp = self._expand(feats[:, at], level_tokens[:, at], parent_slots[:, at], written, depth, kv,
                                   lengths, longest, anc)
            slots = torch.arange(written, written + len(expand), device=device)
            written += len(expand)
            rows_t, ranks_t = torch.tensor(rows, device=device), torch.tensor(kid_ranks, device=device)
            top = lp.topk(max(kid_ranks) + 1, dim=-1)
            level_tokens = self.vocab_ids[top.indices[:, rows_t, ranks_t]]
            level_scores = level_scores[:, at][:, rows_t] + top.values[:, rows_t, ranks_t]
            feats, parent_slots = out[:, rows_t], slots[rows_t].expand(R, -1)
            tokens.append(level_tokens)
            scores.append(level_scores)
        parents = torch.tensor(parents_from_choices(self.choices)[1:], device=device) - 1
        return torch.cat(tokens, dim=1), parents.expand(R, -1), torch.cat(scores, dim=1)


def eagle2(model: Transformer, draft: str | Path | Draft = "eagle", depth: int | None = None,
           top_k: int | None = None, total_tokens: int | None = None,
           verify_cost: dict[int, float] | None = None, lookup: bool | NgramConfig = False) -> EagleDrafter:
    """EAGLE-2's dynamic trees from a draft model (lookup: with a prompt-lookup branch); named "eagle3" when the
    draft is an EAGLE-3 one."""
    drafter = EagleDrafter(model, draft, "dynamic", depth, top_k, total_tokens, verify_cost, lookup)
    drafter.name = (("eagle3" if isinstance(drafter.draft, Eagle3Draft) else "eagle2")
                    + ("+lookup" if drafter.lookup else ""))
    return drafter


def eagle3(model: Transformer, draft: str | Path | Draft = "eagle3", depth: int | None = None,
           top_k: int | None = None, total_tokens: int | None = None,
           verify_cost: dict[int, float] | None = None, lookup: bool | NgramConfig = False) -> EagleDrafter:
    """EAGLE-3: an EAGLE-3 draft (shipped "eagle3" by default) with EAGLE-2's dynamic trees."""
    return eagle2(model, draft, depth, top_k, total_tokens, verify_cost, lookup)
