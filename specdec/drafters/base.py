"""The drafter protocol: propose a tree from the decode state, learn from what was accepted."""
from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from specdec.tree import Tree, shape_from_parents


@dataclass
class DecodeState:
    """What a drafter sees: all tokens so far (the last one is pending, not yet in the cache), the final hidden
    states (plus requested layers) of the nodes the last step committed, and the last verified tree with the
    backbone's greedy next token (argmax, also when sampling) at each of its nodes (`targets`, on the host:
    Jacobi-style drafters use them)."""

    tokens: list[int]
    prompt_len: int
    hidden: Tensor
    layers: dict[int, Tensor] = field(default_factory=dict)
    accepted: Tensor | None = None
    tree: Tree | None = None
    targets: list[int] = field(default_factory=list)


class Drafter(ABC):
    """Base drafter: override propose (and begin/update when it keeps state).
    One instance serves many generations, so begin() must reset all per-generation state."""

    name = "drafter"
    hidden_layers: tuple[int, ...] = ()

    def begin(self, state: DecodeState) -> None:
        """Called once after prefill."""

    @abstractmethod
    def propose(self, state: DecodeState) -> Tree:
        """Return a tree whose root is state.tokens[-1]."""

    def update(self, state: DecodeState) -> None:
        """Called after each committed step."""

    @staticmethod
    def propose_batch(drafters: list["Drafter"], states: list[DecodeState]) -> list[Tree]:
        """Trees for rows decoded together (specdec.batch), one drafter of this class per row: by default each row on
        its own; a drafter that can draft many rows in one pass overrides this."""
        return [d.propose(s) for d, s in zip(drafters, states)]

    def set_rows(self, rows: int) -> None:
        """Size trees for `rows` sequences verified together (specdec.batch): a node then costs more. Drafters that cut
        their trees by verify cost override this."""

    def fork(self) -> "Drafter":
        """A drafter for another sequence decoded alongside this one (a batch row): it shares this one's weights
        (modules, parameters, weight functions) and owns a copy of everything else, its per-generation state."""
        shared = {id(v): v for v in vars(self).values()
                  if isinstance(v, (nn.Module, nn.Parameter)) or (callable(v) and not isinstance(v, Drafter))}
        return copy.deepcopy(self, shared)


def with_fields(config, fields: dict):
    """`config` (a drafter's config dataclass) with `fields` replacing its values; unknown names are an error that
    lists the known ones."""
    known = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"{type(config).__name__} has no option {', '.join(unknown)}; options: {', '.join(known)}")
    return dataclasses.replace(config, **fields)


def root_only(state: DecodeState) -> Tree:
    """The one-node tree of plain decoding."""
    device = state.hidden.device
    return Tree(torch.tensor([state.tokens[-1]], device=device), shape_from_parents((-1,), device))


class NoDrafter(Drafter):
    """Plain decoding through the same loop: every tree is the root alone."""

    name = "vanilla"

    def propose(self, state: DecodeState) -> Tree:
        return root_only(state)
