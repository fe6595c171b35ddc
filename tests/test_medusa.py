"""Medusa heads: identity at init, checkpoints (ours and the official layout), sparse trees, and lossless
decoding with random and trained heads."""
from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FAMILIES, VOCAB
from specdec.decode import decode
from specdec.drafters import DecodeState, MedusaDrafter, NgramConfig, make_drafter
from specdec.medusa import MedusaConfig, MedusaHeads, load_medusa, save_medusa
from specdec.tree import sparse_tree
from test_decode import PROMPTS

pytestmark = pytest.mark.usefixtures("one_thread")
HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def runners(tiny_models):
    return {f: tiny_models[f].load() for f in FAMILIES}


def random_heads(model, num_heads: int, trigram, num_layers: int = 1, seed: int = 0, own: bool = False,
                 draft_vocab: int = 0) -> MedusaHeads:
    torch.manual_seed(seed)
    heads = MedusaHeads(MedusaConfig(model.args.dim, model.args.vocab_size, num_heads, num_layers, trigram, own,
                                     draft_vocab))
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.3)
        heads.vocab_ids.copy_(torch.randperm(model.args.vocab_size)[: len(heads.vocab_ids)])
    return heads.eval()


def logits_of(heads, model, hidden, ctx):
    return heads(hidden, ctx, model.tok_embeddings.weight, model.output.weight)


def test_new_heads_are_the_identity(runners):
    model = runners["llama"]
    for trigram in (False, True):
        heads = MedusaHeads(MedusaConfig(model.args.dim, VOCAB, 3, 2, trigram))
        hidden, ctx = torch.randn(5, model.args.dim), torch.randint(0, VOCAB, (5, 3))
        expect = hidden @ model.output.weight.T
        assert torch.allclose(logits_of(heads, model, hidden, ctx), expect.expand(3, -1, -1), atol=1e-5)


@pytest.mark.parametrize("own", [False, True])
def test_draft_vocabulary_scores_a_subset(runners, tmp_path, own):
    model = runners["llama"]
    full = random_heads(model, 2, [True, False], own=own)
    cut = MedusaHeads(MedusaConfig(model.args.dim, VOCAB, 2, 1, [True, False], own, draft_vocab=40))
    state = full.state_dict()
    ids = torch.randperm(VOCAB)[:40]
    if own:
        state = {k: v[ids] if k.endswith("lm_head.weight") else v for k, v in state.items()}
    cut.load_state_dict({**state, "vocab_ids": ids})
    hidden, ctx = torch.randn(3, model.args.dim), torch.randint(0, VOCAB, (3, 3))
    whole = logits_of(full, model, hidden, ctx)
    part = cut(hidden, ctx, model.tok_embeddings.weight, cut.draft_lm_head(model.output.weight))
    assert torch.allclose(part, whole[..., ids], atol=1e-5)
    loaded, _ = load_medusa(save_medusa(tmp_path / "h", cut, model), model)
    assert torch.equal(loaded.vocab_ids, ids)
    drafter = MedusaDrafter(model, loaded, tree=5)
    prompt = PROMPTS[2]
    model.reset()
    out = model.forward(torch.tensor(prompt))
    state = DecodeState(tokens=prompt + [int(out.logits[-1].argmax())], prompt_len=len(prompt), hidden=out.hidden)
    assert set(drafter.propose(state).tokens[1:].tolist()) <= set(ids.tolist())


def test_layers_are_distinct_modules():
    heads = MedusaHeads(MedusaConfig(8, 16, 2, 3))
    blocks = [b for h in heads.heads for b in h.blocks]
    assert len({id(b) for b in blocks}) == 6
    assert len({p.data_ptr() for b in blocks for p in b.parameters()}) == 12


