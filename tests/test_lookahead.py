"""Lookahead decoding: lossless on random models and the real SmolLM2, the paper's mask and positions through the
runner, the Jacobi window's level shifts, and the n-gram pool's bounds."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FAMILIES, hf_generate
from specdec.decode import decode
from specdec.drafters import LookaheadConfig, LookaheadDrafter, make_drafter
from specdec.drafters.base import DecodeState
from specdec.drafters.lookahead import NgramPool
from test_decode import PROMPTS, N, check_stats, reference

HYP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def runners(tiny_models, one_thread):
    return {f: tiny_models[f].load() for f in FAMILIES}


def state_for(tokens: list[int]) -> DecodeState:
    return DecodeState(tokens=list(tokens), prompt_len=len(tokens) - 1, hidden=torch.zeros(len(tokens) - 1, 4))


# ---------------------------------------------------------------- lossless


@HYP
@given(
    family=st.sampled_from(FAMILIES),
    p=st.integers(0, len(PROMPTS) - 1),
    window=st.integers(1, 8),
    ngram=st.integers(2, 6),
    guesses=st.integers(1, 8),
    pool_keys=st.integers(1, 64),
    always_window=st.booleans(),
    max_new=st.integers(1, N),
)
def test_lookahead_is_lossless(tiny_models, runners, family, p, window, ngram, guesses, pool_keys, always_window,
                               max_new):
    cfg = LookaheadConfig(window=window, ngram=ngram, guesses=guesses, pool_keys=pool_keys, always_window=always_window)
    drafter = LookaheadDrafter(cfg)
    res = decode(runners[family], PROMPTS[p], drafter, max_new_tokens=max_new)
    assert res.tokens == reference(tiny_models, family, p)[:max_new]
    check_stats(res, max_new)
    pool = drafter.pool.grams
    assert len(pool) <= pool_keys and all(len(c) <= guesses for c in pool.values())
    assert all(len(cont) == ngram - 1 and cont for c in pool.values() for cont in c)
    assert max(res.stats.tree_sizes, default=1) <= 1 + guesses * (ngram - 1) + window * (ngram - 1)


def test_lookahead_accepts_on_repetitive_text(tiny_models, runners):
    """Random models fall into loops: the pool must then be accepted in bulk, and the output stay exact."""
    taus = []
    for family in FAMILIES:
        for p in range(len(PROMPTS)):
            res = decode(runners[family], PROMPTS[p], LookaheadDrafter(LookaheadConfig()), max_new_tokens=N)
            assert res.tokens == reference(tiny_models, family, p)[:N], f"{family} prompt {p}"
            taus.append(res.stats.tau)
    assert max(taus) > 2.0, f"lookahead was never accepted in bulk: taus {taus}"


def test_context_limit_falls_back_and_stays_exact(tiny_models):
    """Near the end of the cache the loop verifies the root alone; the window must skip that step, not misread it."""
    model = tiny_models["llama"].load(max_seq_len=60)
    prompt = PROMPTS[2]
    res = decode(model, prompt, LookaheadDrafter(LookaheadConfig(window=6, ngram=4, guesses=4)), max_new_tokens=100)
    assert res.tokens == reference(tiny_models, "llama", 2)[: 60 - len(prompt)]
    assert res.stats.stop_reason == "context" and 1 in res.stats.tree_sizes


# ---------------------------------------------------------------- the tree: mask and positions


def seeded_drafter(window: int, ngram: int, guesses: int) -> tuple[LookaheadDrafter, list[int]]:
    """A drafter after begin() on a prompt whose pending token 7 has three distinct continuations in it."""
    tokens = [7, 11, 12, 13, 7, 11, 14, 15, 7, 16, 17, 18, 20, 21, 7]
    drafter = LookaheadDrafter(LookaheadConfig(window=window, ngram=ngram, guesses=guesses))
    drafter.begin(state_for(tokens))
    return drafter, tokens


def test_verification_branch_is_a_trie_of_the_latest_pool_grams():
    drafter, tokens = seeded_drafter(window=3, ngram=4, guesses=2)
    tree = drafter.propose(state_for(tokens))
    # the two most recent 4-grams starting with 7: (7, 16, 17, 18) then (7, 11, 14, 15); no shared prefix
    assert drafter.window_start == 7
    assert tree.tokens[:7].tolist() == [7, 16, 17, 18, 11, 14, 15]
    assert tree.shape.parents[:7] == (-1, 0, 1, 2, 0, 4, 5)
    # with three guesses (7, 11, 12, 13) joins and shares the node of 11
    drafter, tokens = seeded_drafter(window=3, ngram=4, guesses=3)
    tree = drafter.propose(state_for(tokens))
    assert tree.tokens[:9].tolist() == [7, 16, 17, 18, 11, 14, 15, 12, 13]
    assert tree.shape.parents[:9] == (-1, 0, 1, 2, 0, 4, 5, 4, 7)


@pytest.mark.parametrize("window,ngram,guesses", [(3, 4, 2), (1, 2, 1), (5, 3, 3)])
def test_window_mask_and_positions_are_the_papers(window, ngram, guesses):
    """Node (i, j) sees the root, level 0 up to column j and column j's levels up to i, at position i + j + 1;
    no window node sees a verification node nor the other way round."""
    drafter, tokens = seeded_drafter(window, ngram, guesses)
    state = state_for(tokens)
    for _ in range(ngram - 2):  # grow the window to all N-1 levels
        tree = drafter.propose(state)
        state.tree, state.targets = tree, list(range(100, 100 + tree.shape.size))
        drafter.update(state)
    assert len(drafter.levels) == ngram - 1
    tree = drafter.propose(state)
    shape, s, w = tree.shape, drafter.window_start, window
    assert shape.size == s + w * (ngram - 1)
    node = {(i, j): s + i * w + j for i in range(ngram - 1) for j in range(w)}
    for (i, j), k in node.items():
        sees = {0} | {node[0, c] for c in range(j + 1)} | {node[r, j] for r in range(i + 1)}
        assert set(shape.mask[k].nonzero().flatten().tolist()) == sees, f"node ({i}, {j})"
        assert int(shape.depth[k]) == i + j + 1
        assert tree.tokens[k] == drafter.levels[i][j]
    assert not shape.mask[1:s, s:].any(), "a verification node sees the window"
    assert not shape.mask[s:, 1:s].any(), "a window node sees a verification node"


def test_window_logits_equal_plain_forwards(tiny_models):
    """Through the runner, each window node's logits are those of its own chain run plainly after the prompt."""
    tm = tiny_models["llama3"]
    model = tm.load()
    prompt = PROMPTS[3]
    drafter = LookaheadDrafter(LookaheadConfig(window=4, ngram=4, guesses=3))
    pending = prompt[3]
    state = state_for(prompt + [pending])
    drafter.begin(state)
    drafter.levels = [[21, 22, 23, 24], [31, 32, 33, 34], [41, 42, 43, 44]]
    tree = drafter.propose(state)
    s = drafter.window_start
    assert s > 1, "the repetitive prompt must give the pending token a verification branch"
    model.reset()
    model.forward(torch.tensor(prompt))
    model.commit(None, len(prompt))
    out = model.forward(tree.tokens, positions=len(prompt) + tree.shape.depth, tree_mask=tree.shape.mask)
    levels = drafter.levels
    for i in range(3):
        for j in range(4):
            chain = prompt + [pending] + levels[0][: j + 1] + [levels[r][j] for r in range(1, i + 1)]
            ref = tm.logits(chain)[-1]
            assert (out.logits[s + i * 4 + j] - ref).abs().max() < 1e-4, f"node ({i}, {j})"


