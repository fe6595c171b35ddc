"""Early-exit self-speculation: drafts through the backbone's own cache equal drafts recomputed from scratch, greedy
decoding is plain greedy (every family, skip patterns, the adapter, prompt lookup, batches, int8, the real model),
sampling keeps plain sampling's distribution, and the adapter trains, saves and loads."""
from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import FAMILIES, SCRIPTS, VOCAB, run_script
from specdec.backbone import load_transformer
from specdec.batch import decode_batch
from specdec.decode import decode
from specdec.drafters import NgramConfig, NoDrafter, make_drafter
from specdec.drafters.early_exit import EarlyExitDrafter
from specdec.early_exit import exit_layers, load_adapter, new_adapter, save_adapter
from specdec.training.config import TrainConfig
from specdec.training.loop import train
from test_sampling import (
    ALPHA,
    CONFIGS,
    DRAWS,
    PROMPT,
    RULES,
    chi_square_p,
    draw,
    exact_distribution,
    small,  # noqa: F401 (the fixture)
)
from test_train_heads import make_distill

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = [[5, 17, 9, 33, 42, 17, 9], [100, 101, 102, 103, 100, 101, 102], [7] * 5 + [8, 9, 10], [300, 12, 45, 300, 12]]
N = 24
WRONG_DRAWS = 600  # a broken rule fails with fewer draws
REAL_TOKENS = 48


@pytest.fixture(scope="module")
def runners(tiny_models):
    return {f: tiny_models[f].load() for f in FAMILIES}


def random_adapter(model, layers: tuple[int, ...], seed: int = 0, draft_vocab: int = 0):
    """A fresh adapter (the backbone's next layer), perturbed so that it is not that layer; a random draft
    vocabulary that always holds the tokens the tests' prompts repeat."""
    torch.manual_seed(seed)
    vocab = None
    if draft_vocab:
        keep = torch.tensor(sorted({t for p in PROMPTS for t in p}))
        rest = torch.tensor([t for t in torch.randperm(model.args.vocab_size).tolist() if t not in set(keep.tolist())])
        vocab = torch.cat((keep, rest[: draft_vocab - len(keep)]))
    adapter = new_adapter(model, layers, vocab)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return adapter.eval()


@torch.no_grad()
def scratch_chain(model, layers, adapter, tokens: list[int], n: int) -> tuple[list[int], list[float]]:
    """The greedy draft chain after `tokens`, each step one fresh causal pass over the whole sequence through the
    drafting layers and the exit head, no cache kept: tokens and their log-probabilities."""
    a, toks, logps = model.args, list(tokens), []
    for _ in range(n):
        T = len(toks)
        x = model.tok_embeddings(torch.tensor(toks))
        cos, sin = model.rope_cos[:T], model.rope_sin[:T]
        for i in layers:
            x = model.layers[i](x, cos, sin, torch.zeros(2, a.n_kv_heads, T, a.head_dim), 0, None)
        if adapter is None:
            logp = F.log_softmax(model.output(model.norm(x[-1:]))[0], dim=-1)
            vocab = torch.arange(a.vocab_size)
        else:
            h = adapter(x, cos, sin, adapter.new_cache(T), 0, None)[-1:]
            logp = F.log_softmax(F.linear(h, adapter.draft_lm_head(model.output.weight))[0], dim=-1)
            vocab = adapter.vocab_ids
        best = int(logp.argmax())
        toks.append(int(vocab[best]))
        logps.append(float(logp[best]))
    return toks[len(tokens):], logps


class Recording(EarlyExitDrafter):
    """Keeps (tokens so far, drafted chain tokens, their log-probabilities) at every step."""

    def begin(self, state):
        super().begin(state)
        self.seen = []

    def propose(self, state):
        tokens, logps, _ = self.chains([state], self.model.kv.unsqueeze(2), [self.kv])
        scores = logps[0]
        steps = torch.cat((scores[:1], scores[1:] - scores[:-1]))
        self.seen.append((list(state.tokens), tokens[0].tolist(), steps.tolist()))
        return super().propose(state)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("adapter", [False, True])
