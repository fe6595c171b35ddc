"""Int8 backbones: speculative greedy over an int8 runner equals that runner's plain greedy, the quantised weights
round-trip through safetensors, the CPU kernels compute what the dequantised weights say, and the memory plan adds
up."""
from __future__ import annotations

import importlib.util
import json
import random

import pytest
import torch
import torch.nn.functional as F

from conftest import CONTEXT, SCRIPTS, VOCAB, run_script
from specdec.backbone import load_transformer
from specdec.decode import decode
from specdec.drafters import LookaheadConfig, LookaheadDrafter, MedusaDrafter, NgramConfig, NgramDrafter
from specdec.medusa import MedusaConfig, MedusaHeads
from specdec.quantize import WeightOnlyInt8Linear, int8_weight, load_int8, quantize_model, save_int8
from specdec.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
FAMILIES = ("llama", "llama3", "qwen2")  # untied MHA; tied GQA with llama3 rope; qkv bias
N = 40


def _prompts() -> list[list[int]]:
    rng = random.Random(7)
    motif = [rng.randrange(3, VOCAB) for _ in range(5)]
    return [[rng.randrange(3, VOCAB) for _ in range(9)], motif * 4 + motif[:2]]


PROMPTS = _prompts()


@pytest.fixture(scope="module")
def int8_runners(tiny_models):
    runners = {}
    for family in FAMILIES:
        runners[family] = load_transformer(tiny_models[family].path, quantize="int8")
        runners[family].setup_cache(CONTEXT)
    return runners


def random_heads(model, seed: int) -> MedusaHeads:
    torch.manual_seed(seed)
    heads = MedusaHeads(MedusaConfig(model.args.dim, model.args.vocab_size, 3, 1, [False, True, False]))
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.3)
    return heads.eval()


def drafters(model) -> dict:
    return {"ngram": NgramDrafter(NgramConfig(min_ngram=1, draft_len=6, max_branches=3)),
            "lookahead": LookaheadDrafter(LookaheadConfig(window=3, ngram=3, guesses=3, always_window=True)),
            "medusa": MedusaDrafter(model, random_heads(model, 1), tree=8, min_confidence=0.0)}


@pytest.mark.parametrize("family", FAMILIES)
def test_speculative_greedy_equals_plain_greedy_of_the_int8_backbone(tiny_models, int8_runners, family):
    model = int8_runners[family]
    assert isinstance(model.layers[0].feed_forward.w13, WeightOnlyInt8Linear)
    assert isinstance(model.output, WeightOnlyInt8Linear)
    for prompt in PROMPTS:
        plain = decode(model, prompt, max_new_tokens=N).tokens
        for name, drafter in drafters(model).items():
            res = decode(model, prompt, drafter, max_new_tokens=N)
            assert res.tokens == plain, name


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_logits_stay_close_to_float(tiny_models, int8_runners, family):
    """int8 is another model (on these chaotic random models argmax moves at ~10% of positions), but a close one."""
    float_model, model = tiny_models[family].load(), int8_runners[family]
    model.reset()
    ids = torch.tensor(PROMPTS[0] + PROMPTS[1])
    want, got = float_model.forward(ids).logits, model.forward(ids).logits
    model.reset()
    assert (got - want).norm() / want.norm() < 0.1
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.7


def test_drafts_are_accepted_on_an_int8_backbone(int8_runners):
    taus = [decode(m, p, drafters(m)["ngram"], max_new_tokens=N).stats.tau
            for m in int8_runners.values() for p in PROMPTS]
    assert max(taus) > 2


def test_tied_lm_head_is_quantised_without_touching_the_embedding(tiny_models, int8_runners):
    float_model = tiny_models["llama3"].load()
    model = int8_runners["llama3"]
    assert model.args.tie_embeddings
    assert model.tok_embeddings.weight.dtype == torch.float32
    assert torch.equal(model.tok_embeddings.weight, float_model.tok_embeddings.weight)
    assert model.output.int8_weight.dtype == torch.int8
    q, scale = int8_weight(float_model.tok_embeddings.weight)
    assert torch.equal(model.output.int8_weight, q) and torch.equal(model.output.scales, scale)
    assert model.kv.dtype == torch.float32


def test_quantisation_is_deterministic_and_within_half_a_step():
    w = torch.randn(64, 48) * torch.rand(64, 1) * 3
    q, scale = int8_weight(w)
    q2, scale2 = int8_weight(w.clone())
    assert torch.equal(q, q2) and torch.equal(scale, scale2)
    assert q.abs().max() <= 127 and (q.abs().amax(1) == 127).all()
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("bias", [False, True])
def test_cpu_kernels_match_the_dequantised_weight(monkeypatch, dtype, tol, bias):
    monkeypatch.setattr("specdec.quantize.CPU_BLOCK_ELEMENTS", 7 * 48)  # several blocks and a ragged last one
    linear = torch.nn.Linear(48, 50, bias=bias).to(dtype)
    q = WeightOnlyInt8Linear.from_linear(linear, "cpu")
    for k in (1, 5):
        x = torch.randn(k, 48, dtype=dtype)
        want = F.linear(x.float(), q.weight.float(), None if q.bias is None else q.bias.float())
        got = q(x)
        assert got.dtype == dtype and got.shape == (k, 50)
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)