@pytest.mark.parametrize("which", ["context", "pending"])
def test_trigram_heads_read_their_two_tokens_and_plain_heads_none(runners, which):
    model = runners["llama"]
    torch.manual_seed(0)
    heads = MedusaHeads(MedusaConfig(model.args.dim, VOCAB, 2, 1, [True, False], trigram_tokens=which))
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.3)
    hidden = torch.randn(1, model.args.dim)
    base = logits_of(heads, model, hidden, torch.tensor([[5, 6, 8]]))
    read = (0, 1) if which == "context" else (1, 2)
    for col in range(3):
        ctx = torch.tensor([[5, 6, 8]])
        ctx[0, col] = 9
        other = logits_of(heads, model, hidden, ctx)
        assert torch.equal(other[1], base[1])
        assert torch.allclose(other[0], base[0]) == (col not in read)
    with pytest.raises(ValueError, match="context_ids"):
        logits_of(heads, model, hidden, None)


def test_save_load_round_trip_and_wrong_backbone(runners, tmp_path):
    model = runners["llama3"]
    heads = random_heads(model, 3, [True, False, True], num_layers=2)
    path = save_medusa(tmp_path / "h", heads, model, {"eval": {"rank_accuracy": [[0.5, 0.1]] * 3}})
    loaded, meta = load_medusa(path, model)
    hidden, ctx = torch.randn(4, model.args.dim), torch.randint(0, VOCAB, (4, 3))
    assert torch.equal(logits_of(heads, model, hidden, ctx), logits_of(loaded, model, hidden, ctx))
    assert meta["eval"]["rank_accuracy"][0] == [0.5, 0.1]
    with pytest.raises(ValueError, match="different backbone"):
        load_medusa(path, runners["qwen2"])  # same shapes, other weights


def test_corrupt_checkpoints_fail_clearly(runners, tmp_path):
    model = runners["llama"]
    path = save_medusa(tmp_path / "h", random_heads(model, 2, False), model)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_medusa(path, model)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_medusa(path, model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_medusa(tmp_path / "nothing", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_medusa(tmp_path / "empty", model)


def official_state(model, n_heads: int, n_layers: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, v = model.args.dim, model.args.vocab_size
    state = {}
    for i in range(n_heads):
        for j in range(n_layers):
            state[f"{i}.{j}.linear.weight"] = torch.randn(d, d, generator=g) * 0.2
            state[f"{i}.{j}.linear.bias"] = torch.randn(d, generator=g) * 0.2
        state[f"{i}.{n_layers}.weight"] = torch.randn(v, d, generator=g) * 0.2
    return state


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_official_medusa_layout_loads(runners, tmp_path, fmt):
    from safetensors.torch import save_file

    model = runners["vicuna"]
    state = official_state(model, 3, 2)
    (tmp_path / "config.json").write_text(json.dumps({"medusa_num_heads": 3, "medusa_num_layers": 2,
                                                      "base_model_name_or_path": "lmsys/vicuna-7b-v1.3"}))
    if fmt == "pt":
        torch.save(state, tmp_path / "medusa_lm_head.pt")
    else:
        save_file(state, str(tmp_path / "medusa_lm_head.safetensors"))
    heads, meta = load_medusa(tmp_path, model)
    assert meta["source"] == "official" and heads.config.own_lm_head
    hidden = torch.randn(4, model.args.dim)
    for i in range(3):
        x = hidden
        for j in range(2):
            x = x + F.silu(x @ state[f"{i}.{j}.linear.weight"].T + state[f"{i}.{j}.linear.bias"])
        assert torch.allclose(logits_of(heads, model, hidden, None)[i], x @ state[f"{i}.2.weight"].T, atol=1e-5)


def test_official_layout_errors(runners, tmp_path):
    model = runners["vicuna"]
    (tmp_path / "config.json").write_text(json.dumps({"medusa_num_heads": 2, "medusa_num_layers": 1}))
    with pytest.raises(FileNotFoundError, match="medusa_lm_head"):
        load_medusa(tmp_path, model)
    state = official_state(model, 2, 1)
    state["1.1.weight"] = state["0.1.weight"] = torch.randn(VOCAB + 1, model.args.dim)
    torch.save(state, tmp_path / "medusa_lm_head.pt")
    with pytest.raises(ValueError, match="another backbone"):
        load_medusa(tmp_path, model)
    torch.save({"0.1.weight": random.Random}, tmp_path / "medusa_lm_head.pt")  # not tensors: never unpickled
    with pytest.raises(ValueError, match="plain tensors"):
        load_medusa(tmp_path, model)


def brute_force_best(acc: list[list[float]], n: int) -> float:
    """The largest total path probability of any n nodes closed under parents (every subtree, enumerated)."""
    nodes = [c for d in range(1, len(acc) + 1) for c in itertools.product(*[range(len(a)) for a in acc[:d]])]
    prob = {c: math.prod(acc[i][r] for i, r in enumerate(c)) for c in nodes}
    best = 0.0
    for subset in itertools.combinations(nodes, n):
        s = set(subset)
        if all(len(c) == 1 or c[:-1] in s for c in subset):
            best = max(best, sum(prob[c] for c in subset))
    return best


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=3), min_size=1, max_size=3), st.integers(1, 5))
def test_sparse_tree_is_optimal(acc, n):
    acc = [sorted(a, reverse=True) for a in acc]
    n_all = sum(math.prod(len(a) for a in acc[:d]) for d in range(1, len(acc) + 1))
    tree = sparse_tree(acc, n)
    assert len(tree) == min(n, n_all) and len(set(tree)) == len(tree)
    assert all(len(c) == 1 or c[:-1] in tree for c in tree)
    got = sum(math.prod(acc[i][r] for i, r in enumerate(c)) for c in tree)
    assert got == pytest.approx(brute_force_best(acc, min(n, n_all)))