def test_shared_cache_drafts_equal_drafts_from_scratch(tiny_models, runners, family, adapter):
    model = runners[family]
    layers = (0, 1)
    head = random_adapter(model, layers, seed=1, draft_vocab=200 if family == "qwen2" else 0) if adapter else None
    drafter = Recording(model, head, exit_layer=2, draft_len=3, min_confidence=0.0, verify_cost={},
                        lookup=NgramConfig(max_ngram=2, min_ngram=1, draft_len=3))  # lookup: tree verifies too
    for prompt in PROMPTS[:2]:
        out = decode(model, prompt, drafter, max_new_tokens=N)
        assert out.tokens == tiny_models[family].greedy(prompt, N)
        assert len(drafter.seen) >= 3
        for tokens, chain, logps in drafter.seen:
            want, want_logps = scratch_chain(model, layers, drafter.adapter, tokens, 3)
            assert chain == want
            assert logps == pytest.approx(want_logps, abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_is_plain_greedy(tiny_models, runners, family):
    model = runners[family]
    drafters = [EarlyExitDrafter(model, exit_layer=1, draft_len=4, min_confidence=0.0, verify_cost={}),
                EarlyExitDrafter(model, layers="0,2", draft_len=3, min_confidence=0.2),  # SWIFT-style skipping
                EarlyExitDrafter(model, random_adapter(model, (0,), seed=2), draft_len=2, lookup=True),
                make_drafter("early-exit+lookup", model, exit_layer=2, draft_len=5, min_confidence=0.0)]
    for drafter in drafters:
        for prompt in PROMPTS:
            assert decode(model, prompt, drafter, max_new_tokens=N).tokens == tiny_models[family].greedy(prompt, N)


def test_drafts_are_accepted_and_confidence_stops_drafting(runners):
    """On the repetitive prompts the first layers draft right often enough to be accepted; a confidence floor of
    0.99 stops almost every chain after its first token."""
    model = runners["llama"]
    eager = EarlyExitDrafter(model, exit_layer=2, draft_len=4, min_confidence=0.0, verify_cost={})
    wary = EarlyExitDrafter(model, exit_layer=2, draft_len=4, min_confidence=0.99, verify_cost={})
    sizes = {}
    for name, d in (("eager", eager), ("wary", wary)):
        stats = [decode(model, p, d, max_new_tokens=N).stats for p in PROMPTS]
        assert any(max(s.accepted) > 1 for s in stats) or name == "wary"
        sizes[name] = sum(sum(s.tree_sizes) for s in stats) / sum(len(s.tree_sizes) for s in stats)
    assert sizes["eager"] == 5 and sizes["wary"] < 3


def test_batches_draft_in_their_own_cache_rows(tiny_models, runners):
    """Rows draft together in the batch cache: each row's output is plain greedy, and its drafts (hence accepted
    counts) are the ones it drafts alone. A batch that mixes drafter kinds is refused."""
    model = runners["mistral"]
    drafter = EarlyExitDrafter(model, random_adapter(model, (0, 1), seed=3), draft_len=3, min_confidence=0.0,
                               verify_cost={})
    prompts = PROMPTS + [PROMPTS[0][:3]]
    alone = [decode(model, p, drafter, max_new_tokens=N) for p in prompts]
    for continuous in (False, True):
        batched = decode_batch(model, prompts, drafter, max_new_tokens=N, batch_size=3, continuous=continuous)
        for p, a, b in zip(prompts, alone, batched):
            assert b.tokens == a.tokens == tiny_models["mistral"].greedy(p, N)
            assert b.stats.accepted == a.stats.accepted
    with pytest.raises(ValueError, match="every row needs an early-exit drafter"):
        decode_batch(model, prompts[:2], [drafter, NoDrafter()], max_new_tokens=4)


def test_int8_backbone_is_lossless(tiny_models):
    for family in ("llama", "qwen2"):
        model = load_transformer(tiny_models[family].path, quantize="int8")
        model.setup_cache(128)
        for drafter in (EarlyExitDrafter(model, exit_layer=2, min_confidence=0.0),
                        EarlyExitDrafter(model, random_adapter(model, (0,), seed=4), lookup=True)):
            for prompt in PROMPTS:
                assert (decode(model, prompt, drafter, max_new_tokens=N).tokens
                        == decode(model, prompt, NoDrafter(), max_new_tokens=N).tokens)


def test_context_end_and_option_errors(tiny_models, runners):
    model = tiny_models["llama"].load(max_seq_len=40)
    prompt = PROMPTS[0]
    out = decode(model, prompt, EarlyExitDrafter(model, exit_layer=2, draft_len=6, min_confidence=0.0), 100)
    assert out.tokens == tiny_models["llama"].greedy(prompt, 40 - len(prompt)) and out.stats.stop_reason == "context"
    model = runners["llama"]
    assert exit_layers(30, layers="0-3,7") == (0, 1, 2, 3, 7) and exit_layers(30, 5) == (0, 1, 2, 3, 4)
    for bad in (dict(exit_layer=3), dict(exit_layer=0), dict(layers="0-2"), dict(layers="x"), dict(draft_len=0),
                dict(min_confidence=1.0)):
        with pytest.raises(ValueError):
            EarlyExitDrafter(model, **bad)
    with pytest.raises(ValueError, match="trained after layers"):
        EarlyExitDrafter(model, random_adapter(model, (0,)), exit_layer=2)


def test_adapter_round_trip_and_wrong_backbone(tiny_models, runners, tmp_path):
    model = runners["llama3"]
    adapter = random_adapter(model, (0, 1), seed=5, draft_vocab=64)
    save_adapter(tmp_path / "a", adapter, model, {"train": {"command": "x"}})
    back, meta = load_adapter(tmp_path / "a", model)
    assert back.layers == (0, 1) and torch.equal(back.vocab_ids, adapter.vocab_ids) and meta["train"]["command"] == "x"
    for k, v in adapter.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    drafter = make_drafter("early-exit-adapter", model, weights=str(tmp_path / "a"))
    assert drafter.name == "early-exit-adapter" and drafter.hidden_layers == (1,)
    with pytest.raises(ValueError, match="different backbone|trained for a backbone"):
        load_adapter(tmp_path / "a", runners["qwen2"])


def test_adapter_trains_and_decodes_losslessly(tiny_models, tmp_path):
    tiny = tiny_models["llama"]
    model = tiny.load()
    seqs = make_distill(model, tmp_path / "train.jsonl", 12, seed=1, answer_len=32)
    make_distill(model, tmp_path / "eval.jsonl", 3, seed=2, answer_len=32)
    config = TrainConfig(backbone=str(tiny.path), data=[tmp_path / "train.jsonl"], eval_data=tmp_path / "eval.jsonl",
                         out=tmp_path / "run", head="early-exit", exit_layer=1, draft_vocab=VOCAB // 2, epochs=8,
                         lr=3e-3, warmup=2, save_every=1000, eval_every=1000)
    out = train(config)
    first, last = (torch.tensor(out["losses"][s]).mean() for s in (slice(0, 3), slice(-3, None)))
    assert last < 0.8 * first, (first, last)
    acc = out["eval"]
    assert acc["positions"] == 3 * 32 and 0 <= acc["top1"][0] <= acc["top5"][0] <= 1 and acc["chain_tau"] >= 1
    drafter = make_drafter("early-exit-adapter", model, weights=str(tmp_path / "run" / "early-exit"))
    assert drafter.layers == (0,) and len(drafter.vocab_ids) == VOCAB // 2
    for ids in seqs[:3]:
        prompt = ids[:-32]
        assert decode(model, prompt, drafter, max_new_tokens=32).tokens == tiny.greedy(prompt, 32)


def test_sampling_follows_plain_sampling_and_a_wrong_rule_fails(small, monkeypatch):  # noqa: F811
    hf, model = small
    drafter = EarlyExitDrafter(model, random_adapter(model, (0,), seed=6), draft_len=2, min_confidence=0.0,
                               verify_cost={}, lookup=NgramConfig(max_ngram=2, min_ngram=1, draft_len=2))
    cfg = CONFIGS["t0.7-top4"]
    want = exact_distribution(hf, PROMPT, cfg)
    counts, accepted = draw(model, drafter, cfg)
    assert chi_square_p(counts, want, DRAWS) > ALPHA
    assert max(accepted) > 1, "no draft was ever accepted: the test would not exercise acceptance"
    # the same drafts under a broken acceptance rule (the bonus after a rejection drawn from p, not the residual)
    monkeypatch.setattr(sys.modules["specdec.decode"], "tree_sample_accept", RULES["no-residual"])
    counts, _ = draw(model, drafter, cfg, n=WRONG_DRAWS)
    assert chi_square_p(counts, want, WRONG_DRAWS) < ALPHA


@pytest.mark.real
def test_real_model_greedy_is_plain_greedy():
    """SmolLM2-135M in fp32 on one MT-Bench question: training-free exits, a skip pattern and the shipped adapter."""
    from specdec.backbone import load_backbone
    from specdec.data import load_mtbench

    smol = load_backbone(dtype="fp32", max_seq_len=1024)
    model = smol.model
    prompt = smol.encode_chat(load_mtbench()[10].turns[0])
    plain = decode(model, prompt, NoDrafter(), REAL_TOKENS, smol.stop_ids).tokens
    for drafter in (make_drafter("early-exit", model, exit_layer=24),
                    make_drafter("early-exit+lookup", model, layers="0-19,24-27"),
                    make_drafter("early-exit-adapter+lookup", model)):
        out = decode(model, prompt, drafter, REAL_TOKENS, smol.stop_ids)
        assert out.tokens == plain, drafter.name
        assert max(out.stats.accepted) > 1, drafter.name


@pytest.mark.real
def test_sweep_exit_quick(tmp_path):
    """scripts/sweep_exit.py --quick on the real SmolLM2 (fp32): every exit measured, lossless, the best marked."""
    proc = run_script(SCRIPTS / "sweep_exit.py", "--quick", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "sweep_exit.json").read_text())
    rows = data["rows"]
    assert [(r["variant"], r["exit_layer"]) for r in rows] == [("training-free", 2), ("training-free", 24),
                                                               ("adapter", 6)]
    for r in rows:
        assert 0 <= r["acceptance"] <= 1 and r["draft_x"] > 0 and r["tau"] >= 1 and r["identical"]
    assert [r["best"] for r in rows].count(True) == 2 and data["best"]["adapter"]["exit_layer"] == 6
    md = (tmp_path / "sweep_exit.md").read_text()
    assert md.count("**best**") == 2 and "MT-Bench detail" in md and (tmp_path / "sweep_exit.png").is_file()
