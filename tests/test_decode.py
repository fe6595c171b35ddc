"""Losslessness of the decode loop: whatever tree a drafter proposes, the output is transformers'
greedy `generate` token for token (fp32), and the statistics tell the truth about acceptance."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CONTEXT, FAMILIES, VOCAB, hf_generate
from specdec.decode import decode
from specdec.drafters import NgramConfig, NgramDrafter, NoDrafter
from specdec.drafters.base import DecodeState, Drafter
from specdec.tree import Tree, shape_from_parents

pytestmark = pytest.mark.usefixtures("one_thread")

N = 40  # new tokens per property example
EXTRA = 16  # reference tokens beyond N, so oracles can draft past the end
HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _prompts() -> list[list[int]]:
    rng = random.Random(1234)
    lengths = [1, 7, 33]
    prompts = [[rng.randrange(3, VOCAB) for _ in range(n)] for n in lengths]
    # a repetitive prompt: prompt lookup finds matches in it from the start
    motif = [rng.randrange(3, VOCAB) for _ in range(6)]
    prompts.append(motif * 4 + motif[:3])
    return prompts


PROMPTS = _prompts()


@pytest.fixture(scope="module")
def runners(tiny_models):
    """One loaded runner per family (decode resets the cache itself)."""
    return {f: tiny_models[f].load() for f in FAMILIES}


def reference(tiny_models, family: str, p: int, n: int = N + EXTRA) -> list[int]:
    return tiny_models[family].greedy(PROMPTS[p], n)


class OracleTreeDrafter(Drafter):
    """Random trees whose tokens follow the true greedy continuation with probability p_true per node.

    A node whose parent lies on the true path gets the true next token with probability p_true
    (siblings may both get it: duplicates), else a random token; other nodes get random tokens.
    With p_true=0 it is a purely random drafter. chain_bias pushes the shape towards deep chains.
    """

    def __init__(self, truth: list[int], seed: int, max_nodes: int, p_true: float, chain_bias: float,
                 check_state: bool = True):
        self.truth, self.rng = truth, random.Random(seed)
        self.max_nodes, self.p_true, self.chain_bias = max_nodes, p_true, chain_bias
        self.check_state = check_state
        self.proposed = 0

    def propose(self, state: DecodeState) -> Tree:
        rng = self.rng
        pos = len(state.tokens)  # index in truth of the root's next token
        if self.check_state:
            assert state.tokens == self.truth[:pos], "decode state diverged from the reference"
        k = rng.randint(1, self.max_nodes)
        parents = [-1] + [i - 1 if rng.random() < self.chain_bias else rng.randrange(i) for i in range(1, k)]
        tokens = [state.tokens[-1]]
        on_path = [True]
        depth = [0]
        for i in range(1, k):
            p = parents[i]
            depth.append(depth[p] + 1)
            t = pos + depth[i] - 1
            if on_path[p] and t < len(self.truth) and rng.random() < self.p_true:
                tokens.append(self.truth[t])
                on_path.append(True)
            else:
                tokens.append(rng.randrange(VOCAB))
                on_path.append(t < len(self.truth) and on_path[p] and tokens[-1] == self.truth[t])
        self.proposed += k - 1
        return Tree(torch.tensor(tokens), shape_from_parents(parents))


class ChainOracle(Drafter):
    """The next `depth` true tokens as a chain: every draft must be accepted."""

    def __init__(self, truth: list[int], depth: int):
        self.truth, self.depth = truth, depth

    def propose(self, state: DecodeState) -> Tree:
        pos = len(state.tokens)
        drafts = self.truth[pos : pos + self.depth]
        return Tree(torch.tensor([state.tokens[-1]] + drafts), shape_from_parents(range(-1, len(drafts))))


def check_stats(res, max_new_tokens: int) -> None:
    s = res.stats
    assert s.new_tokens == len(res.tokens)
    assert s.steps == len(s.accepted) == len(s.tree_sizes)
    assert all(1 <= a <= size for a, size in zip(s.accepted, s.tree_sizes)), "accepted more nodes than drafted"
    # the prefill emits one token, every step emits its accepted drafts + bonus; only the last may be cut
    assert sum(s.accepted) + 1 >= s.new_tokens
    if s.steps:
        assert sum(s.accepted[:-1]) + 1 < s.new_tokens
        assert s.tau == pytest.approx(sum(s.accepted) / s.steps)
    else:
        assert s.new_tokens == 1
    assert s.stop_reason in ("max_new_tokens", "stop_id", "context")
    if s.stop_reason == "max_new_tokens":
        assert s.new_tokens == max_new_tokens


# ---------------------------------------------------------------- plain decoding and families


@pytest.mark.parametrize("family", FAMILIES)
def test_vanilla_equals_hf_generate(tiny_models, runners, family):
    for p in range(len(PROMPTS)):
        ref = reference(tiny_models, family, p)
        res = decode(runners[family], PROMPTS[p], NoDrafter(), max_new_tokens=N)
        assert res.tokens == ref[:N], f"{family} prompt {p}"
        check_stats(res, N)
        assert res.stats.accepted == [1] * (N - 1) and res.stats.tau == 1.0
        assert res.stats.stop_reason == "max_new_tokens"


@pytest.mark.parametrize("family", FAMILIES)
def test_random_and_oracle_trees_every_family(tiny_models, runners, family):
    """A few fixed-seed random/adversarial trees per architecture (the hypothesis test below goes wide on one)."""
    for seed, p in enumerate(range(len(PROMPTS))):
        ref = reference(tiny_models, family, p)
        truth = PROMPTS[p] + ref
        for p_true in (0.0, 0.9):
            drafter = OracleTreeDrafter(truth, seed=seed, max_nodes=24, p_true=p_true, chain_bias=0.5)
            res = decode(runners[family], PROMPTS[p], drafter, max_new_tokens=N)
            assert res.tokens == ref[:N], f"{family} prompt {p} p_true={p_true}"
            check_stats(res, N)


# ---------------------------------------------------------------- property tests


@HYP
@given(
    family=st.sampled_from(["llama", "llama3"]),
    p=st.integers(0, len(PROMPTS) - 1),
    seed=st.integers(0, 2**31),
    max_nodes=st.integers(1, 48),
    p_true=st.floats(0.0, 1.0),
    chain_bias=st.floats(0.0, 1.0),
    max_new=st.integers(1, N),
)
def test_random_trees_are_lossless(tiny_models, runners, family, p, seed, max_nodes, p_true, chain_bias, max_new):
    ref = reference(tiny_models, family, p)
    drafter = OracleTreeDrafter(PROMPTS[p] + ref, seed, max_nodes, p_true, chain_bias)
    res = decode(runners[family], PROMPTS[p], drafter, max_new_tokens=max_new)
    assert res.tokens == ref[:max_new]
    check_stats(res, max_new)


@HYP
@given(
    family=st.sampled_from(FAMILIES),
    p=st.integers(0, len(PROMPTS) - 1),
    seed=st.integers(0, 2**31),
    max_nodes=st.integers(100, 220),
)
def test_large_trees_near_the_context_end_are_lossless(tiny_models, runners, family, p, seed, max_nodes):
    """Trees too big for the remaining cache fall back to plain steps; the output stays exact."""
    ref = reference(tiny_models, family, p)
    drafter = OracleTreeDrafter(PROMPTS[p] + ref, seed, max_nodes, p_true=0.8, chain_bias=0.3)
    res = decode(runners[family], PROMPTS[p], drafter, max_new_tokens=N)
    assert res.tokens == ref[:N]
    check_stats(res, N)
    assert max(res.stats.tree_sizes) <= CONTEXT


@HYP
@given(
    family=st.sampled_from(FAMILIES),
    p=st.integers(0, len(PROMPTS) - 1),
    max_ngram=st.integers(1, 4),
    draft_len=st.integers(1, 10),
    max_branches=st.integers(1, 5),
    max_nodes=st.integers(1, 40),
)
def test_ngram_drafter_is_lossless(tiny_models, runners, family, p, max_ngram, draft_len, max_branches, max_nodes):
    ref = reference(tiny_models, family, p)
    cfg = NgramConfig(max_ngram=max_ngram, min_ngram=1, draft_len=draft_len, max_branches=max_branches,
                      max_nodes=max_nodes)
    res = decode(runners[family], PROMPTS[p], NgramDrafter(cfg), max_new_tokens=N)
    assert res.tokens == ref[:N]
    check_stats(res, N)
    assert max(res.stats.tree_sizes) <= max_nodes + 1


def test_ngram_drafter_accepts_on_repetitive_text(tiny_models, runners):
    """Random models fall into loops; prompt lookup must then be accepted (tau > 1) and stay exact."""
    taus = []
    for family in FAMILIES:
        for p in range(len(PROMPTS)):
            ref = reference(tiny_models, family, p)
            res = decode(runners[family], PROMPTS[p], NgramDrafter(), max_new_tokens=N)
            assert res.tokens == ref[:N], f"{family} prompt {p}"
            taus.append(res.stats.tau)
    assert max(taus) > 2.0, f"n-gram drafts were never accepted in bulk: taus {taus}"


# ---------------------------------------------------------------- acceptance actually works


def test_chain_oracle_is_fully_accepted(tiny_models, runners):
    ref = reference(tiny_models, "qwen2", 1)
    truth = PROMPTS[1] + ref
    res = decode(runners["qwen2"], PROMPTS[1], ChainOracle(truth, depth=4), max_new_tokens=N)
    assert res.tokens == ref[:N]
    check_stats(res, N)
    assert res.stats.accepted == [5] * res.stats.steps, "a correct chain of 4 drafts must give 5 tokens per step"
    assert res.stats.steps == -(-(N - 1) // 5)
    assert res.stats.tau == 5.0


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_adversarial_oracle_tree_has_tau_above_one(tiny_models, runners, family):
    ref = reference(tiny_models, family, 2)
    drafter = OracleTreeDrafter(PROMPTS[2] + ref, seed=7, max_nodes=32, p_true=0.7, chain_bias=0.6)
    res = decode(runners[family], PROMPTS[2], drafter, max_new_tokens=N)
    assert res.tokens == ref[:N]
    assert res.stats.tau > 1.5, res.stats.accepted
    assert res.stats.steps < N - 1
    # and a purely random drafter with this vocabulary is (almost) never right
    rand = OracleTreeDrafter(PROMPTS[2] + ref, seed=7, max_nodes=32, p_true=0.0, chain_bias=0.6)
    res = decode(runners[family], PROMPTS[2], rand, max_new_tokens=N)
    assert res.tokens == ref[:N]
    assert res.stats.tau < 1.5


# ---------------------------------------------------------------- what the drafter sees


class RecordingDrafter(OracleTreeDrafter):
    """Records the state's hidden rows (and requested layers) after prefill and after each step."""

    hidden_layers = (0, 1)  # layer 2 is the last: HF reports it post-norm

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.records = []

    def _record(self, state):
        n = state.hidden.shape[0]
        end = len(state.tokens) - 1  # the pending token is not in the cache yet
        self.records.append((end - n, end, state.hidden.clone(), {i: h.clone() for i, h in state.layers.items()}))

    def begin(self, state):
        assert state.prompt_len == len(state.tokens) - 1
        self._record(state)

    def update(self, state):
        self._record(state)


