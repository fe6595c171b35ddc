"""Export to vLLM's layouts, without vLLM: every exported draft reads back through our loaders to the same draft
logits (fp32), the configs carry what vLLM reads, and what a layout cannot express is a clear error."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import SCRIPTS, run_script
from specdec.eagle import load_eagle, save_eagle
from specdec.export import export_backbone, export_draft, export_eagle, fold_fc_bias
from specdec.medusa import load_medusa, save_medusa
from test_eagle import random_draft
from test_eagle3 import random_eagle3
from test_medusa import logits_of, random_heads

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILIES = ("llama3", "qwen2")  # GQA + tied embeddings; q/k/v biases (vLLM: attention_bias with a zero o_proj bias)


@pytest.fixture(scope="module")
def runners(tiny_models):
    return {f: tiny_models[f].load() for f in FAMILIES}


def draft_logits(draft, model, seed: int = 0) -> torch.Tensor:
    """Three chained draft steps from random backbone features: the logits of each (draft vocabulary or full)."""
    g = torch.Generator().manual_seed(seed)
    width = len(draft.hidden_layers) * model.args.dim if draft.hidden_layers else model.args.dim
    feats = torch.randn(5, width, generator=g)
    tokens = torch.randint(0, model.args.vocab_size, (5,), generator=g)
    kv = draft.new_cache(16)
    out = draft(feats, tokens, model.tok_embeddings.weight, model.rope_cos[:5], model.rope_sin[:5], kv, 0, None)
    rows = [draft.logits(out, model.output.weight)]
    for step in range(2):
        nxt = rows[-1][-1:].argmax(-1)
        mask = torch.ones(1, 6 + step, dtype=torch.bool)
        pos = torch.tensor([5 + step])
        out = draft(out[-1:], draft.vocab_ids[nxt], model.tok_embeddings.weight, model.rope_cos[pos],
                    model.rope_sin[pos], kv, 5 + step, mask)
        rows.append(draft.logits(out, model.output.weight))
    return torch.cat(rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_eagle3_speculators_format_round_trips(runners, tmp_path, family):
    model = runners[family]
    draft = random_eagle3(model, seed=3, draft_vocab=96, aux=[1, 2, 2])
    e = export_draft(draft, model, tmp_path / "eagle3", tmp_path / "backbone", speculative_tokens=4, dtype="fp32")
    cfg = json.loads((e.path / "config.json").read_text())
    assert cfg["speculators_model_type"] == "eagle3" and cfg["draft_vocab_size"] == 96
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [1, 2, 2] and cfg["norm_before_residual"] is False
    assert cfg["target_hidden_size"] == model.args.dim
    assert cfg["transformer_layer_config"]["num_hidden_layers"] == 1
    assert cfg["transformer_layer_config"]["attention_bias"] == (family == "qwen2")
    assert cfg["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 4
    assert e.speculative_config == {"method": "eagle3", "model": str(e.path), "num_speculative_tokens": 4}
    back, meta = load_eagle(e.path, model)
    assert meta["source"] == "official" and back.config.aux_layers == [1, 2, 2]
    assert torch.equal(back.vocab_ids, draft.vocab_ids)
    torch.testing.assert_close(draft_logits(back, model), draft_logits(draft, model), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_eagle_layout_folds_the_fc_bias_and_round_trips(runners, tmp_path, family):
    model = runners[family]
    draft = random_draft(model, seed=4, draft_vocab=80)
    with torch.no_grad():
        draft.fc.bias.normal_(0, 0.5)
    e = export_eagle(draft, model, tmp_path / "eagle", dtype=torch.float32)
    assert any("fc bias folded" in n for n in e.notes) and any("80 tokens" in n for n in e.notes)
    cfg = json.loads((e.path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_hidden_layers"] == 1
    back, _ = load_eagle(e.path, model)
    assert back.config.fc_bias and not back.config.draft_vocab  # vLLM's EAGLE-1 scores the whole vocabulary
    torch.testing.assert_close(back.fc.bias, draft.fc.bias, rtol=1e-4, atol=1e-4)
    ours = draft_logits(draft, model)
    theirs = draft_logits(back, model)[:, draft.vocab_ids]
    torch.testing.assert_close(theirs[:5], ours[:5], rtol=1e-4, atol=1e-4)  # later steps may pick outside the cut


def test_fc_bias_that_cannot_be_folded_is_refused(runners):
    model = runners["llama3"]
    draft = random_draft(model)
    with torch.no_grad():
        draft.fc.weight[:, : model.args.dim] = 0.0
        draft.fc.bias.fill_(1.0)
    with pytest.raises(ValueError, match="cannot be folded"):
        fold_fc_bias(draft, model.tok_embeddings.weight)


@pytest.mark.parametrize("own,draft_vocab", [(False, 0), (False, 100), (True, 100)])
def test_medusa_layout_round_trips(runners, tmp_path, own, draft_vocab):
    model = runners["llama3"]
    heads = random_heads(model, 3, False, num_layers=2, seed=5, own=own, draft_vocab=draft_vocab)
    e = export_draft(heads, model, tmp_path / "medusa", tmp_path / "backbone", dtype="fp32")
    cfg = json.loads((e.path / "config.json").read_text())
    assert (cfg["num_heads"], cfg["num_hidden_layers"], cfg["original_lm_head"]) == (3, 2, not own)
    assert cfg["truncated_vocab_size"] == (draft_vocab or model.args.vocab_size)
    assert bool(e.engine_args) == bool(draft_vocab) and e.speculative_config["num_speculative_tokens"] == 3
    back, meta = load_medusa(e.path, model)
    assert meta["source"] == "vllm" and back.config.own_lm_head == own
    hidden = torch.randn(6, model.args.dim)
    torch.testing.assert_close(logits_of(back, model, hidden, None), logits_of(heads, model, hidden, None),
                               rtol=1e-5, atol=1e-5)
    assert not draft_vocab or torch.equal(back.vocab_ids, heads.vocab_ids)


def test_trigram_heads_are_refused_with_the_reason(runners, tmp_path):
    model = runners["llama3"]
    with pytest.raises(ValueError, match="trigram-conditioned Medusa heads cannot be exported.*last hidden state"):
        export_draft(random_heads(model, 2, [True, False]), model, tmp_path / "m", tmp_path / "b")
    assert not (tmp_path / "m").exists()


def test_backbone_gets_architectures_and_the_source_is_untouched(tiny_models, tmp_path):
    src = tiny_models["qwen2"].path
    before = (src / "config.json").read_text()
    cfg = json.loads(before)
    cfg.pop("architectures", None)
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in src.iterdir():
        (bare / f.name).write_bytes(f.read_bytes())
    (bare / "config.json").write_text(json.dumps(cfg))
    out = export_backbone(bare, tmp_path / "served")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    assert "architectures" not in json.loads((bare / "config.json").read_text())
    assert (out / "model.safetensors").resolve() == (bare / "model.safetensors").resolve()
    assert (src / "config.json").read_text() == before


def test_export_script_writes_every_draft_and_prints_serve_commands(runners, tiny_models, tmp_path):
    model = runners["llama3"]
    save_eagle(tmp_path / "eagle3", random_eagle3(model, draft_vocab=64), model)
    save_medusa(tmp_path / "medusa", random_heads(model, 2, False, draft_vocab=50), model)
    proc = run_script(SCRIPTS / "export_heads.py", "--backbone", str(tiny_models["llama3"].path), "--weights",
                      str(tmp_path / "eagle3"), "--weights", str(tmp_path / "medusa"), "--out", str(tmp_path / "out"),
                      "--dtype", "fp32")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("vllm serve") == 2 and "--model-loader-extra-config" in proc.stdout
    assert json.loads((tmp_path / "out" / "backbone" / "config.json").read_text())["architectures"]
    back, _ = load_medusa(tmp_path / "out" / "medusa", model)
    assert back.config.draft_vocab == 50
    proc = run_script(SCRIPTS / "export_heads.py", "--weights", "medusa-trigram", "--out", str(tmp_path / "t"))
    assert proc.returncode == 2 and "trigram-conditioned" in proc.stderr
