"""Draft trees: shapes from Medusa-style choice lists, chains or parent arrays, and their verify buffers."""
from __future__ import annotations

import ast
import heapq
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor


@dataclass(frozen=True)
class TreeShape:
    """Verify buffers of one tree shape; node 0 is the root (the pending token), parents precede children."""

    parents: tuple[int, ...]
    depth: Tensor  # [k] depth of each node, root 0
    mask: Tensor  # [k, k] bool: node i attends to node j (j is i or an ancestor of i)
    paths: Tensor  # [P, max_depth + 1] node indices from root to each leaf, padded with -1
    chain: bool  # every node's parent is the node before it

    @property
    def size(self) -> int:
        return len(self.parents)

    def to(self, device: torch.device | str) -> "TreeShape":
        return TreeShape(self.parents, self.depth.to(device), self.mask.to(device), self.paths.to(device), self.chain)


@dataclass
class Tree:
    """A drafted tree: node tokens (tokens[0] is the root) over a shape."""

    tokens: Tensor
    shape: TreeShape


@lru_cache(maxsize=256)
def _shape_cpu(parents: tuple[int, ...]) -> TreeShape:
    k = len(parents)
    if k == 0 or parents[0] != -1:
        raise ValueError("a tree needs a root: parents[0] must be -1")
    depth = [0] * k
    ancestors: list[list[int]] = [[0]]
    has_child = [False] * k
    for i in range(1, k):
        p = parents[i]
        if not 0 <= p < i:
            raise ValueError(f"node {i} has parent {p}: parents must precede their children")
        depth[i] = depth[p] + 1
        ancestors.append(ancestors[p] + [i])
        has_child[p] = True
    mask = torch.zeros(k, k, dtype=torch.bool)
    for i, path in enumerate(ancestors):
        mask[i, path] = True
    leaves = [ancestors[i] for i in range(k) if not has_child[i]]
    width = max(depth) + 1
    paths = torch.full((len(leaves), width), -1, dtype=torch.long)
    for r, path in enumerate(leaves):
        paths[r, : len(path)] = torch.tensor(path)
    chain = all(parents[i] == i - 1 for i in range(1, k))
    return TreeShape(parents, torch.tensor(depth), mask, paths, chain)


@lru_cache(maxsize=256)
def _shape_on(parents: tuple[int, ...], device: str) -> TreeShape:
    return _shape_cpu(parents).to(device)


def shape_from_parents(parents: list[int] | tuple[int, ...] | Tensor, device: torch.device | str = "cpu") -> TreeShape:
    """The (cached) shape of a tree given each node's parent index (-1 for the root)."""
    if isinstance(parents, Tensor):
        parents = parents.tolist()
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in parents):
        raise ValueError(f"tree parents must be ints, got {list(parents)}")
    parents = tuple(parents)
    device = str(device)
    return _shape_cpu(parents) if device == "cpu" else _shape_on(parents, device)


def chain_parents(n_drafts: int) -> tuple[int, ...]:
    """Parents of a root followed by a chain of n_drafts nodes."""
    return tuple(range(-1, n_drafts))


def parse_choices(spec: str | list) -> list[tuple[int, ...]]:
    """Parse a Medusa choice list, given as a list or its string form ("[[0], [1], [0, 0]]")."""
    if isinstance(spec, str):
        try:
            spec = ast.literal_eval(spec)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"unknown tree spec {spec!r}: expected a choice list like [[0], [1], [0, 0]]") from e
    if not isinstance(spec, (list, tuple)) or not all(
        isinstance(c, (list, tuple)) and len(c) > 0
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in c) for c in spec
    ):
        raise ValueError(f"unknown tree spec {spec!r}: expected a list of non-empty lists of non-negative ints")
    choices = sorted({tuple(c) for c in spec}, key=lambda c: (len(c), c))
    known = set(choices)
    for c in choices:
        if len(c) > 1 and c[:-1] not in known:
            raise ValueError(f"tree spec: choice {list(c)} has no parent {list(c[:-1])}")
    return choices


def parents_from_choices(choices: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Parents of the tree whose nodes are the root followed by `choices` in (depth, rank) order."""
    index = {(): 0}
    parents = [-1]
    for i, c in enumerate(choices, start=1):
        if c[:-1] not in index:
            raise ValueError(f"tree spec: choice {list(c)} comes before its parent {list(c[:-1])}")
        index[c] = i
        parents.append(index[c[:-1]])
    return tuple(parents)


def sparse_tree(accuracies: list[list[float]], n_nodes: int) -> list[tuple[int, ...]]:
    """The Medusa accuracy-optimal tree: the n_nodes choices with the largest path probability.

    accuracies[i][r] is how often head i's rank-r token is right; a choice's probability is the product
    along its path, and the sum over chosen nodes is the expected number of accepted drafts.
    """
    if n_nodes < 0 or not accuracies or not all(accuracies):
        raise ValueError("sparse_tree needs per-head rank accuracies and n_nodes >= 0")
    frontier = [(-accuracies[0][0], (0,))]
    chosen: list[tuple[int, ...]] = []
    while frontier and len(chosen) < n_nodes:
        neg, choice = heapq.heappop(frontier)
        chosen.append(choice)
        depth, rank = len(choice), choice[-1]
        if depth < len(accuracies):  # first child
            heapq.heappush(frontier, (neg * accuracies[depth][0], choice + (0,)))
        if rank + 1 < len(accuracies[depth - 1]):  # next sibling: same parent, next rank
            prob = -neg / max(accuracies[depth - 1][rank], 1e-12) * accuracies[depth - 1][rank + 1]
            heapq.heappush(frontier, (-prob, choice[:-1] + (rank + 1,)))
    return sorted(chosen, key=lambda c: (len(c), c))
