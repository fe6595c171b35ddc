"""EAGLE / EAGLE-2: the draft model, its checkpoints (ours and the official layout), its tree drafting
(incremental draft cache == recomputation from scratch), and lossless greedy decoding with static and dynamic trees."""
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
from specdec.drafters.base import DecodeState
from specdec.drafters.eagle import EagleDrafter, eagle2
from specdec.drafters.ngram import NgramConfig
from specdec.eagle import EagleConfig, EagleDraft, load_eagle, save_eagle
from specdec.training.data import SequenceData
from specdec.training.eagle import pack, rollout_outputs

pytestmark = pytest.mark.usefixtures("one_thread")
HYP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROMPTS = [[5, 17, 9, 33, 2 + 40, 17, 9], [100, 101, 102, 103, 100, 101], [7] * 5 + [8, 9, 10], [300, 12, 45, 300, 12]]


@pytest.fixture(scope="module")
def runners(tiny_models):
    return {f: tiny_models[f].load() for f in FAMILIES}


def random_draft(model, seed: int = 0, draft_vocab: int = 0) -> EagleDraft:
    torch.manual_seed(seed)
    draft = EagleDraft(EagleConfig(model.args.dim, model.args.vocab_size, draft_vocab), model.args)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name
                    else 0.4 * torch.randn_like(p) / p.shape[-1] ** 0.5)
        draft.vocab_ids.copy_(torch.randperm(model.args.vocab_size)[: len(draft.vocab_ids)])
    return draft.eval().requires_grad_(False)


def begun(model, drafter: EagleDrafter, prompt: list[int]) -> DecodeState:
    """The decode state right after prefill, with the drafter's cache filled."""
    model.reset()
    out = model.forward(torch.tensor(prompt), hidden_layers=())
    model.commit(None, len(prompt))
    state = DecodeState(tokens=prompt + [int(out.logits[-1].argmax())], prompt_len=len(prompt), hidden=out.hidden)
    drafter.begin(state)
    return state


def chain_logprobs(model, draft: EagleDraft, state: DecodeState, path: list[int]) -> list[float]:
    """Log-probability of each token on `path` (drafted after the pending token), recomputed from scratch:
    true pairs for the verified text, then the draft's own features, one fresh causal pass per step."""
    embed, lm_head = model.tok_embeddings.weight, draft.draft_lm_head(model.output.weight)
    feats, toks = list(state.hidden), state.tokens[1:]
    out = []
    for token in path:
        n = len(feats)
        kv = draft.new_cache(n)
        pos = torch.arange(n)
        h = draft(torch.stack(feats), torch.tensor(toks), embed, model.rope_cos[pos], model.rope_sin[pos], kv, 0, None)
        logp = F.log_softmax(F.linear(h[-1], lm_head).float(), dim=-1)
        out.append(float(logp[int((draft.vocab_ids == token).nonzero()[0, 0])]))
        feats.append(h[-1])
        toks.append(token)
    return out


@pytest.mark.parametrize("tree", ["dynamic", [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0, 0]]])
@pytest.mark.parametrize("rows", [1, 3])
def test_tree_scores_equal_a_recomputation_from_scratch(runners, tree, rows):
    """Alone, or drafted together with other rows (forks begun on other prompts, as a batch drafts), each row's
    candidate scores are its paths' log-probabilities recomputed from scratch."""
    model = runners["llama3"]
    draft = random_draft(model, seed=4, draft_vocab=100)
    drafter = EagleDrafter(model, draft, tree=tree, depth=4, top_k=3, total_tokens=40, verify_cost={})
    forks = [drafter] + [drafter.fork() for _ in range(rows - 1)]
    states = [begun(model, d, PROMPTS[i]) for i, d in enumerate(forks)]
    candidates = EagleDrafter.candidates(forks)
    for state, tokens, parents, scores in zip(states, *candidates):
        assert len(tokens) == (3 + 3 * 9 if tree == "dynamic" else len(tree))
        for leaf in range(len(tokens)):
            path, node = [], leaf
            while node >= 0:
                path.append(int(tokens[node]))
                node = int(parents[node])
            expected = sum(chain_logprobs(model, draft, state, path[::-1]))
            assert float(scores[leaf]) == pytest.approx(expected, abs=1e-4)


@HYP
@given(family=st.sampled_from(FAMILIES), p=st.integers(0, 3), seed=st.integers(0, 10**6), dynamic=st.booleans(),
       depth=st.integers(1, 5), top_k=st.integers(1, 5), total=st.integers(1, 30), nodes=st.integers(1, 20),
       draft_vocab=st.sampled_from([0, 9, 100]), costed=st.booleans(), lookup=st.booleans())
