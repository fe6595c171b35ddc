"""EAGLE-3: the draft (fused layers, 2d-wide attention input, draft vocabulary with d2t / t2d), the official layout
against transformers' Llama layer, lossless greedy decoding with random drafts on every family, the incremental
draft cache against recomputation, and the training-time test against step-by-step drafting."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from conftest import FAMILIES
from specdec.decode import decode
from specdec.drafters import make_drafter
from specdec.drafters.eagle import EagleDrafter, eagle3
from specdec.drafters.ngram import NgramConfig
from specdec.eagle import load_eagle, save_eagle
from specdec.eagle3 import Eagle3Config, Eagle3Draft, default_aux_layers, official_state
from specdec.training.data import SequenceData
from test_eagle import PROMPTS, assert_rollouts_match_drafting

pytestmark = pytest.mark.usefixtures("one_thread")
HYP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def runners(tiny_models):
    return {f: tiny_models[f].load() for f in FAMILIES}


def random_eagle3(model, seed: int = 0, draft_vocab: int = 64, aux: list[int] | None = None) -> Eagle3Draft:
    torch.manual_seed(seed)
    a = model.args
    draft = Eagle3Draft(Eagle3Config(a.dim, a.vocab_size, draft_vocab, aux or [1, 2]), a)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name
                    else 0.6 * torch.randn_like(p) / p.shape[-1] ** 0.5)
    draft.set_vocab(torch.randperm(a.vocab_size)[:draft_vocab])
    return draft.eval().requires_grad_(False)


def test_config_and_vocabulary_maps():
    assert default_aux_layers(32) == (2, 16, 29) and default_aux_layers(30) == (2, 15, 27)
    with pytest.raises(ValueError, match="at least two"):
        Eagle3Config(8, 100, 10, [3])
    with pytest.raises(ValueError, match="draft_vocab"):
        Eagle3Config(8, 100, 0)


def test_vocabulary_maps_are_eagle3s(runners):
    model = runners["llama"]
    draft = random_eagle3(model, draft_vocab=5)
    ids = torch.tensor([40, 3, 511, 17, 200])
    draft.set_vocab(ids)
    target = torch.arange(5) + draft.d2t  # EAGLE-3: target id = draft id + d2t[draft id], draft ids in target order
    assert target.tolist() == [3, 17, 40, 200, 511] and draft.vocab_ids.tolist() == target.tolist()
    assert draft.t2d.sum() == 5 and draft.t2d[ids].all()
    with pytest.raises(ValueError, match="distinct"):
        draft.set_vocab(torch.tensor([1, 1, 2, 3, 4]))


@HYP
@given(family=st.sampled_from(FAMILIES), p=st.integers(0, 3), seed=st.integers(0, 10**6), depth=st.integers(1, 5),
       top_k=st.integers(1, 5), total=st.integers(1, 30), draft_vocab=st.sampled_from([1, 9, 100, 512]),
       costed=st.booleans(), lookup=st.booleans(), aux=st.sampled_from([[1, 2], [2, 1, 1], [1, 2, 2]]))
def test_random_eagle3_drafts_are_lossless(tiny_models, runners, family, p, seed, depth, top_k, total, draft_vocab,
                                           costed, lookup, aux):
    model = runners[family]
    chain = NgramConfig(min_ngram=1, draft_len=6) if lookup else False
    drafter = eagle3(model, random_eagle3(model, seed, draft_vocab, aux), depth=depth, top_k=top_k, total_tokens=total,
                     verify_cost=None if costed else {}, lookup=chain)
    assert drafter.name == "eagle3" + ("+lookup" if lookup else "")
    assert drafter.hidden_layers == tuple(i - 1 for i in aux)
    res = decode(model, PROMPTS[p], drafter, max_new_tokens=40)
    assert res.tokens == tiny_models[family].greedy(PROMPTS[p], 40)
    assert max(res.stats.tree_sizes) <= total + (6 if lookup else 0)


@torch.no_grad()
def chain_logprobs(model, draft: Eagle3Draft, prompt_feats: torch.Tensor, tokens: list[int],
                   path: list[int]) -> list[float]:
    """Log-probability of each token on `path`, recomputed from scratch: fused features for the verified text, then
    the draft's own outputs, one fresh causal pass per step."""
    embed = model.tok_embeddings.weight
    feats, toks, out = list(draft.fc(prompt_feats)), tokens[1:], []
    for token in path:
        n = len(feats)
        pos = torch.arange(n)
        h = draft(torch.stack(feats), torch.tensor(toks), embed, model.rope_cos[pos], model.rope_sin[pos],
                  draft.new_cache(n), 0, None)
        logp = F.log_softmax(draft.logits(h[-1]).float(), dim=-1)
        out.append(float(logp[int((draft.vocab_ids == token).nonzero()[0, 0])]))
        feats.append(h[-1])
        toks.append(token)
    return out