def test_drafter_state_hidden_matches_hf(tiny_models, runners):
    """state.hidden / state.layers are the committed tokens' post-norm hidden and layer outputs."""
    tm = tiny_models["llama3"]
    ref = reference(tiny_models, "llama3", 2)
    truth = PROMPTS[2] + ref
    drafter = RecordingDrafter(truth, seed=3, max_nodes=16, p_true=0.8, chain_bias=0.5)
    res = decode(runners["llama3"], PROMPTS[2], drafter, max_new_tokens=N)
    assert res.tokens == ref[:N]
    with torch.no_grad():
        hs = tm.hf(torch.tensor([truth[: len(PROMPTS[2]) + N]]), output_hidden_states=True).hidden_states
    assert drafter.records[0][:2] == (0, len(PROMPTS[2]))
    covered = 0
    for start, end, hidden, layers in drafter.records:
        assert start == covered, "hidden rows must cover the committed tokens contiguously"
        covered = end
        assert (hidden - hs[-1][0, start:end]).abs().max() < 1e-4
        assert sorted(layers) == [0, 1]
        for i, h in layers.items():
            assert (h - hs[i + 1][0, start:end]).abs().max() < 1e-4, f"layer {i} rows {start}:{end}"


# ---------------------------------------------------------------- stopping