# ---------------------------------------------------------------- the Jacobi window


def test_window_grows_then_closes_one_ngram_per_column():
    drafter, tokens = seeded_drafter(window=2, ngram=4, guesses=1)
    level0 = drafter.levels[0]
    state = state_for(tokens)
    outs = []
    for step in range(4):
        tree = drafter.propose(state)
        s = drafter.window_start
        state.tree, state.targets = tree, [0] * tree.shape.size
        top = s + (len(drafter.levels) - 1) * 2
        outs.append([1000 + 10 * step, 1001 + 10 * step])
        state.targets[top : top + 2] = outs[-1]
        before = {k: list(c) for k, c in drafter.pool.grams.items()}
        drafter.update(state)
        if step < 2:  # filling levels 1 and 2: nothing harvested yet
            assert drafter.levels == [level0] + outs and drafter.pool.grams.keys() == before.keys()
    # step 2 closed (level0[j], out0[j], out1[j], out2[j]); step 3 closed (out0[j], out1[j], out2[j], out3[j])
    assert drafter.levels == outs[1:]
    for j in range(2):
        assert drafter.pool.lookup(outs[0][j]) == [(outs[1][j], outs[2][j], outs[3][j])]
        assert (outs[0][j], outs[1][j], outs[2][j]) in drafter.pool.lookup(level0[j])


def test_window_ignores_a_step_that_verified_another_tree():
    drafter, tokens = seeded_drafter(window=3, ngram=3, guesses=2)
    state = state_for(tokens)
    drafter.propose(state)
    levels = [list(level) for level in drafter.levels]
    state.tree, state.targets = None, [99]
    drafter.update(state)
    assert drafter.levels == levels


def test_no_guess_step_is_plain_unless_always_window():
    """On the CPU default a pending token with no pool n-gram gets a plain one-node step, and the window waits."""
    for always in (False, True):
        drafter = LookaheadDrafter(LookaheadConfig(window=3, ngram=3, guesses=2, always_window=always))
        tokens = [5, 6, 7, 8, 9]
        state = state_for(tokens)
        drafter.begin(state)
        state.tokens.append(40)  # never seen: no n-gram starts with it
        level0 = list(drafter.levels[0])
        tree = drafter.propose(state)
        state.tree, state.targets = tree, [50 + i for i in range(tree.shape.size)]
        drafter.update(state)
        if always:
            assert tree.shape.size == 1 + 3 and drafter.levels == [level0, [51, 52, 53]]
        else:
            assert tree.shape.size == 1 and tree.tokens.tolist() == [40] and drafter.levels == [level0]


