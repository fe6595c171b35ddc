"""Tree shapes: choice lists -> parents -> depth / attention mask / root-to-leaf paths, and bad specs."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specdec.tree import chain_parents, parents_from_choices, parse_choices, shape_from_parents

# Medusa's small default-style tree, written out with its expected buffers by hand
CHOICES = [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0], [2]]


def test_parse_choices_orders_by_depth_then_rank_and_dedups():
    got = parse_choices(str(CHOICES + [[0, 1]]))
    assert got == [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]
    assert parse_choices(CHOICES) == got  # list and string forms agree
    assert parse_choices(tuple(tuple(c) for c in CHOICES)) == got


def test_parents_depth_mask_paths_of_a_choice_tree():
    parents = parents_from_choices(parse_choices(CHOICES))
    # nodes: 0 root, 1 (0,), 2 (1,), 3 (2,), 4 (0,0), 5 (0,1), 6 (1,0), 7 (0,0,0)
    assert parents == (-1, 0, 0, 0, 1, 1, 2, 4)
    shape = shape_from_parents(parents)
    assert shape.size == 8
    assert shape.depth.tolist() == [0, 1, 1, 1, 2, 2, 2, 3]
    assert not shape.chain
    expected_mask = torch.zeros(8, 8, dtype=torch.bool)
    for i, ancestors in enumerate([[0], [0, 1], [0, 2], [0, 3], [0, 1, 4], [0, 1, 5], [0, 2, 6], [0, 1, 4, 7]]):
        expected_mask[i, ancestors] = True
    assert torch.equal(shape.mask, expected_mask)
    assert shape.paths.tolist() == [[0, 3, -1, -1], [0, 1, 5, -1], [0, 2, 6, -1], [0, 1, 4, 7]]


def test_chain_and_root_only():
    shape = shape_from_parents(chain_parents(4))
    assert shape.parents == (-1, 0, 1, 2, 3)
    assert shape.chain
    assert torch.equal(shape.mask, torch.ones(5, 5, dtype=torch.bool).tril())
    assert shape.paths.tolist() == [[0, 1, 2, 3, 4]]
    root = shape_from_parents([-1])
    assert root.chain and root.size == 1
    assert root.paths.tolist() == [[0]] and root.depth.tolist() == [0]
    # a tensor of parents works too and gives the same (cached) shape
    assert shape_from_parents(torch.tensor([-1, 0, 1, 2, 3])) is shape


def test_empty_choice_list_is_root_only():
    assert parse_choices("[]") == []
    assert parents_from_choices([]) == (-1,)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("mc_sim_7b_63", "unknown tree spec 'mc_sim_7b_63'"),
        ("not a tree", "unknown tree spec"),
        ("[[0], [1]", "unknown tree spec"),
        ("5", "unknown tree spec"),
        ("[[0], []]", "non-empty lists of non-negative ints"),
        ("[[0], [-1]]", "non-negative"),
        ("[[0], [0.5]]", "non-negative ints"),
        ([[0], "a"], "unknown tree spec"),
        ("[[0], [1, 0, 0]]", r"choice \[1, 0, 0\] has no parent \[1, 0\]"),
        ([[1, 2]], r"has no parent \[1\]"),
    ],
)
def test_parse_choices_rejects_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_choices(spec)


@pytest.mark.parametrize(
    "parents, match",
    [
        ([], "needs a root"),
        ([0, 0], "needs a root"),
        ([-1, -1], "node 1 has parent -1"),
        ([-1, 0, 2], "node 2 has parent 2"),
        ([-1, 0, 3, 1], "node 2 has parent 3"),
        ([-1, 0, "x"], "'x'"),
        ([-1, 0, 0.5], "0.5"),  # silently truncating to parent 0 would draft a different tree
    ],
)
def test_bad_parent_arrays_raise(parents, match):
    with pytest.raises(ValueError, match=match):
        shape_from_parents(parents)


@st.composite
def parent_arrays(draw):
    k = draw(st.integers(1, 40))
    return [-1] + [draw(st.integers(0, i - 1)) for i in range(1, k)]


@settings(max_examples=80, deadline=None)
@given(parent_arrays())
def test_shape_matches_brute_force(parents):
    shape = shape_from_parents(parents)
    k = len(parents)

    def ancestors(i):  # i and every ancestor, root first
        out = []
        while i >= 0:
            out.append(i)
            i = parents[i]
        return out[::-1]

    assert shape.size == k
    assert shape.depth.tolist() == [len(ancestors(i)) - 1 for i in range(k)]
    for i in range(k):
        assert shape.mask[i].nonzero().flatten().tolist() == ancestors(i)
    leaves = [i for i in range(k) if i not in parents[1:]]
    rows = [[n for n in row if n >= 0] for row in shape.paths.tolist()]
    assert sorted(rows) == sorted(ancestors(leaf) for leaf in leaves)
    assert shape.paths.shape == (len(leaves), max(shape.depth.tolist()) + 1)
    for row in shape.paths.tolist():  # padding only at the end
        n = sum(x >= 0 for x in row)
        assert all(x == -1 for x in row[n:])
    assert shape.chain == (parents == list(range(-1, k - 1)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=4), max_size=30))
def test_choices_round_trip(raw):
    # close the random choice list under prefixes, so it is a valid tree
    closed = {tuple(c[:j]) for c in raw for j in range(1, len(c) + 1)}
    choices = parse_choices([list(c) for c in closed])
    assert len(choices) == len(closed)
    parents = parents_from_choices(choices)
    shape = shape_from_parents(parents)
    # node i + 1 is choices[i]: its depth is len(choice) and its parent is the choice minus its last entry
    for i, c in enumerate(choices, start=1):
        assert shape.depth[i] == len(c)
        p = parents[i]
        assert (choices[p - 1] if p > 0 else ()) == c[:-1]
