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


# Per-rank accuracies assumed for heads that carry no measured ones (official checkpoints).
PRIOR_TOP = (0.60, 0.12, 0.06, 0.04, 0.03, 0.02, 0.015, 0.01, 0.01, 0.01)
PRIOR_DECAY = 0.75


def head_tree(tree: str | int | list, meta: dict, num_heads: int, vocab: int,
              auto_nodes: int) -> list[tuple[int, ...]]:
    """A static tree for per-depth drafters (Medusa heads, EAGLE-1): a choice list as given, or the sparse-optimal tree
    of a node count ("auto": auto_nodes) under the heads' measured rank accuracies (meta["eval"]), else a prior."""
    if isinstance(tree, (list, tuple)) or (isinstance(tree, str) and tree.strip().startswith("[")):
        choices = parse_choices(tree)
        if not choices:
            raise ValueError("tree spec [] drafts nothing: give at least one choice, e.g. [[0]], or use plain decoding")
        if max(len(c) for c in choices) > num_heads:
            raise ValueError(f"tree spec is {max(len(c) for c in choices)} deep but there are only {num_heads} heads")
        if max(max(c) for c in choices) >= vocab:
            raise ValueError(f"tree spec asks for rank {max(max(c) for c in choices)} "
                             f"of a {vocab}-token draft vocabulary")
        return choices
    if isinstance(tree, str) and tree.isdigit():
        tree = int(tree)
    if tree == "auto":
        tree = auto_nodes
    if not isinstance(tree, int) or tree < 1:
        raise ValueError(f"unknown tree spec {tree!r}: "
                         "use 'auto', a node count, or a choice list like [[0], [1], [0, 0]]")
    return sparse_tree([row[:vocab] for row in rank_accuracies(meta, num_heads)], tree)


def rank_accuracies(meta: dict, num_heads: int) -> list[list[float]]:
    """Per head, how often its rank-r token is right: measured (saved with the heads), else PRIOR_TOP decayed."""
    acc = meta.get("eval", {}).get("rank_accuracy")
    return acc[:num_heads] if acc else [[p * PRIOR_DECAY**i for p in PRIOR_TOP] for i in range(num_heads)]


def best_tree(root: int, tokens: Tensor, parents: Tensor, scores: Tensor, limit: int, cost: Tensor | None) -> Tree:
    """The `limit` best-scored candidates (parents first), cut to the prefix with the most expected tokens per unit of
    verify cost (`cost[k - 1]`: k nodes; None: no cut), as a tree under `root`."""
    order = scores.sort(descending=True, stable=True).indices[:limit]  # stable: parents before children
    size = torch.tensor([len(order)], device=order.device)
    if cost is not None:
        gain = 1 + torch.cat((scores.new_zeros(1), scores[order].exp().cumsum(0)))
        size = (gain / cost[: len(order) + 1]).argmax().view(1)
    n, *rest = torch.cat((size, order, parents[order])).tolist()  # the step's one device-to-host transfer
    device = tokens.device
    parent_of = dict(zip(rest[:n], rest[len(order) : len(order) + n]))
    kept = sorted(parent_of)  # candidate order: parents first; none kept: the root alone
    node = {c: i for i, c in enumerate(kept, start=1)}
    index = torch.tensor(kept, dtype=torch.long, device=device)
    node_tokens = torch.cat((torch.tensor([root], device=device), tokens[index]))
    return Tree(node_tokens, shape_from_parents([-1] + [node.get(parent_of[c], 0) for c in kept], device))