def test_random_drafts_are_lossless(tiny_models, runners, family, p, seed, dynamic, depth, top_k, total, nodes,
                                    draft_vocab, costed, lookup):
    model = runners[family]
    draft = random_draft(model, seed, draft_vocab)
    cost = None if costed else {}
    chain = NgramConfig(min_ngram=1, draft_len=6) if lookup else False
    if dynamic:
        drafter = eagle2(model, draft, depth=depth, top_k=top_k, total_tokens=total, verify_cost=cost, lookup=chain)
    else:
        drafter = EagleDrafter(model, draft, tree=nodes, depth=depth, verify_cost=cost, lookup=chain)
    res = decode(model, PROMPTS[p], drafter, max_new_tokens=40)
    assert res.tokens == tiny_models[family].greedy(PROMPTS[p], 40)
    assert max(res.stats.tree_sizes) <= (total if dynamic else nodes + 1) + (6 if lookup else 0)


def test_long_generation_up_to_a_full_context(tiny_models):
    model = tiny_models["qwen2"].load(max_seq_len=64)
    drafter = eagle2(model, random_draft(model, 1), depth=4, top_k=4, total_tokens=12, verify_cost={})
    res = decode(model, PROMPTS[1], drafter, max_new_tokens=500)
    assert res.stats.stop_reason == "context" and len(res.tokens) == 64 - len(PROMPTS[1])
    assert res.tokens == tiny_models["qwen2"].greedy(PROMPTS[1], len(res.tokens))


@pytest.mark.parametrize("cost,plain", [({1: 1.0, 2: 100.0}, True), ({}, False)])
def test_expensive_verification_gives_plain_steps(tiny_models, runners, cost, plain):
    model = runners["mistral"]
    drafter = eagle2(model, random_draft(model, 2), depth=3, top_k=3, total_tokens=8, verify_cost=cost)
    res = decode(model, PROMPTS[2], drafter, max_new_tokens=20)
    assert res.tokens == tiny_models["mistral"].greedy(PROMPTS[2], 20)
    assert (set(res.stats.tree_sizes) == {1}) == plain
    if not plain:
        assert set(res.stats.tree_sizes) == {8}


def test_save_load_round_trip_wrong_backbone_and_corrupt_files(runners, tmp_path):
    model, other = runners["llama"], runners["vicuna"]
    draft = random_draft(model, 5, draft_vocab=50)
    path = save_eagle(tmp_path / "e", draft, model, {"eval": {"top1": [0.5]}})
    loaded, meta = load_eagle(path, model)
    assert meta["eval"]["top1"] == [0.5] and torch.equal(loaded.vocab_ids, draft.vocab_ids)
    for k, v in draft.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(ValueError, match="different backbone"):
        load_eagle(path, other)
    with pytest.raises(ValueError, match="'eagle'|holds"):
        from specdec.medusa import load_medusa
        load_medusa(path, model)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_eagle(path, model)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_eagle(path, model)


