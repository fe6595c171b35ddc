"""Batched decoding: every row of a batch is token-identical to that prompt decoded alone with plain greedy decoding
(fp32, every family, every drafter, random trees, prompts of very different lengths, rows that stop early or at the
context end, continuous batching on and off); sampled rows follow plain sampling's distribution; bad input is refused
before any work."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FAMILIES, VOCAB
from specdec.batch import decode_batch
from specdec.decode import decode
from specdec.drafters import LookaheadConfig, LookaheadDrafter, NgramConfig, NgramDrafter, NoDrafter
from specdec.drafters.base import DecodeState, Drafter
from specdec.drafters.eagle import EagleDrafter, eagle2, eagle3
from specdec.drafters.medusa import MedusaDrafter
from specdec.sampling import SamplingConfig
from test_decode import OracleTreeDrafter
from test_eagle import random_draft
from test_eagle3 import random_eagle3
from test_medusa import random_heads
from test_sampling import ALPHA, LENGTH, PROMPT, chi_square_p, exact_distribution, small  # noqa: F401 (a fixture)
from test_sampling import make as make_small_drafter

pytestmark = pytest.mark.usefixtures("one_thread")
HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _prompts(seed: int = 7) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = [1, 60, 9, 2, 33, 14, 90]
    prompts = [[rng.randrange(3, VOCAB) for _ in range(n)] for n in lengths]
    motif = [rng.randrange(3, VOCAB) for _ in range(5)]
    return prompts + [motif * 6]  # repetitive: prompt lookup drafts from the first step


PROMPTS = _prompts()


@pytest.fixture(scope="module")
def runners(tiny_models):
    return {f: tiny_models[f].load() for f in FAMILIES}


def expected(tiny, prompt: list[int], n: int, stops: set[int] = frozenset()) -> list[int]:
    """Plain greedy (transformers) for n tokens, cut after the first stop id."""
    ref = tiny.greedy(prompt, n)
    cut = next((i for i, t in enumerate(ref) if t in stops), None)
    return ref if cut is None else ref[: cut + 1]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("continuous", [True, False])
def test_random_trees_every_family(tiny_models, runners, family, continuous):
    """Random oracle trees per row (a different tree size in every row and step), stop ids that end rows early."""
    tiny, model = tiny_models[family], runners[family]
    n = 30
    truth = [tiny.greedy(p, n + 16) for p in PROMPTS]
    stops = {truth[2][5], truth[5][17]}  # rows 2 and 5 (and any other that meets one) stop early
    drafters = [OracleTreeDrafter(p + t, seed=i, max_nodes=12, p_true=0.7, chain_bias=0.5, check_state=True)
                for i, (p, t) in enumerate(zip(PROMPTS, truth))]
    res = decode_batch(model, PROMPTS, drafters, batch_size=3, max_new_tokens=n, stop_ids=stops,
                       continuous=continuous)
    for i, (p, r) in enumerate(zip(PROMPTS, res)):
        assert r.tokens == expected(tiny, p, n, stops), f"prompt {i}"
        assert r.stats.stop_reason in ("stop_id", "max_new_tokens")
        assert r.stats.steps == len(r.stats.accepted) and sum(r.stats.accepted) + 1 >= len(r.tokens)
    assert res[2].stats.stop_reason == "stop_id" and len(res[2].tokens) <= 6
    assert max((a for r in res for a in r.stats.accepted), default=0) > 2, "the oracle trees were never deep"


def every_drafter(model) -> dict[str, Drafter]:
    lookup = NgramConfig(min_ngram=1, draft_len=4)
    return {
        "vanilla": NoDrafter(),
        "ngram": NgramDrafter(NgramConfig(min_ngram=1, draft_len=5, max_branches=3)),
        "lookahead": LookaheadDrafter(LookaheadConfig(window=4, ngram=3, guesses=4)),
        "medusa": MedusaDrafter(model, random_heads(model, 3, False, seed=1), tree=10),
        "medusa-trigram+lookup": MedusaDrafter(model, random_heads(model, 3, True, seed=2), tree=10, lookup=lookup),
        "eagle": EagleDrafter(model, random_draft(model, seed=3), tree=8, verify_cost={}),
        "eagle2": eagle2(model, random_draft(model, seed=4), depth=4, top_k=3, total_tokens=10, verify_cost={}),
        "eagle2+lookup": eagle2(model, random_draft(model, seed=5), depth=3, top_k=3, total_tokens=8, lookup=lookup),
        "eagle3+lookup": eagle3(model, random_eagle3(model, 6, 64, [1, 2]), depth=3, top_k=3, total_tokens=8,
                                verify_cost={}, lookup=lookup),
    }


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_every_drafter_batched_equals_greedy(tiny_models, runners, family):
    tiny, model = tiny_models[family], runners[family]
    n = 24
    for name, drafter in every_drafter(model).items():
        res = decode_batch(model, PROMPTS, drafter, batch_size=4, max_new_tokens=n)
        for i, (p, r) in enumerate(zip(PROMPTS, res)):
            assert r.tokens == expected(tiny, p, n), f"{name}, prompt {i}"
        if name != "vanilla":  # random drafts accept little, but trees were drafted and verified
            assert max(s for r in res for s in r.stats.tree_sizes) > 1, name


@HYP
@given(family=st.sampled_from(FAMILIES), seed=st.integers(0, 10**6), batch=st.integers(1, 6),
       n=st.integers(1, 40), context=st.sampled_from([48, 96, 256]), continuous=st.booleans(),
       count=st.integers(1, 8))
def test_random_batches_up_to_the_context_end(tiny_models, family, seed, batch, n, context, continuous, count):
    """Any batch size, prompt mix and budget; rows near a small context stop there, as plain decoding does."""
    tiny = tiny_models[family]
    model = tiny.load(max_seq_len=context)
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, VOCAB) for _ in range(rng.randint(1, context - 1))] for _ in range(count)]
    truth = [tiny.greedy(p, min(n, context - len(p)) + 8) for p in prompts]
    drafters = [OracleTreeDrafter(p + t, seed=seed + i, max_nodes=10, p_true=0.6, chain_bias=0.4)
                for i, (p, t) in enumerate(zip(prompts, truth))]
    res = decode_batch(model, prompts, drafters, batch_size=batch, max_new_tokens=n, continuous=continuous)
    for p, r in zip(prompts, res):
        budget = min(n, context - len(p))
        assert r.tokens == tiny.greedy(p, budget)
        assert r.stats.stop_reason == ("max_new_tokens" if budget == n else "context")


def test_one_drafter_is_forked_per_row(runners):
    model = runners["llama"]
    drafter = eagle2(model, random_draft(model, seed=8), depth=3, top_k=2, total_tokens=6, verify_cost={})
    fork = drafter.fork()
    assert fork.draft is drafter.draft and fork.model is drafter.model and fork.embed is drafter.embed
    assert fork is not drafter
    decode(model, PROMPTS[1], fork, max_new_tokens=5)
    assert drafter.kv is None, "the fork's cache is its own"


def test_batched_rows_equal_decoding_alone(runners):
    """The same prompts, batched and alone, through the same drafter: the same tokens and the same acceptance."""
    model = runners["mistral"]
    drafter = eagle2(model, random_draft(model, seed=9), depth=3, top_k=3, total_tokens=8, verify_cost={})
    alone = [decode(model, p, drafter, max_new_tokens=20) for p in PROMPTS]
    batched = decode_batch(model, PROMPTS, drafter, batch_size=5, max_new_tokens=20)
    for a, b in zip(alone, batched):
        assert (a.tokens, a.stats.accepted) == (b.tokens, b.stats.accepted)


def test_streaming_and_caller_stop(runners):
    model = runners["llama"]
    seen: dict[int, list[int]] = {}

    def on_tokens(i: int, new: list[int]) -> bool:
        seen.setdefault(i, []).extend(new)
        return i == 1 and len(seen[i]) >= 3

    res = decode_batch(model, PROMPTS[:4], NgramDrafter(), batch_size=2, max_new_tokens=12, on_tokens=on_tokens)
    assert all(seen[i] == r.tokens for i, r in enumerate(res))
    assert res[1].stats.stop_reason == "caller" and len(res[1].tokens) < 12
    assert all(r.stats.stop_reason == "max_new_tokens" for i, r in enumerate(res) if i != 1)


class Untouchable(Drafter):
    def begin(self, state: DecodeState) -> None:
        raise AssertionError("work started before the prompts were checked")

    def propose(self, state: DecodeState):
        raise AssertionError("work started before the prompts were checked")


def test_bad_input_is_refused_before_any_work(runners):
    model = runners["llama"]
    with pytest.raises(ValueError, match="prompt 2: the prompt is empty"):
        decode_batch(model, [[5], [6, 7], [], [8]], Untouchable())
    with pytest.raises(ValueError, match="prompt 1: the prompt has 300 tokens but the context holds 256"):
        decode_batch(model, [[5], [9] * 300], Untouchable())
    with pytest.raises(ValueError, match="prompt 0: prompt token id 9999 is outside the vocabulary"):
        decode_batch(model, [[9999]], Untouchable())
    with pytest.raises(ValueError, match="no prompts"):
        decode_batch(model, [], Untouchable())
    with pytest.raises(ValueError, match="batch_size"):
        decode_batch(model, [[5]], Untouchable(), batch_size=0)
    with pytest.raises(ValueError, match="2 drafters for 3 prompts"):
        decode_batch(model, [[5], [6], [7]], [Untouchable(), Untouchable()])


# ---------------------------------------------------------------- sampling


@pytest.mark.parametrize("drafter", ["ngram", "eagle2+lookup", "oracle-tree"])
def test_sampled_rows_follow_plain_sampling(small, drafter):  # noqa: F811 (the imported fixture)
    """Each row's first tokens, in batches that mix the test prompt with others, follow plain sampling exactly."""
    hf, model = small
    cfg = SamplingConfig(temperature=1.0)
    other = [1, 3, 3, 4]
    prompts = [PROMPT, other, PROMPT, PROMPT[:5], PROMPT]  # rows 0, 2, 4 are counted
    counts, draws = Counter(), 0
    for call in range(400):
        res = decode_batch(model, prompts, make_small_drafter(drafter, small), batch_size=3,
                           max_new_tokens=LENGTH, sampling=replace(cfg, seed=call * len(prompts)))
        for i in (0, 2, 4):
            counts[tuple(res[i].tokens)] += 1
            draws += 1
    p = chi_square_p(counts, exact_distribution(hf, PROMPT, cfg), draws)
    assert p > ALPHA, f"{drafter}: chi-square p = {p:.2e}"


