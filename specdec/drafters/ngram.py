"""Prompt lookup: continuations of earlier occurrences of the context's last n-gram become tree branches."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from specdec.drafters.base import DecodeState, Drafter, with_fields
from specdec.machine import DRAFTER_DEFAULTS, machine_kind
from specdec.tree import Tree, shape_from_parents


@dataclass
class NgramConfig:
    """Match suffixes of max_ngram..min_ngram tokens; up to max_branches continuations of draft_len tokens.

    The class defaults suit an fp32 CPU; `for_machine` gives each machine kind's (specdec.machine.DRAFTER_DEFAULTS).
    """

    max_ngram: int = 3
    min_ngram: int = 2
    draft_len: int = 10
    max_branches: int = 4
    max_nodes: int = 16  # drafted nodes, root excluded

    def __post_init__(self):
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {self.min_ngram}, {self.max_ngram}")
        if self.draft_len < 1 or self.max_branches < 1 or self.max_nodes < 1:
            raise ValueError("draft_len, max_branches and max_nodes must be at least 1")

    @classmethod
    def for_machine(cls, kind: str) -> "NgramConfig":
        """The machine kind's defaults (specdec.machine.DRAFTER_DEFAULTS)."""
        return cls(**DRAFTER_DEFAULTS[kind].ngram)


class NgramDrafter(Drafter):
    """Prompt-lookup drafting over prompt + generated text; no model, no training."""

    name = "ngram"

    config_class = NgramConfig

    def __init__(self, config: NgramConfig | None = None, **fields):
        """config: None for the machine kind's defaults (chosen at begin()); fields (max_ngram, draft_len, ...)
        replace single values of either."""
        self.requested, self.fields = config, fields
        self.config = with_fields(config or NgramConfig(), fields)
        self.index: dict[int, dict[tuple[int, ...], list[int]]] = {}
        self.indexed = 0

    def begin(self, state: DecodeState) -> None:
        self.config = with_fields(self.requested or NgramConfig.for_machine(machine_kind(state.hidden)), self.fields)
        self.index = {n: defaultdict(list) for n in range(self.config.min_ngram, self.config.max_ngram + 1)}
        self.indexed = 0
        self._extend(state.tokens)

    def _extend(self, tokens: list[int]) -> None:
        # index every n-gram ending before the pending token by where its continuation starts
        for end in range(self.indexed + 1, len(tokens)):
            for n, table in self.index.items():
                if end >= n:
                    table[tuple(tokens[end - n : end])].append(end)
        self.indexed = max(self.indexed, len(tokens) - 1)

    def update(self, state: DecodeState) -> None:
        self._extend(state.tokens)

    def continuations(self, tokens: list[int]) -> list[tuple[int, list[int]]]:
        """Distinct draft continuations for the current context with the length of the match that found each, best
        first (longest match, most recent)."""
        c = self.config
        found: list[tuple[int, list[int]]] = []
        seen: set[tuple[int, ...]] = set()
        for n in range(c.max_ngram, c.min_ngram - 1, -1):
            if len(tokens) < n:
                continue
            for start in reversed(self.index[n].get(tuple(tokens[-n:]), ())):
                cont = tokens[start : start + c.draft_len]
                key = tuple(cont)
                if cont and key not in seen:
                    seen.add(key)
                    found.append((n, cont))
                    if len(found) == c.max_branches:
                        return found
        return found

    def propose(self, state: DecodeState) -> Tree:
        tokens = state.tokens
        parents, node_tokens = [-1], [tokens[-1]]
        children: list[dict[int, int]] = [{}]
        for _, cont in self.continuations(tokens):
            node = 0
            for t in cont:
                nxt = children[node].get(t)
                if nxt is None:
                    if len(parents) > self.config.max_nodes:
                        break
                    nxt = len(parents)
                    parents.append(node)
                    node_tokens.append(t)
                    children.append({})
                    children[node][t] = nxt
                node = nxt
        device = state.hidden.device
        return Tree(torch.tensor(node_tokens, device=device), shape_from_parents(parents, device))