def official_state(model, seed: int = 0) -> dict[str, torch.Tensor]:
    """EAGLE's published key layout for a one-layer draft (no input_layernorm in layer 0)."""
    a = model.args
    g = torch.Generator().manual_seed(seed)
    kv = a.n_kv_heads * a.head_dim

    def r(*shape):
        return 0.2 * torch.randn(*shape, generator=g)

    state = {"fc.weight": r(a.dim, 2 * a.dim), "fc.bias": r(a.dim),
             "layers.0.self_attn.q_proj.weight": r(a.n_heads * a.head_dim, a.dim),
             "layers.0.self_attn.k_proj.weight": r(kv, a.dim), "layers.0.self_attn.v_proj.weight": r(kv, a.dim),
             "layers.0.self_attn.o_proj.weight": r(a.dim, a.n_heads * a.head_dim),
             "layers.0.mlp.gate_proj.weight": r(a.intermediate_size, a.dim),
             "layers.0.mlp.up_proj.weight": r(a.intermediate_size, a.dim),
             "layers.0.mlp.down_proj.weight": r(a.dim, a.intermediate_size),
             "layers.0.post_attention_layernorm.weight": 1 + r(a.dim), "embed_tokens.weight": r(a.vocab_size, a.dim)}
    return state


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_official_eagle_layout_matches_transformers_llama_layer(runners, tiny_models, tmp_path, fmt):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    model = runners["llama"]
    state = official_state(model)
    cfg = tiny_models["llama"].hf.config.to_dict()
    cfg.update(num_hidden_layers=1, bias=True, architectures=["LlamaForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    if fmt == "safetensors":
        save_file(state, str(tmp_path / "model.safetensors"))
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")
    draft, meta = load_eagle(tmp_path, model)
    assert meta["source"] == "official"

    hf_cfg = LlamaConfig(**{k: v for k, v in cfg.items() if k in LlamaConfig().to_dict()})
    hf_cfg._attn_implementation = "eager"
    layer = LlamaDecoderLayer(hf_cfg, 0).eval()
    layer.load_state_dict({k[len("layers.0."):]: v for k, v in state.items() if k.startswith("layers.0.")},
                          strict=False)
    layer.input_layernorm = torch.nn.Identity()
    n = 6
    feats, tokens = torch.randn(n, model.args.dim), torch.tensor([3, 9, 27, 81, 243, 7])
    x = F.linear(torch.cat((F.embedding(tokens, model.tok_embeddings.weight), feats), -1), state["fc.weight"],
                 state["fc.bias"])
    pos = torch.arange(n)[None]
    cos, sin = LlamaRotaryEmbedding(hf_cfg)(x[None], pos)
    causal = torch.full((n, n), float("-inf")).triu(1)[None, None]
    ref = layer(x[None], attention_mask=causal, position_ids=pos, position_embeddings=(cos, sin))
    ref = ref[0] if isinstance(ref, tuple) else ref
    got = draft(feats, tokens, model.tok_embeddings.weight, model.rope_cos[:n], model.rope_sin[:n], draft.new_cache(n),
                0, None)
    torch.testing.assert_close(got, ref[0], rtol=1e-4, atol=1e-4)


def test_official_layout_errors(runners, tmp_path):
    model = runners["llama"]
    (tmp_path / "config.json").write_text(
        json.dumps({"hidden_size": model.args.dim + 1, "vocab_size": model.args.vocab_size}))
    save_file(official_state(model), str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="another backbone"):
        load_eagle(tmp_path, model)
    (tmp_path / "config.json").write_text(
        json.dumps({"hidden_size": model.args.dim, "vocab_size": model.args.vocab_size}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="not the EAGLE draft layout"):
        load_eagle(tmp_path, model)


def test_registry_and_tree_specs(runners, tmp_path):
    model = runners["mistral"]
    path = save_eagle(tmp_path / "e", random_draft(model, 3), model)
    assert make_drafter("eagle2", model=model, weights=str(path)).name == "eagle2"
    assert make_drafter("eagle2+lookup", model=model, weights=str(path)).lookup is not None
    static = make_drafter("eagle", model=model, weights=str(path), tree="[[0], [1], [0, 0]]")
    assert static.choices == [(0,), (1,), (0, 0)] and static.depth == 2
    for bad in ("bushy", 0, "[[1, 0]]"):
        with pytest.raises(ValueError, match="tree spec"):
            EagleDrafter(model, random_draft(model), tree=bad)
    with pytest.raises(ValueError, match="at least 1"):
        eagle2(model, random_draft(model), top_k=0)
    with pytest.raises(FileNotFoundError, match="no shipped"):
        load_eagle("eagle", model)


@pytest.mark.parametrize("steps", [2, 4])
def test_multi_step_training_reads_what_drafting_reads(runners, steps):
    """Training-time test in one packed pass == drafting `steps` tokens ahead from every row, one step at a time,
    over a cache of teacher-forced entries: same inputs, same attention, same outputs."""
    model = runners["llama"]
    draft = random_draft(model, seed=5)
    g = torch.Generator().manual_seed(3)
    lengths = [9, 4, 12]
    data = SequenceData([torch.randn(n - 1, model.args.dim, generator=g) for n in lengths],
                        [torch.randint(0, model.args.vocab_size, (n,), generator=g) for n in lengths], [3, 2, 5])
    assert_rollouts_match_drafting(model, draft, data, steps)


def assert_rollouts_match_drafting(model, draft, data: SequenceData, steps: int) -> None:
    """rollout_outputs over the packed conversations == drafting from every anchor one step at a time over a cache of
    teacher-forced entries (the data's fused layers for an EAGLE-3 draft), then the draft's own outputs."""
    batch = pack(data, [0, 1, 2], torch.device("cpu"), torch.float32)
    embed, cos, sin = model.tok_embeddings.weight, model.rope_cos, model.rope_sin
    outputs = rollout_outputs(draft, batch, embed, cos, sin, steps, noise=0.0)
    row = 0
    for f, ids in zip(data.aux or data.hidden, data.tokens):
        n = len(ids) - 2
        for j in range(n):  # anchor j: teacher-forced entries 0..j, then the draft's own outputs
            kv = draft.new_cache(n + steps)
            pos = torch.arange(j + 1)
            h = draft(f[: j + 1], ids[1 : j + 2], embed, cos[pos], sin[pos], kv, 0, None)[-1:]
            torch.testing.assert_close(h, outputs[0][0][row + j : row + j + 1])
            for s in range(2, steps + 1):
                if j + s - 1 >= n:
                    break
                p = torch.tensor([j + s - 1])
                h = draft(h, ids[j + s : j + s + 1], embed, cos[p], sin[p], kv, j + s - 1, None)
                out, exists = outputs[s - 1]
                assert exists[row + j + s - 1]
                torch.testing.assert_close(h, out[row + j + s - 1 : row + j + s], atol=1e-5, rtol=1e-4)
        assert not outputs[-1][1][row : row + steps - 1].any()  # rows with no anchor `steps` back do not exist
        row += n
