"""Medusa drafting: each head's top-k tokens fill a static sparse tree, one batched head step per verify; with a
prompt-lookup branch (lookup=True, "medusa+lookup") node i scores its path's measured head accuracies."""
from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

import torch

from specdec.drafters.base import DecodeState, Drafter, root_only
from specdec.drafters.lookup import lookup_branch
from specdec.drafters.ngram import NgramConfig
from specdec.machine import DRAFTER_DEFAULTS, machine_kind, verify_cost_curve, verify_points
from specdec.medusa import MedusaHeads, load_medusa
from specdec.model import Transformer
from specdec.packed import linear_fn, pack_linears
from specdec.tree import Tree, best_tree, head_tree, parents_from_choices, rank_accuracies, shape_from_parents


class MedusaDrafter(Drafter):
    """Drafts from Medusa heads (plain or trigram) over the backbone's last hidden state; lookup=True (or an
    NgramConfig) adds a prompt-lookup branch, and the tree is then cut by verify cost."""

    name = "medusa"

    def __init__(self, model: Transformer, heads: str | Path | MedusaHeads = "medusa", tree: str | int | list = "auto",
                 min_confidence: float = 0.0, lookup: bool | NgramConfig = False):
        device = model.output.weight.device
        kind = machine_kind(model.tok_embeddings.weight)
        self.min_confidence = min_confidence
        if isinstance(heads, MedusaHeads):  # a copy: packing its linears must not touch heads still being trained
            self.heads, meta = copy.deepcopy(heads).requires_grad_(False), {}
        else:
            self.heads, meta = load_medusa(heads, model)
        pack_linears(self.heads)
        self.embed = model.tok_embeddings.weight
        self.lm_head = linear_fn(self.heads.draft_lm_head(model.output.weight))
        self.choices = head_tree(tree, meta, self.heads.config.num_heads, len(self.heads.vocab_ids),
                                 DRAFTER_DEFAULTS[kind].medusa_nodes)
        self.shape = shape_from_parents(parents_from_choices(self.choices), device)
        self.node_head = torch.tensor([len(c) - 1 for c in self.choices], device=device)
        self.node_rank = torch.tensor([c[-1] for c in self.choices], device=device)
        self.top_k = max(c[-1] for c in self.choices) + 1
        self.lookup = lookup_branch(lookup, kind)
        if self.lookup is not None:
            self.name = "medusa+lookup"
            acc = rank_accuracies(meta, self.heads.config.num_heads)
            # a node's path log-probability; a rank past the measured ones (an explicit choice list) counts as 1e-6
            self.node_scores = torch.tensor([sum(math.log(max(acc[d][r] if r < len(acc[d]) else 0.0, 1e-6))
                                                 for d, r in enumerate(c)) for c in self.choices], device=device)
            self.node_parents = torch.tensor(parents_from_choices(self.choices)[1:], device=device) - 1
            self.cost_of_rows = partial(verify_cost_curve, kind, len(self.choices) + 1 + self.lookup.draft_len, device,
                                        verify_points(model))
            self.cost, self.rows = self.cost_of_rows(), 1

    def set_rows(self, rows: int) -> None:
        if self.lookup is not None and rows != self.rows:
            self.cost, self.rows = self.cost_of_rows(rows=rows), rows

    def begin(self, state: DecodeState) -> None:
        if self.lookup is not None:
            self.lookup.begin(state)

    def update(self, state: DecodeState) -> None:
        if self.lookup is not None:
            self.lookup.update(state)

    def propose(self, state: DecodeState) -> Tree:
        device = state.hidden.device
        t = state.tokens
        context = torch.tensor([[t[-3] if len(t) > 2 else t[0], t[-2], t[-1]]], device=device)
        logits = self.heads(state.hidden[-1:], context, self.embed, self.lm_head)
        if self.min_confidence > 0 and float(logits[0, 0].detach().softmax(-1).max()) < self.min_confidence:
            return root_only(state)
        top = logits[:, 0].topk(self.top_k, dim=-1).indices
        drafted = self.heads.vocab_ids[top[self.node_head, self.node_rank]]
        if self.lookup is not None:
            tokens, parents, scores = self.lookup.unite(t, drafted, self.node_parents, self.node_scores)
            return best_tree(t[-1], tokens, parents, scores, len(tokens), self.cost)
        tokens = torch.cat((torch.tensor([t[-1]], device=device), drafted))
        return Tree(tokens, self.shape)


def medusa_trigram(model: Transformer, heads: str | Path | MedusaHeads = "medusa-trigram",
                   tree: str | int | list = "auto", min_confidence: float = 0.0,
                   lookup: bool | NgramConfig = False) -> MedusaDrafter:
    """The trigram-conditioned variant with its shipped heads by default."""
    drafter = MedusaDrafter(model, heads, tree, min_confidence, lookup)
    drafter.name = "medusa-trigram+lookup" if drafter.lookup else "medusa-trigram"
    return drafter