@pytest.mark.parametrize("use_tree", [False, True])
def test_stop_id_is_included_and_matches_hf_eos(tiny_models, runners, use_tree):
    family, p = "mistral", 1
    tm = tiny_models[family]
    ref = reference(tiny_models, family, p)
    # a token that first appears a few tokens in, so the stop falls inside an accepted path
    j = next(i for i in range(3, N) if ref[i] not in ref[:i])
    stop = ref[j]
    drafter = ChainOracle(PROMPTS[p] + ref, depth=6) if use_tree else NoDrafter()
    chunks = []
    res = decode(runners[family], PROMPTS[p], drafter, max_new_tokens=N, stop_ids=[stop, VOCAB + 5],
                 on_tokens=chunks.append)
    assert res.tokens == ref[: j + 1]
    assert res.tokens[-1] == stop
    assert res.stats.stop_reason == "stop_id"
    assert [t for c in chunks for t in c] == res.tokens, "on_tokens must stream exactly the output"
    check_stats(res, N)
    assert res.tokens == hf_generate(tm.hf, PROMPTS[p], N, eos_token_id=stop)


def test_stop_on_first_token(tiny_models, runners):
    ref = reference(tiny_models, "llama", 0)
    res = decode(runners["llama"], PROMPTS[0], NgramDrafter(), max_new_tokens=N, stop_ids=[ref[0]])
    assert res.tokens == ref[:1]
    assert res.stats.stop_reason == "stop_id" and res.stats.steps == 0


