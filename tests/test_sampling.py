"""Sampling: every drafter's first sampled tokens follow plain sampling's exact distribution (chi-square against
enumeration on a tiny-vocabulary model), wrong acceptance rules fail the same test, seeds reproduce, temperature 0
is greedy, and typical acceptance runs and is labelled lossy."""
from __future__ import annotations

import functools
import itertools
import os
import random
import sys
from collections import Counter
from dataclasses import replace
from typing import Callable

import pytest
import torch
from torch import Tensor

from conftest import randomize_
from specdec.decode import decode
from specdec.drafters import LookaheadConfig, LookaheadDrafter, MedusaDrafter, NgramConfig, NgramDrafter, NoDrafter
from specdec.drafters.base import DecodeState, Drafter
from specdec.drafters.eagle import EagleDrafter, eagle2
from specdec.medusa import MedusaConfig, MedusaHeads
from specdec.sampling import SamplingConfig, sample, target_probs, tree_sample_accept
from specdec.tree import Tree, TreeShape, shape_from_parents
from test_decode import PROMPTS, OracleTreeDrafter, reference
from test_eagle import random_draft
from test_eagle3 import random_eagle3

pytestmark = pytest.mark.usefixtures("one_thread")

V = 8  # vocabulary of the statistical tests' model: 3 tokens have 512 outcomes, enumerable exactly
LENGTH = 3  # sampled tokens per draw: the prefill's token, then tokens drafted and verified by the tree
DRAWS = 2000
ALPHA = 1e-3  # chi-square p-value threshold: exact rules stay above, broken ones fall below
# the model's own greedy text after [1]: repetitive, so prompt lookup and the lookahead pool draft likely tokens
PROMPT = [1, 2, 5, 6, 3, 6, 2, 0, 2, 2, 2, 2, 2]
CONFIGS = {"t1": SamplingConfig(temperature=1.0), "t0.7-top4": SamplingConfig(temperature=0.7, top_k=4),
           "t1.3-p0.9": SamplingConfig(temperature=1.3, top_p=0.9)}
DRAFTERS = ("vanilla", "ngram", "lookahead", "medusa", "eagle", "eagle2", "eagle2+lookup", "eagle3", "eagle3+lookup",
            "oracle-tree")
# by default each drafter meets one configuration (every configuration is met); SPECDEC_SLOW=1 runs all pairs
PAIRS = [(d, c) for d in DRAFTERS for c in CONFIGS] if os.environ.get("SPECDEC_SLOW") else \
    [(d, list(CONFIGS)[i % len(CONFIGS)]) for i, d in enumerate(DRAFTERS)]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 2-layer Llama with an 8-token vocabulary: the HF model (for exact probabilities) and our runner."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from specdec.backbone import load_transformer

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=V, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    randomize_(hf, 7)
    path = tmp_path_factory.mktemp("tiny-v8")
    hf.save_pretrained(path, safe_serialization=True)
    model = load_transformer(path)
    model.setup_cache(64)
    return hf, model


@torch.no_grad()
def exact_distribution(hf, prompt: list[int], cfg: SamplingConfig) -> dict[tuple[int, ...], float]:
    """P(first LENGTH tokens) of plain sampling, by enumerating every prefix with the HF model."""
    seqs = [list(s) for s in itertools.product(range(V), repeat=LENGTH - 1)]
    logits = hf(torch.tensor([prompt + s for s in seqs])).logits[:, -LENGTH:]  # next-token logits after each prefix
    probs = target_probs(logits.reshape(-1, V), cfg).view(len(seqs), LENGTH, V).double()
    dist = {}
    for s, p in zip(seqs, probs):
        for last in range(V):
            toks = tuple(s) + (last,)
            dist[toks] = float(torch.prod(torch.stack([p[i, toks[i]] for i in range(LENGTH)])))
    return dist


def chi_square_p(counts: Counter, dist: dict[tuple[int, ...], float], n: int) -> float:
    """Pearson's test of counts against dist, cells with expected count < 5 pooled; 0 if an impossible outcome
    occurred."""
    if any(dist.get(k, 0.0) == 0.0 for k in counts):
        return 0.0
    stat, pooled_obs, pooled_exp, cells = 0.0, 0, 0.0, 0
    for k, p in dist.items():
        if p * n >= 5:
            stat += (counts[k] - p * n) ** 2 / (p * n)
            cells += 1
        else:
            pooled_obs, pooled_exp = pooled_obs + counts[k], pooled_exp + p * n
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    dof = torch.tensor((cells - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, torch.tensor(stat / 2, dtype=torch.float64)))