def test_int8_weights_round_trip_through_safetensors(int8_runners, tmp_path):
    for family in ("llama3", "qwen2"):
        model = int8_runners[family]
        path = save_int8(model, tmp_path / f"{family}.safetensors")
        back = load_int8(path)
        assert back.state_dict().keys() == model.state_dict().keys()
        for k, v in model.state_dict().items():
            assert torch.equal(back.state_dict()[k], v) and back.state_dict()[k].dtype == v.dtype, k
        back.setup_cache(CONTEXT)
        assert decode(back, PROMPTS[0], max_new_tokens=12).tokens == decode(model, PROMPTS[0], max_new_tokens=12).tokens


def test_load_int8_refuses_a_float_checkpoint(tiny_models):
    with pytest.raises(ValueError, match="not an int8 runner checkpoint"):
        load_int8(next(tiny_models["llama"].path.glob("*.safetensors")))


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_bitsandbytes_vectorwise_int8_backbone_is_lossless(tiny_models):
    """bitsandbytes on CPU, outlier threshold 0 (threshold > 0 computes a batch's outlier columns in float for all
    its rows, so a tree verify is not guaranteed to equal one-token steps)."""
    import bitsandbytes as bnb

    model = quantize_model(tiny_models["qwen2"].load(), "bnb-int8", bnb_threshold=0.0)
    assert isinstance(model.layers[0].attention.wqkv, bnb.nn.Linear8bitLt)
    assert model.layers[0].attention.wqkv.weight.dtype == torch.int8
    # as transformers
    assert not isinstance(model.output, bnb.nn.Linear8bitLt) and model.output.weight.dtype == torch.float32
    for prompt in PROMPTS:
        plain = decode(model, prompt, max_new_tokens=24).tokens
        for name, drafter in drafters(model).items():
            assert decode(model, prompt, drafter, max_new_tokens=24).tokens == plain, name


def memory_plan(*flags: str) -> dict:
    """scripts/memory_plan.py's plan for these flags, as the JSON it prints."""
    proc = run_script(SCRIPTS / "memory_plan.py", *flags, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_memory_plan_matches_a_hand_count_for_13b_int8():
    p = memory_plan("--model", "13b", "--quantize", "int8", "--dtype", "fp16", "--context", "2048", "--tree", "64",
                    "--medusa-heads", "4")
    d, layers, inter, vocab = 5120, 40, 13824, 32000
    per_layer_int8 = d * 3 * d + d * d + d * 2 * inter + inter * d  # wqkv, wo, w13, w2: 1 byte each
    per_layer_scales = (3 * d + d + 2 * inter + d) * 2
    weights = layers * (per_layer_int8 + per_layer_scales + 2 * d * 2) + vocab * d * 2 + vocab * d + vocab * 2 + d * 2
    assert p["weights"] == weights == 13_184_442_880  # 12.28 GiB, added up by hand
    assert p["kv_cache"] == 40 * 2 * 5120 * (2048 + 64) * 2
    assert p["drafter_weights"] == 4 * (d * d + d) * 2 + vocab * d * 2  # heads + a float copy of the int8 lm_head
    tokens = 2048
    per_token = 3 * d + 3 * d + d + 3 * inter
    assert p["activations"] == (tokens * per_token + 40 * tokens * tokens + vocab) * 2
    assert p["total"] == p["weights"] + p["kv_cache"] + p["drafter_weights"] + p["activations"]
    assert p["fits"] == {"32GB": True, "48GB": True, "80GB": True}
    fp16 = memory_plan("--model", "13b", "--dtype", "fp16", "--context", "2048")
    assert fp16["weights"] == layers * (per_layer_int8 * 2 + 2 * d * 2) + 2 * vocab * d * 2 + d * 2


def test_train_heads_over_an_int8_backbone(tiny_models, tmp_path):
    """--quantize int8: the heads' frozen lm_head is the int8 backbone's, and the saved heads load on that backbone."""
    from test_train_heads import config_for, make_distill

    tiny = tiny_models["llama"]
    model = load_transformer(tiny.path, quantize="int8")
    model.setup_cache(CONTEXT)
    make_distill(model, tmp_path / "train.jsonl", 6, seed=1, answer_len=24)
    make_distill(model, tmp_path / "eval.jsonl", 2, seed=2, answer_len=24)
    out = train(config_for(tiny, tmp_path, tmp_path / "run", quantize="int8", epochs=1))
    assert out["step"] == out["total_steps"]
    drafter = MedusaDrafter(model, str(tmp_path / "run" / "heads"), tree=6, min_confidence=0.0)
    assert (decode(model, PROMPTS[0], drafter, max_new_tokens=16).tokens
            == decode(model, PROMPTS[0], max_new_tokens=16).tokens)


@pytest.mark.real
def test_shipped_weights_fit_the_int8_backbone_they_were_trained_on():
    """An int8 SmolLM2 is still SmolLM2: every shipped draft loads over it (its lm_head probe moves by up to half a
    quantisation step), while a float backbone with other weights is still refused."""
    from specdec.backbone import load_backbone
    from specdec.checkpoint import SHIPPED, shipped_heads

    model = load_backbone(dtype="bf16", max_seq_len=64, quantize="int8").model
    kinds = sorted(p.name for p in SHIPPED.glob("smollm2-135m-instruct/*"))
    assert {"eagle", "eagle3", "early-exit", "medusa"} <= set(kinds)
    for kind in kinds:
        assert shipped_heads(model, kind).name == kind
    other = load_backbone(dtype="bf16", max_seq_len=64).model
    with torch.no_grad():
        other.output.weight.mul_(1.1)
    with pytest.raises(FileNotFoundError, match="no shipped"):
        shipped_heads(other, "eagle")