def test_pool_learns_the_committed_text(tiny_models, runners):
    drafter = LookaheadDrafter(LookaheadConfig(window=2, ngram=4, guesses=8, pool_keys=10_000))
    res = decode(runners["mistral"], PROMPTS[1], drafter, max_new_tokens=30)
    text = PROMPTS[1] + res.tokens
    # every 4-gram up to the pending token of the last update (the final step has none) is learned
    assert len(PROMPTS[1]) + 20 < drafter.learned <= len(text) - 3
    for i in range(drafter.learned - 4, drafter.learned):  # the last few: not yet pushed out by later ones
        assert tuple(text[i + 1 : i + 4]) in drafter.pool.lookup(text[i])


# ---------------------------------------------------------------- the pool


def test_pool_is_seeded_from_the_prompt_most_recent_first():
    drafter, _ = seeded_drafter(window=2, ngram=3, guesses=4)
    assert drafter.pool.lookup(7) == [(16, 17), (11, 14), (11, 12)]
    assert drafter.pool.lookup(11) == [(14, 15), (12, 13)]
    assert drafter.pool.lookup(21) == [] and drafter.pool.lookup(999) == []


def test_pool_per_key_cap_evicts_least_recently_added():
    pool = NgramPool(max_keys=10, per_key=2)
    pool.add([1, 2, 3])
    pool.add([1, 4, 5])
    pool.add([1, 2, 3])  # refreshed: (4, 5) is now the oldest
    pool.add([1, 6, 7])
    assert pool.lookup(1) == [(6, 7), (2, 3)]
    assert len(pool) == 2


def test_pool_key_bound_evicts_least_recently_used_key():
    pool = NgramPool(max_keys=3, per_key=4)
    for key in (1, 2, 3):
        pool.add([key, key + 10])
    assert pool.lookup(1) == [(11,)]  # a hit counts as a use: key 2 is now the least recent
    pool.add([4, 14])
    assert list(pool.grams) == [3, 1, 4]
    assert pool.lookup(2) == []
    pool.add([3, 30])  # adding under a key also counts as a use
    pool.add([5, 15])
    assert list(pool.grams) == [4, 3, 5]
    assert len(pool) == 4


def test_pool_bounds_hold_over_a_long_generation(tiny_models, runners):
    cfg = LookaheadConfig(window=6, ngram=3, guesses=2, pool_keys=16)
    drafter = LookaheadDrafter(cfg)
    res = decode(runners["qwen2"], PROMPTS[2], drafter, max_new_tokens=150)
    assert res.tokens == tiny_models["qwen2"].greedy(PROMPTS[2], 150)
    assert len(drafter.pool.grams) == 16 and all(1 <= len(c) <= 2 for c in drafter.pool.grams.values())


# ---------------------------------------------------------------- configuration


def test_config_defaults_and_validation():
    assert LookaheadConfig.for_machine("cpu-fp32") == LookaheadConfig()
    assert LookaheadConfig.for_machine("cpu-bf16").always_window
    gpu = LookaheadConfig.for_machine("cuda")
    assert (gpu.window, gpu.ngram, gpu.guesses, gpu.always_window) == (15, 5, 15, True)
    assert isinstance(make_drafter("lookahead"), LookaheadDrafter)
    for bad in (dict(window=0), dict(ngram=1), dict(guesses=0), dict(pool_keys=0)):
        with pytest.raises(ValueError, match="lookahead needs"):
            LookaheadDrafter(LookaheadConfig(**bad))


def test_default_config_follows_the_device():
    drafter = LookaheadDrafter()
    drafter.begin(state_for([3, 4, 5, 6]))
    assert drafter.cfg == LookaheadConfig() and len(drafter.levels[0]) == LookaheadConfig().window


# ---------------------------------------------------------------- the real SmolLM2


@pytest.mark.real
def test_real_model_lookahead_equals_hf_generate():
    from transformers import AutoModelForCausalLM

    from specdec import LookaheadModel
    from specdec.data import load_mtbench

    model = LookaheadModel.load(dtype="fp32")
    bb = model.backbone
    hf = AutoModelForCausalLM.from_pretrained(bb.path, dtype=torch.float32).eval()
    questions = {q.question_id: q for q in load_mtbench()}
    emitted = steps = 0
    for qid in (133, 111):  # extraction (copies from the prompt) and a reasoning question
        ids = bb.encode_chat(questions[qid].turns[0])
        ref = hf_generate(hf, ids, 96, eos_token_id=bb.stop_ids)
        gen = model.generate(ids, max_new_tokens=96)
        assert gen.tokens == ref, f"question {qid}"
        emitted += sum(gen.stats.accepted)
        steps += gen.stats.steps
    assert emitted / steps > 1.2, f"lookahead accepted almost nothing (tau {emitted / steps:.2f})"