class OracleTreeSampler(Drafter):
    """Adversarial trees independent of the sampler: 1-4 children per node, mostly the target's likeliest tokens
    (so acceptance and rejection both happen often, and siblings repeat), up to depth 3; a fixed seed per generation."""

    name = "oracle-tree"

    def __init__(self, ranking: Callable[[tuple[int, ...]], list[int]], seed: int = 0):
        self.ranking, self.seed = ranking, seed

    def begin(self, state: DecodeState) -> None:
        self.rng = random.Random(self.seed)

    def propose(self, state: DecodeState) -> Tree:
        rng = self.rng
        parents, tokens, prefix = [-1], [state.tokens[-1]], [tuple(state.tokens)]
        frontier = [0]
        while frontier:
            node = frontier.pop(0)
            ranked = self.ranking(prefix[node])
            for _ in range(rng.randint(1, 4) if len(prefix[node]) - len(state.tokens) < 3 else 0):
                parents.append(node)
                tokens.append(ranked[rng.choice((0, 0, 1, 1, 2, 3, rng.randrange(V)))])
                prefix.append(prefix[node] + (tokens[-1],))
                if rng.random() < 0.6:
                    frontier.append(len(parents) - 1)
        return Tree(torch.tensor(tokens), shape_from_parents(parents))


def oracle_ranking(hf) -> Callable[[tuple[int, ...]], list[int]]:
    """The HF model's tokens by falling logit after a prefix (cached)."""

    @functools.cache
    def ranking(prefix: tuple[int, ...]) -> list[int]:
        with torch.no_grad():
            return hf(torch.tensor([prefix])).logits[0, -1].argsort(descending=True).tolist()

    return ranking


def make(name: str, small) -> Drafter:
    hf, model = small
    if name == "vanilla":
        return NoDrafter()
    if name == "ngram":
        return NgramDrafter(NgramConfig(max_ngram=2, min_ngram=1, draft_len=3, max_branches=3))
    if name == "lookahead":
        return LookaheadDrafter(LookaheadConfig(window=3, ngram=3, guesses=3))
    if name == "medusa":
        torch.manual_seed(3)
        heads = MedusaHeads(MedusaConfig(model.args.dim, V, num_heads=3))
        with torch.no_grad():
            for p in heads.parameters():
                p.normal_(0, 0.3)
        tree = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 1, 0]]
        return MedusaDrafter(model, heads.eval(), tree)
    if name == "eagle":  # verify_cost={}: never cut the tree to a plain step
        return EagleDrafter(model, random_draft(model, seed=3), tree=[[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]],
                            verify_cost={})
    if name.startswith(("eagle2", "eagle3")):
        lookup = NgramConfig(max_ngram=2, min_ngram=1, draft_len=3) if name.endswith("+lookup") else False
        draft = random_draft(model, seed=4) if name.startswith("eagle2") else random_eagle3(model, 4, 6, aux=[1, 1])
        return eagle2(model, draft, depth=3, top_k=3, total_tokens=8, verify_cost={}, lookup=lookup)
    return OracleTreeSampler(oracle_ranking(hf))


def draw(model, drafter: Drafter, cfg: SamplingConfig, n: int = DRAWS) -> tuple[Counter, list[int]]:
    """n generations of LENGTH tokens, seeds 0..n-1; the outcome counts and the tokens emitted per verify step."""
    counts, accepted = Counter(), []
    for seed in range(n):
        res = decode(model, PROMPT, drafter, max_new_tokens=LENGTH, sampling=replace(cfg, seed=seed))
        counts[tuple(res.tokens)] += 1
        accepted += res.stats.accepted
    return counts, accepted


# ---------------------------------------------------------------- wrong rules, to show the test has teeth