def test_tree_scores_equal_a_recomputation_from_scratch(runners):
    model = runners["llama3"]
    draft = random_eagle3(model, seed=4, draft_vocab=100)
    drafter = eagle3(model, draft, depth=4, top_k=3, total_tokens=40, verify_cost={})
    prompt = PROMPTS[0]
    model.reset()
    out = model.forward(torch.tensor(prompt), hidden_layers=drafter.hidden_layers)
    model.commit(None, len(prompt))
    from specdec.drafters.base import DecodeState
    state = DecodeState(tokens=prompt + [int(out.logits[-1].argmax())], prompt_len=len(prompt), hidden=out.hidden,
                        layers=out.layers)
    drafter.begin(state)
    fused = draft.decode_features(out.hidden, out.layers)
    tokens, parents, scores = (c[0] for c in EagleDrafter.candidates([drafter]))
    for leaf in range(len(tokens)):
        path, node = [], leaf
        while node >= 0:
            path.append(int(tokens[node]))
            node = int(parents[node])
        expected = sum(chain_logprobs(model, draft, fused, state.tokens, path[::-1]))
        assert float(scores[leaf]) == pytest.approx(expected, abs=1e-4)


def official_files(tmp_path, model, draft: Eagle3Draft, fmt: str = "safetensors") -> None:
    a = model.args
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_size": a.dim,
           "intermediate_size": a.intermediate_size, "num_attention_heads": a.n_heads,
           "num_key_value_heads": a.n_kv_heads, "num_hidden_layers": 1, "rms_norm_eps": a.norm_eps,
           "vocab_size": a.vocab_size, "draft_vocab_size": draft.config.draft_vocab,
           "eagle_config": {"eagle_aux_hidden_state_layer_ids": draft.config.aux_layers}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    state = official_state(draft)
    if fmt == "safetensors":
        save_file(state, str(tmp_path / "model.safetensors"))
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_official_layout_matches_transformers_llama_layer(runners, tiny_models, tmp_path, fmt):
    """The official file's keys (fc, midlayer.*, norm, lm_head, d2t, t2d) loaded, and the draft's forward equal to
    EAGLE-3's layer built from transformers' Llama modules on the same weights."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

    model = runners["llama"]
    mine = random_eagle3(model, seed=7, draft_vocab=50)
    official_files(tmp_path, model, mine, fmt)
    state = official_state(mine)
    assert {"fc.weight", "midlayer.hidden_norm.weight", "midlayer.input_layernorm.weight", "d2t", "t2d",
            "lm_head.weight", "norm.weight"} <= set(state) and "fc.bias" not in state
    assert state["midlayer.self_attn.q_proj.weight"].shape[1] == 2 * model.args.dim
    draft, meta = load_eagle(tmp_path, model)
    assert meta == {"kind": "eagle3", "source": "official"} and isinstance(draft, Eagle3Draft)
    assert torch.equal(draft.vocab_ids, mine.vocab_ids)

    cfg = tiny_models["llama"].hf.config.to_dict()
    hf_cfg = LlamaConfig(**{k: v for k, v in cfg.items() if k in LlamaConfig().to_dict()})
    hf_cfg._attn_implementation = "eager"
    layer = LlamaDecoderLayer(hf_cfg, 0).eval()
    d, kv = model.args.dim, model.args.n_kv_heads * model.args.head_dim
    layer.self_attn.q_proj = torch.nn.Linear(2 * d, model.args.n_heads * model.args.head_dim, bias=False)
    layer.self_attn.k_proj = torch.nn.Linear(2 * d, kv, bias=False)
    layer.self_attn.v_proj = torch.nn.Linear(2 * d, kv, bias=False)
    layer.load_state_dict({k[len("midlayer."):]: v for k, v in state.items()
                           if k.startswith("midlayer.") and "hidden_norm" not in k})
    hidden_norm, norm = LlamaRMSNorm(d, hf_cfg.rms_norm_eps), LlamaRMSNorm(d, hf_cfg.rms_norm_eps)
    hidden_norm.weight.data, norm.weight.data = state["midlayer.hidden_norm.weight"], state["norm.weight"]
    n = 6
    feats = torch.randn(n, len(mine.config.aux_layers) * d)
    tokens = torch.tensor([3, 9, 27, 81, 243, 7])
    with torch.no_grad():
        h = F.linear(feats, state["fc.weight"])
        x = torch.cat((layer.input_layernorm(F.embedding(tokens, model.tok_embeddings.weight)), hidden_norm(h)), -1)
        pos = torch.arange(n)[None]
        cos, sin = LlamaRotaryEmbedding(hf_cfg)(x[None], pos)
        causal = torch.full((n, n), float("-inf")).triu(1)[None, None]
        attn = layer.self_attn(x[None], position_embeddings=(cos, sin), attention_mask=causal)[0][0]
        h = h + attn
        ref = h + layer.mlp(layer.post_attention_layernorm(h))
        ref_logits = F.linear(norm(ref), state["lm_head.weight"])
    got = draft(feats, tokens, model.tok_embeddings.weight, model.rope_cos[:n], model.rope_sin[:n], draft.new_cache(n),
                0, None)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(draft.logits(got), ref_logits, rtol=1e-4, atol=1e-4)


def test_official_layout_errors_and_our_round_trip(runners, tmp_path):
    model, other = runners["llama"], runners["vicuna"]
    draft = random_eagle3(model, 2, 40)
    official_files(tmp_path, runners["mistral"], random_eagle3(runners["mistral"], 1, 40))
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": model.args.dim + 1, "draft_vocab_size": 40}))
    with pytest.raises(ValueError, match="another backbone"):
        load_eagle(tmp_path, model)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": model.args.dim, "draft_vocab_size": 40}))
    save_file({"fc.weight": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="not the EAGLE-3 draft layout"):
        load_eagle(tmp_path, model)
    path = save_eagle(tmp_path / "ours", draft, model, {"eval": {"top1": [0.5]}})
    loaded, meta = load_eagle(path, model)
    assert meta["kind"] == "eagle3" and torch.equal(loaded.vocab_ids, draft.vocab_ids)
    for k, v in draft.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(ValueError, match="different backbone"):
        load_eagle(path, other)
    assert make_drafter("eagle3+lookup", model=model, weights=str(path)).name == "eagle3+lookup"
    assert make_drafter("eagle2", model=model, weights=str(path)).name == "eagle3"  # the checkpoint says which


@pytest.mark.parametrize("steps", [2, 4])
def test_training_time_test_reads_what_drafting_reads(runners, steps):
    """EAGLE-3's training-time test in one packed pass == drafting `steps` tokens ahead from every row, one step at a
    time: fused features for the teacher-forced entries, then the draft's own outputs."""
    model = runners["llama"]
    draft = random_eagle3(model, seed=5)
    d = model.args.dim
    g = torch.Generator().manual_seed(3)
    lengths = [9, 4, 12]
    data = SequenceData([torch.randn(n - 1, d, generator=g) for n in lengths],
                        [torch.randint(0, model.args.vocab_size, (n,), generator=g) for n in lengths], [3, 2, 5],
                        aux=[torch.randn(n - 1, 2 * d, generator=g) for n in lengths])
    assert_rollouts_match_drafting(model, draft, data, steps)