@pytest.mark.parametrize("drafter_kind", ["vanilla", "oracle"])
def test_context_limit_stops_cleanly(tiny_models, drafter_kind):
    tm = tiny_models["vicuna"]
    model = tm.load(max_seq_len=48)
    prompt = PROMPTS[2]  # 33 tokens: room for 15 more
    ref = reference(tiny_models, "vicuna", 2)
    drafter = NoDrafter() if drafter_kind == "vanilla" else ChainOracle(prompt + ref, depth=8)
    res = decode(model, prompt, drafter, max_new_tokens=100)
    assert res.tokens == ref[: 48 - len(prompt)]
    assert res.stats.stop_reason == "context"
    check_stats(res, 100)
    assert model.length <= 48
    # exactly the room left: that is max_new_tokens' stop, not the context's
    res = decode(model, prompt, drafter, max_new_tokens=48 - len(prompt))
    assert res.tokens == ref[: 48 - len(prompt)]
    assert res.stats.stop_reason == "max_new_tokens"
    # a prompt that leaves room for one token
    res = decode(model, (prompt + ref)[:47], drafter, max_new_tokens=10)
    assert res.tokens == ref[14:15]
    assert res.stats.stop_reason == "context"


def test_bad_arguments(runners):
    model = runners["llama"]
    with pytest.raises(ValueError, match="empty"):
        decode(model, [], max_new_tokens=4)
    with pytest.raises(ValueError, match=f"context holds {CONTEXT}"):
        decode(model, [5] * (CONTEXT + 3), max_new_tokens=4)
    with pytest.raises(ValueError, match="context holds"):
        decode(model, [5] * CONTEXT, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decode(model, [5, 6], max_new_tokens=0)
    # the model still decodes correctly after the rejected calls
    assert (decode(model, PROMPTS[1], max_new_tokens=5).tokens
            == decode(model, PROMPTS[1], NgramDrafter(), max_new_tokens=5).tokens)


def test_top2_gaps_match_hf_logits(tiny_models, runners):
    tm = tiny_models["llama"]
    ref = reference(tiny_models, "llama", 1)
    drafter = OracleTreeDrafter(PROMPTS[1] + ref, seed=11, max_nodes=12, p_true=0.8, chain_bias=0.5)
    res = decode(runners["llama"], PROMPTS[1], drafter, max_new_tokens=N, track_top2_gaps=True)
    assert res.tokens == ref[:N]
    assert res.top2_gaps is not None and len(res.top2_gaps) == N
    logits = tm.logits(PROMPTS[1] + ref[: N - 1])[len(PROMPTS[1]) - 1 :]
    top = logits.topk(2, dim=-1).values
    expected = (top[:, 0] - top[:, 1]).tolist()
    assert res.top2_gaps == pytest.approx(expected, abs=1e-4)
    assert decode(runners["llama"], PROMPTS[1], max_new_tokens=3).top2_gaps is None