def host_walk(tokens: Tensor, probs: Tensor, shape: TreeShape, generator: torch.Generator, renormalise: bool = True,
              residual: bool = True, first_child: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The walk written plainly on the host; with the defaults it is the exact rule, the flags break it."""
    toks, parents = tokens.tolist(), shape.parents
    node = 0
    while True:
        kids = [i for i in range(1, len(parents)) if parents[i] == node]
        r = probs[node].clone()
        nxt = None
        for c in kids:
            if first_child or torch.rand((), generator=generator) * (r.sum() if renormalise else 1) < r[toks[c]]:
                nxt = c
                break
            if residual:
                r[toks[c]] = 0
        if nxt is None:
            bonus = sample(r if r.sum() > 0 else probs[node], generator)
            break
        node = nxt
    best = next(i for i, row in enumerate(shape.paths.tolist()) if node in row)
    return torch.tensor(best), shape.depth[node], bonus


RULES = {
    "exact-host": host_walk,
    "no-residual": lambda *a: host_walk(*a, residual=False),  # after rejections, the bonus comes from p itself
    "unnormalised": lambda *a: host_walk(*a, renormalise=False),  # later siblings accepted with p(c), not r(c)
    "first-child": lambda *a: host_walk(*a, first_child=True),  # always accept the first child
}


# ---------------------------------------------------------------- the statistical tests


@pytest.mark.parametrize("drafter,config", PAIRS)
def test_sampled_tokens_follow_plain_sampling(small, drafter, config):
    hf, model = small
    cfg = CONFIGS[config]
    counts, accepted = draw(model, make(drafter, small), cfg)
    p = chi_square_p(counts, exact_distribution(hf, PROMPT, cfg), DRAWS)
    assert p > ALPHA, f"{drafter} {config}: chi-square p = {p:.2e}"
    if drafter != "vanilla":
        assert max(accepted) > 1, "no draft was ever accepted: the test would not exercise acceptance"


@pytest.mark.parametrize("rule", list(RULES))
def test_wrong_rules_fail_the_same_test(small, monkeypatch, rule):
    hf, model = small
    # the package re-exports decode()
    monkeypatch.setattr(sys.modules["specdec.decode"], "tree_sample_accept", RULES[rule])
    cfg = CONFIGS["t1"]
    counts, _ = draw(model, make("oracle-tree", small), cfg)
    p = chi_square_p(counts, exact_distribution(hf, PROMPT, cfg), DRAWS)
    if rule == "exact-host":
        assert p > ALPHA, f"the plain host walk is exact, yet p = {p:.2e}"
    else:
        assert p < ALPHA, f"the wrong rule {rule!r} passed (p = {p:.2e}): the test has no teeth"


# ---------------------------------------------------------------- seeds, greedy, typical acceptance, the transform


@pytest.mark.parametrize("drafter", DRAFTERS)
def test_same_seed_same_output(small, drafter):
    _, model = small
    d = make(drafter, small)
    runs = [decode(model, PROMPT, d, 24, sampling=SamplingConfig(temperature=1.0, seed=s)).tokens for s in (5, 5, 6)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_temperature_zero_is_greedy(tiny_models, small):
    _, tiny = small
    near_zero = decode(tiny, PROMPT, make("medusa", small), 32, sampling=SamplingConfig(temperature=1e-4, seed=0))
    assert near_zero.tokens == decode(tiny, PROMPT, NoDrafter(), 32).tokens
    model = tiny_models["llama"].load()
    for p in range(len(PROMPTS)):
        ref = reference(tiny_models, "llama", p, 40)
        drafter = OracleTreeDrafter(PROMPTS[p] + ref + [0] * 16, seed=p, max_nodes=16, p_true=0.8, chain_bias=0.5)
        res = decode(model, PROMPTS[p], drafter, 40, sampling=SamplingConfig(temperature=0.0, seed=1, top_k=3))
        assert res.tokens == ref


def test_typical_acceptance_runs_and_is_labelled_lossy(small):
    _, model = small
    cfg = SamplingConfig(temperature=0.7, seed=0, lossy_typical_acceptance=True)
    assert not cfg.lossless and "LOSSY" in SamplingConfig.__doc__
    res = decode(model, PROMPT, make("medusa", small), 32, sampling=cfg)
    assert len(res.tokens) == 32 and all(0 <= t < V for t in res.tokens)
    assert res.stats.steps < 31, "typical acceptance never accepted a draft"


def test_target_probs_temperature_top_k_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p = target_probs(logits, SamplingConfig(temperature=0.5))
    torch.testing.assert_close(p, (logits / 0.5).softmax(-1))
    assert target_probs(logits, SamplingConfig(temperature=1.0, top_k=2))[0, 2:].eq(0).all()
    full = logits.softmax(-1)[0]
    p = target_probs(logits, SamplingConfig(temperature=1.0, top_p=float(full[0]) + 1e-3))[0]
    torch.testing.assert_close(p[:2], full[:2] / full[:2].sum())
    assert p[2:].eq(0).all()
    assert target_probs(logits, SamplingConfig(temperature=1.0, top_p=0.01))[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        SamplingConfig(temperature=-1.0)


def test_device_rule_on_a_fixed_tree():
    """A repeated sibling is never accepted; the first emitted token follows the root's p, and the token after an
    accepted node 1 follows node 1's p."""
    shape = shape_from_parents([-1, 0, 0, 0, 1, 1, 4])
    tokens = torch.tensor([0, 2, 2, 1, 0, 3, 1])  # node 2 repeats node 1's token: once rejected, its mass is 0
    probs = (2 * torch.randn(7, 4, generator=torch.Generator().manual_seed(0))).softmax(-1)
    g = torch.Generator().manual_seed(1)
    first, after_node1 = Counter(), Counter()
    for _ in range(4000):
        best, n, bonus = tree_sample_accept(tokens, probs, shape, g)
        nodes = shape.paths[best, 1 : int(n) + 1].tolist()
        emitted = tokens[nodes].tolist() + [int(bonus)]
        assert 2 not in nodes, "a repeated (already rejected) token was accepted"
        first[(emitted[0],)] += 1
        if nodes[:1] == [1]:
            after_node1[(emitted[1],)] += 1
    assert chi_square_p(first, {(t,): float(probs[0, t]) for t in range(4)}, 4000) > ALPHA
    n1 = sum(after_node1.values())
    assert n1 > 200 and chi_square_p(after_node1, {(t,): float(probs[1, t]) for t in range(4)}, n1) > ALPHA
