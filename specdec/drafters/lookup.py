"""A prompt-lookup branch for drafters that score their candidates (name + "+lookup", e.g. "eagle2+lookup").

The context's best lookup continuation (longest matching n-gram, most recent) is united with the drafter's candidate
tree; a token both propose is one node and keeps the higher score. Lookup token d is scored by how often this
generation's earlier lookups with the same match length were the backbone's token at depth d, given the ones before
it were (smoothed by PRIOR pseudo-counts), so the verify-cost cut keeps a branch only while it has been paying off.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from specdec.drafters.base import DecodeState
from specdec.drafters.ngram import NgramConfig, NgramDrafter

PRIOR = (1, 1)  # pseudo (hits, misses) per depth before a generation's first lookups are scored


class LookupBranch:
    """Prompt lookup's best continuation, scored by its running per-depth accuracy, for a scoring drafter to unite."""

    def __init__(self, config: NgramConfig):
        self.ngram = NgramDrafter(replace(config, max_branches=1))
        self.draft_len = config.draft_len
        self.hits = [[0] * config.draft_len for _ in range(config.max_ngram + 1)]  # [match length][depth]
        self.tries = [[0] * config.draft_len for _ in range(config.max_ngram + 1)]
        self.chain: tuple[int, list[int]] | None = None

    def begin(self, state: DecodeState) -> None:
        """Index the prompt; forget the previous generation's accuracies."""
        self.ngram.begin(state)
        for row in self.hits + self.tries:
            row[:] = [0] * len(row)
        self.chain = None

    def update(self, state: DecodeState) -> None:
        """Index the new tokens and score the last proposed continuation against them."""
        self.ngram.update(state)
        if self.chain is not None:
            n, chain = self.chain
            taken = state.tokens[-state.hidden.shape[0] :]  # the accepted drafts and the bonus token
            for depth, t in enumerate(chain[: len(taken)]):
                self.tries[n][depth] += 1
                if t != taken[depth]:
                    break
                self.hits[n][depth] += 1
            self.chain = None

    def unite(self, context: list[int], tokens: Tensor, parents: Tensor,
              scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Candidates (tokens, parent candidate or -1, path log-probability; parents first) plus the continuation."""
        found = self.ngram.continuations(context)
        if not found:
            return tokens, parents, scores
        n, chain = self.chain = found[0]
        k = len(tokens)  # one device-to-host transfer; float64 holds every token id exactly
        host = torch.cat((tokens.double(), parents.double(), scores.double())).tolist()
        toks, pars, scs = [int(x) for x in host[:k]], [int(x) for x in host[k : 2 * k]], host[2 * k :]
        child = {(p, t): i for i, (p, t) in enumerate(zip(pars, toks))}  # siblings carry distinct tokens
        node, score = -1, 0.0
        for depth, t in enumerate(chain):
            score += math.log((self.hits[n][depth] + PRIOR[0]) / (self.tries[n][depth] + sum(PRIOR)))
            i = child.get((node, t))
            if i is None:
                i = child[(node, t)] = len(toks)
                toks.append(t)
                pars.append(node)
                scs.append(score)
            else:  # both components fall along a path, so a parent still outscores its children
                scs[i] = max(scs[i], score)
            node = i
        device = tokens.device
        return (torch.tensor(toks, device=device), torch.tensor(pars, device=device),
                torch.tensor(scs, device=device, dtype=scores.dtype))


def lookup_branch(lookup: bool | NgramConfig, kind: str) -> LookupBranch | None:
    """None for False; the machine kind's n-gram defaults for True; else the given config."""
    if not lookup:
        return None
    return LookupBranch(NgramConfig.for_machine(kind) if lookup is True else lookup)