def test_a_rows_sample_does_not_depend_on_its_neighbours(small):  # noqa: F811 (the imported fixture)
    """Prompt i samples from its own generator (seed + i): alone or next to anything, the same draw."""
    _, model = small
    cfg = SamplingConfig(temperature=1.0, seed=11)
    drafter = make_small_drafter("eagle2+lookup", small)
    batch = decode_batch(model, [PROMPT, [1, 3, 3, 4], PROMPT], drafter, batch_size=3, max_new_tokens=8, sampling=cfg)
    for i in (0, 2):
        alone = decode(model, PROMPT, drafter, max_new_tokens=8, sampling=replace(cfg, seed=11 + i))
        assert batch[i].tokens == alone.tokens
    assert torch.equal(torch.tensor(batch[0].tokens), torch.tensor(decode_batch(
        model, [PROMPT, [5, 6, 7, 1, 1]], drafter, batch_size=2, max_new_tokens=8, sampling=cfg)[0].tokens))


# ---------------------------------------------------------------- the real model, from the public API


@pytest.mark.real
def test_generate_a_list_of_prompts_on_the_real_model():
    """SpecModel.generate with a list: one Generation per prompt, in order, each equal to the prompt alone (fp32),
    stop strings applied per row; streaming a list is refused."""
    from specdec import EagleModel

    model = EagleModel.load(drafter="eagle2+lookup", dtype="fp32", max_seq_len=512)
    prompts = ["Name three primary colours.", [{"role": "user", "content": "Count from one to ten in words."}],
               "Write a haiku about the sea.", "What is 12 times 12?"]
    alone = [model.generate(p, max_new_tokens=40, stop=["3."]) for p in prompts]
    batched = model.generate(prompts, max_new_tokens=40, stop=["3."], batch_size=3)
    assert [g.text for g in batched] == [g.text for g in alone]
    for a, b in zip(alone, batched):  # a stop string ends the reply within a step: steps differ when batched
        n = min(len(a.tokens), len(b.tokens))
        assert a.tokens[:n] == b.tokens[:n] and (a.stats.stop_reason == "caller" or a.tokens == b.tokens)
    assert "3." not in batched[1].text and batched[1].stats.stop_reason == "caller"
    with pytest.raises(ValueError, match="takes one prompt"):
        model.generate(prompts, on_text=print)
