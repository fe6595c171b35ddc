"""The prompt-lookup branch: its union with a drafter's scored candidates, its running per-depth accuracy, the
verify-cost cut, and "+lookup" drafter names (lossless decoding with it: test_eagle.py, test_medusa.py)."""
from __future__ import annotations

import math

import pytest
import torch

from specdec.drafters import drafter_names, make_drafter
from specdec.drafters.base import DecodeState
from specdec.drafters.lookup import LookupBranch
from specdec.drafters.ngram import NgramConfig
from specdec.eagle import EagleConfig, EagleDraft
from specdec.medusa import MedusaConfig, MedusaHeads
from specdec.tree import best_tree

# "11 12" recurs: after the pending 12 the 2-gram "11 12" continues "13 14 15 16"
CONTEXT = [11, 12, 13, 14, 15, 16, 11, 12]


def begun_branch(draft_len: int = 4) -> LookupBranch:
    branch = LookupBranch(NgramConfig(max_ngram=2, min_ngram=1, draft_len=draft_len))
    branch.begin(DecodeState(tokens=list(CONTEXT), prompt_len=len(CONTEXT) - 1, hidden=torch.zeros(1, 4)))
    return branch


def candidates() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A drafter's tree: 13 (-0.1) and 20 (-2.0) at depth 1, 14 (-0.5) and 21 (-0.9) under 13."""
    return torch.tensor([13, 20, 14, 21]), torch.tensor([-1, -1, 0, 0]), torch.tensor([-0.1, -2.0, -0.5, -0.9])


def test_union_shares_common_nodes_and_keeps_the_higher_score():
    branch = begun_branch()
    tokens, parents, scores = branch.unite(CONTEXT, *candidates())
    assert branch.chain == (2, [13, 14, 15, 16])
    assert tokens.tolist() == [13, 20, 14, 21, 15, 16] and parents.tolist() == [-1, -1, 0, 0, 2, 4]
    half = math.log(0.5)  # no lookups scored yet: add-one smoothing gives 1/2 per depth
    assert scores.tolist() == pytest.approx([-0.1, -2.0, -0.5, -0.9, 3 * half, 4 * half])
    children = list(zip(parents.tolist(), tokens.tolist()))
    assert len(set(children)) == len(children)


def test_running_accuracy_scores_later_lookups():
    branch = begun_branch()
    branch.unite(CONTEXT, *candidates())
    # the backbone accepted 13 14 and then said 9: depths 1-2 right, depth 3 wrong, depth 4 never reached
    branch.update(DecodeState(tokens=CONTEXT + [13, 14, 9], prompt_len=7, hidden=torch.zeros(3, 4)))
    assert branch.tries[2] == [1, 1, 1, 0] and branch.hits[2] == [1, 1, 0, 0] and branch.chain is None
    _, _, scores = branch.unite(CONTEXT + [13, 14, 9, 11, 12], torch.tensor([99]), torch.tensor([-1]),
                                torch.tensor([-3.0]))
    per_depth = [math.log(2 / 3), math.log(2 / 3), math.log(1 / 3), math.log(1 / 2)]
    assert scores[1:].tolist() == pytest.approx([sum(per_depth[: d + 1]) for d in range(4)])


def test_no_match_leaves_the_candidates_alone():
    branch = begun_branch()
    got = branch.unite([1, 2, 3], *candidates())
    assert all(torch.equal(a, b) for a, b in zip(got, candidates())) and branch.chain is None


@pytest.mark.parametrize("cost,size", [(None, 5), ([1.0] * 6, 5), ([1.0, 1.0, 1.0, 10.0, 10.0, 10.0], 3),
                                       ([1.0, 10.0, 10.0, 10.0, 10.0, 10.0], 1)])
def test_best_tree_keeps_the_prefix_worth_its_cost(cost, size):
    tokens, parents, scores = (torch.tensor([5, 6, 7, 8]), torch.tensor([-1, 0, 1, -1]),
                               torch.tensor([-0.1, -0.2, -0.3, -3.0]))
    tree = best_tree(4, tokens, parents, scores, 4, None if cost is None else torch.tensor(cost))
    assert tree.shape.size == size and tree.tokens[0] == 4
    assert tree.tokens.tolist()[:size] == [4, 5, 6, 7, 8][:size] and list(tree.shape.parents) == [-1, 0, 1, 2, 0][:size]


def test_lookup_names_exist_only_for_scoring_drafters(tiny_models):
    model = tiny_models["llama"].load()
    draft = EagleDraft(EagleConfig(model.args.dim, model.args.vocab_size), model.args)
    heads = MedusaHeads(MedusaConfig(model.args.dim, model.args.vocab_size, num_heads=2))
    for name, kw in (("eagle2+lookup", {"weights": draft}), ("eagle+lookup", {"weights": draft}),
                     ("medusa+lookup", {"weights": heads}), ("medusa-trigram+lookup", {"weights": heads})):
        drafter = make_drafter(name, model=model, **kw)
        assert drafter.name == name and drafter.lookup is not None
        assert make_drafter(name.removesuffix("+lookup"), model=model, **kw).lookup is None
    names = drafter_names()
    assert {"eagle+lookup", "eagle2+lookup", "eagle3+lookup", "medusa+lookup", "medusa-trigram+lookup"} <= set(names)
    assert "ngram+lookup" not in names and "lookahead+lookup" not in names
    with pytest.raises(ValueError, match="takes no prompt-lookup branch"):
        make_drafter("ngram+lookup")
    with pytest.raises(ValueError, match="unknown; available: .*eagle2\\+lookup"):
        make_drafter("eagle4+lookup")