@HYP
@given(family=st.sampled_from(FAMILIES), p=st.integers(0, 3), seed=st.integers(0, 10**6), nodes=st.integers(1, 24),
       trigram=st.lists(st.booleans(), min_size=1, max_size=4), own=st.booleans(),
       draft_vocab=st.sampled_from([0, 7, 100]), lookup=st.booleans())
def test_random_heads_are_lossless(tiny_models, runners, family, p, seed, nodes, trigram, own, draft_vocab, lookup):
    model = runners[family]
    heads = random_heads(model, len(trigram), trigram, seed=seed, own=own, draft_vocab=draft_vocab)
    drafter = MedusaDrafter(model, heads, tree=nodes, lookup=NgramConfig(min_ngram=1, draft_len=5) if lookup else False)
    res = decode(model, PROMPTS[p], drafter, max_new_tokens=32)
    assert res.tokens == tiny_models[family].greedy(PROMPTS[p], 32)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 1.01])
def test_confidence_gate_is_lossless_and_gates(tiny_models, runners, threshold):
    model = runners["qwen2"]
    drafter = MedusaDrafter(model, random_heads(model, 3, [False, True, True], seed=3), tree=6,
                            min_confidence=threshold)
    res = decode(model, PROMPTS[1], drafter, max_new_tokens=32)
    assert res.tokens == tiny_models["qwen2"].greedy(PROMPTS[1], 32)
    assert (max(res.stats.tree_sizes) == 1) == (threshold > 1)


def test_tree_specs(runners):
    model = runners["llama"]
    heads = random_heads(model, 2, False)
    assert MedusaDrafter(model, heads, tree="[[0], [1], [0, 0]]").choices == [(0,), (1,), (0, 0)]
    assert len(MedusaDrafter(model, heads, tree="auto").choices) == 7
    for bad in ("bushy", 0, "[[0, 0, 0]]", "[[1, 0]]"):
        with pytest.raises(ValueError, match="tree spec"):
            MedusaDrafter(model, heads, tree=bad)


def test_registry_builds_medusa_from_a_checkpoint(runners, tmp_path):
    model = runners["mistral"]
    path = save_medusa(tmp_path / "h", random_heads(model, 3, [True] * 3), model)
    drafter = make_drafter("medusa-trigram", model=model, weights=str(path), tree=6)
    assert drafter.name == "medusa-trigram" and len(drafter.choices) == 6
    with pytest.raises(FileNotFoundError, match="no shipped"):
        make_drafter("medusa", model=model)
