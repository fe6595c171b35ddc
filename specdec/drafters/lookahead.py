"""Lookahead decoding (Fu et al., 2024): Jacobi lookahead and n-gram verification in one forward, no training.

The W x (N-1) lookahead window is itself a tree hanging off the root: level 0 is a chain of W guesses, and column j
continues below level-0 node j through levels 1..N-2. That is exactly the paper's mask (node (i, j) sees the root,
level 0 up to column j and its own column above it) at the paper's positions (depth i + j + 1), so the shared tree
verify / accept / commit runs it unchanged, and a Jacobi guess the backbone agrees with is accepted too. Each step
the top level's greedy outputs close W n-grams (one per column) for the pool, and the window moves up one level.
The pool also learns the n-grams of the prompt and of the committed text.
"""
from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch

from specdec.drafters.base import DecodeState, Drafter, root_only, with_fields
from specdec.machine import DRAFTER_DEFAULTS, machine_kind
from specdec.tree import Tree, shape_from_parents


@dataclass
class LookaheadConfig:
    """W Jacobi columns (window) x N-1 levels (ngram = N), up to G pool n-grams verified per step (guesses), the
    pool's LRU bound on first tokens (it keeps G n-grams per first token), and whether the window runs on steps with
    no pool n-gram for the pending token (the paper's always does; False makes those plain one-node steps).
    Defaults: a 2-core CPU with packed linears, where 8-16 nodes cost 1.1-1.5x one (specdec.machine)."""

    window: int = 3
    ngram: int = 3
    guesses: int = 8
    pool_keys: int = 8192
    always_window: bool = True

    def __post_init__(self):
        if self.window < 1 or self.ngram < 2 or self.guesses < 1 or self.pool_keys < 1:
            raise ValueError(f"lookahead needs window >= 1, ngram >= 2, guesses >= 1 and pool_keys >= 1, got {self}")

    @classmethod
    def for_machine(cls, kind: str) -> "LookaheadConfig":
        """The machine kind's defaults (specdec.machine.DRAFTER_DEFAULTS): on CUDA the paper's setting for 7B models on
        an A100 (W=15, N=5, G=15), on a CPU the class defaults."""
        return cls(**DRAFTER_DEFAULTS[kind].lookahead)


class NgramPool:
    """N-grams keyed by their first token: per_key continuations per key, max_keys keys, least recently used evicted."""

    def __init__(self, max_keys: int, per_key: int):
        self.max_keys, self.per_key = max_keys, per_key
        self.grams: OrderedDict[int, OrderedDict[tuple[int, ...], None]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(c) for c in self.grams.values())

    def add(self, gram: Sequence[int]) -> None:
        """Insert (or refresh) gram[1:] under gram[0]."""
        key, cont = gram[0], tuple(gram[1:])
        conts = self.grams.get(key)
        if conts is None:
            conts = self.grams[key] = OrderedDict()
            if len(self.grams) > self.max_keys:
                self.grams.popitem(last=False)
        else:
            self.grams.move_to_end(key)
        conts[cont] = None
        conts.move_to_end(cont)
        if len(conts) > self.per_key:
            conts.popitem(last=False)

    def lookup(self, key: int) -> list[tuple[int, ...]]:
        """Continuations of `key`, most recent first; a hit counts as a use."""
        conts = self.grams.get(key)
        if conts is None:
            return []
        self.grams.move_to_end(key)
        return list(reversed(conts))


class LookaheadDrafter(Drafter):
    """Lookahead decoding: the pool's n-grams starting with the pending token, merged into a trie, plus the window."""

    name = "lookahead"

    config_class = LookaheadConfig

    def __init__(self, config: LookaheadConfig | None = None, **fields):
        """config: None for the machine kind's defaults (chosen at begin()); fields (window, ngram, guesses, ...)
        replace single values of either."""
        self.config, self.fields = config, fields
        self.cfg = with_fields(config or LookaheadConfig(), fields)
        self.pool = NgramPool(self.cfg.pool_keys, self.cfg.guesses)
        self.levels: list[list[int]] = []
        self.tree: Tree | None = None
        self.window_start = 0  # node index of level 0, column 0 in self.tree
        self.learned = 0  # state.tokens[:learned + N - 1] are in the pool

    def begin(self, state: DecodeState) -> None:
        c = self.cfg = with_fields(self.config or LookaheadConfig.for_machine(machine_kind(state.hidden)), self.fields)
        self.pool = NgramPool(c.pool_keys, c.guesses)
        self.learned = 0
        self._learn(state.tokens)
        rng = random.Random(len(state.tokens))
        self.levels = [[rng.choice(state.tokens) for _ in range(c.window)]]
        self.tree = None

    def _learn(self, tokens: list[int]) -> None:
        n = self.cfg.ngram
        for i in range(self.learned, len(tokens) - n + 1):
            self.pool.add(tokens[i : i + n])
        self.learned = max(self.learned, len(tokens) - n + 1)

    def propose(self, state: DecodeState) -> Tree:
        guesses = self.pool.lookup(state.tokens[-1])
        if not guesses and not self.cfg.always_window:
            self.tree = root_only(state)
            return self.tree
        parents, tokens = [-1], [state.tokens[-1]]
        children: list[dict[int, int]] = [{}]
        for cont in guesses:
            node = 0
            for t in cont:
                if t not in children[node]:
                    children[node][t] = len(parents)
                    parents.append(node)
                    tokens.append(t)
                    children.append({})
                node = children[node][t]
        w = self.cfg.window
        start = self.window_start = len(parents)
        for i, level in enumerate(self.levels):
            parents += [start + (i - 1) * w + j if i else (start + j - 1 if j else 0) for j in range(w)]
            tokens += level
        device = state.hidden.device
        self.tree = Tree(torch.tensor(tokens, device=device), shape_from_parents(parents, device))
        return self.tree

    def update(self, state: DecodeState) -> None:
        # the window ran unless this was a plain step or the loop verified another tree (the context was nearly full)
        if state.tree is self.tree and state.tree.shape.size > 1:
            self._jacobi_step(state.targets)
        self._learn(state.tokens)  # last: n-grams the backbone confirmed are the freshest in the pool

    def _jacobi_step(self, targets: list[int]) -> None:
        w = self.cfg.window
        top = self.window_start + (len(self.levels) - 1) * w
        out = targets[top : top + w]
        if len(self.levels) < self.cfg.ngram - 1:
            self.levels.append(out)
            return
        for j in range(w):
            self.pool.add([level[j] for level in self.levels] + [out[j]])
        self.levels = self.levels[1:] + [out]
