"""The lean runner against transformers: same logits (fp32, 1e-4 + 1e-5 of their scale) for every architecture path,
for full prompts, incremental chains, tree-masked verify forwards, KV commit and hidden layers."""
from __future__ import annotations

import random

import pytest
import torch

from conftest import FAMILIES, VOCAB
from specdec.model import ModelArgs, Transformer
from specdec.tree import shape_from_parents

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-4
# oneDNN's packed fp32 GEMM sums in another order than transformers' matmuls: rounding grows with the values' scale
RTOL = 1e-5


def rand_ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, VOCAB) for _ in range(n)]


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    err = (ours.float() - ref.float()).abs().max().item()
    tol = ATOL + RTOL * ref.float().abs().max().item()
    assert err <= tol, f"{what}: max |diff| {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_logits_match_hf(tiny_models, family):
    tm = tiny_models[family]
    model = tm.load()
    ids = rand_ids(37, seed=1)
    out = model.forward(torch.tensor(ids))
    assert_close(out.logits, tm.logits(ids), f"{family} prompt logits")
    # logits_for selects rows without changing them
    model.reset()
    last = model.forward(torch.tensor(ids), logits_for=slice(-1, None))
    assert last.logits.shape == (1, VOCAB)
    assert_close(last.logits[0], tm.logits(ids)[-1], f"{family} logits_for=slice(-1, None)")


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_chain_and_single_steps_match_hf(tiny_models, family):
    """Prefill, commit, then a causal chain of k tokens (no mask given), then single tokens."""
    tm = tiny_models[family]
    model = tm.load()
    ids = rand_ids(30, seed=2)
    ref = tm.logits(ids)
    model.forward(torch.tensor(ids[:20]))
    model.commit(None, 20)
    chain = model.forward(torch.tensor(ids[20:27]))
    assert_close(chain.logits, ref[20:27], f"{family} chain of 7 after a 20-token prefix")
    model.commit(None, 7)
    assert model.length == 27
    for t in range(27, 30):
        step = model.forward(torch.tensor([ids[t]]))
        model.commit(None, 1)
        assert_close(step.logits[0], ref[t], f"{family} single step at position {t}")


TREE_PARENTS = (-1, 0, 0, 1, 1, 2, 4, 4, 3, 0, 6)


@pytest.mark.parametrize("family", FAMILIES)
def test_tree_forward_and_commit_match_hf_path_by_path(tiny_models, family):
    """One tree-masked forward == HF on each root-to-node path; committing a branch keeps exactly its KV."""
    tm = tiny_models[family]
    model = tm.load()
    prefix = rand_ids(19, seed=3)
    model.forward(torch.tensor(prefix))
    model.commit(None, len(prefix))

    shape = shape_from_parents(TREE_PARENTS)
    rng = random.Random(4)
    tokens = [rng.randrange(3, VOCAB) for _ in TREE_PARENTS]
    tokens[9] = tokens[1]  # a duplicate sibling: same token, different node
    out = model.forward(torch.tensor(tokens), positions=model.length + shape.depth, tree_mask=shape.mask)

    def path_to(i: int) -> list[int]:
        nodes = []
        while i >= 0:
            nodes.append(i)
            i = TREE_PARENTS[i]
        return nodes[::-1]

    for i in range(len(TREE_PARENTS)):
        seq = prefix + [tokens[j] for j in path_to(i)]
        assert_close(out.logits[i], tm.logits(seq)[-1], f"{family} tree node {i} (path {path_to(i)})")

    # commit the deep, non-contiguous branch 0 -> 1 -> 4 -> 6 -> 10, then continue from it
    accepted = torch.tensor(path_to(10))
    model.commit(accepted, len(TREE_PARENTS))
    assert model.length == len(prefix) + len(accepted)
    seq = prefix + [tokens[j] for j in accepted.tolist()]
    nxt = rand_ids(4, seed=5)
    # a second tree step on top of the committed branch: chain + a sibling of its first node
    parents2 = (-1, 0, 1, 0)
    shape2 = shape_from_parents(parents2)
    out2 = model.forward(torch.tensor(nxt), positions=model.length + shape2.depth, tree_mask=shape2.mask)
    for i, path in enumerate(([0], [0, 1], [0, 1, 2], [0, 3])):
        assert_close(out2.logits[i], tm.logits(seq + [nxt[j] for j in path])[-1],
                     f"{family} second tree step node {i} after committing a branch")
    model.commit(torch.tensor([0, 3]), len(parents2))
    last = model.forward(torch.tensor([7]))
    assert_close(last.logits[0], tm.logits(seq + [nxt[0], nxt[3], 7])[-1], f"{family} step after second commit")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_hidden_layers_match_hf_hidden_states(tiny_models, family):
    """layers[i] is layer i's output (HF hidden_states[i + 1]); hidden is post-norm (HF's last entry)."""
    tm = tiny_models[family]
    model = tm.load()
    ids = rand_ids(23, seed=6)
    n = model.args.n_layers
    out = model.forward(torch.tensor(ids), hidden_layers=tuple(range(n)))
    with torch.no_grad():
        hs = tm.hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert len(hs) == n + 1
    assert sorted(out.layers) == list(range(n))
    for i in range(n - 1):
        assert_close(out.layers[i], hs[i + 1][0], f"{family} layer {i} output")
    # HF's last hidden state is after the final norm; ours is out.hidden, and layers[n-1] is pre-norm
    assert_close(out.hidden, hs[n][0], f"{family} final (post-norm) hidden")
    assert_close(tm.hf.model.norm(out.layers[n - 1]), hs[n][0], f"{family} last layer pre-norm")
    assert (out.layers[n - 1] - out.hidden).abs().max() > 1e-2, "last layer output should be pre-norm"
    # requesting a subset returns only those layers
    model.reset()
    sub = model.forward(torch.tensor(ids), hidden_layers=(1,))
    assert list(sub.layers) == [1]
    assert_close(sub.layers[1], hs[2][0], f"{family} layer 1 alone")


def test_reset_reuses_cache(tiny_models):
    tm = tiny_models["llama3"]
    model = tm.load()
    a = rand_ids(12, seed=7)
    b = rand_ids(15, seed=8)
    model.forward(torch.tensor(a))
    model.commit(None, len(a))
    model.reset()
    out = model.forward(torch.tensor(b))
    assert_close(out.logits, tm.logits(b), "after reset")
    model.commit(None, len(b))
    model.forward(torch.tensor([9, 10]))  # written, never committed: must stay invisible
    out = model.forward(torch.tensor([11]))
    assert_close(out.logits[0], tm.logits(b + [11])[-1], "after uncommitted nodes")


def test_forward_errors(tiny_models):
    from specdec.backbone import load_transformer

    model = load_transformer(tiny_models["llama"].path)
    with pytest.raises(RuntimeError, match="setup_cache"):
        model.forward(torch.tensor([1, 2, 3]))
    model.setup_cache(16)
    model.forward(torch.tensor(list(range(3, 13))))
    model.commit(None, 10)
    with pytest.raises(ValueError, match="exceed the cache of 16"):
        model.forward(torch.tensor(list(range(3, 10))))


def test_loaded_dtype_and_tied_output(tiny_models):
    from specdec.backbone import load_transformer

    tied = load_transformer(tiny_models["qwen2"].path, dtype=torch.bfloat16)
    assert tied.output.weight.dtype == torch.bfloat16
    assert tied.output.weight.data_ptr() == tied.tok_embeddings.weight.data_ptr()
    untied = load_transformer(tiny_models["llama"].path)
    assert untied.output.weight.data_ptr() != untied.tok_embeddings.weight.data_ptr()
    assert not any(p.is_meta for p in untied.parameters())
    assert untied.args.n_kv_heads == 4 and tied.args.n_kv_heads == 2 and tied.args.qkv_bias


def test_mistral_window_guard(tiny_models):
    cfg = tiny_models["mistral"].hf.config.to_dict()
    args = ModelArgs.from_hf(cfg)
    assert args.sliding_window == 4096
    cfg["sliding_window"] = 32
    small = Transformer(ModelArgs.from_hf(cfg))
    small.setup_cache(32)
    with pytest.raises(ValueError, match="sliding window"):
        small.setup_cache(64)


def test_unsupported_configs():
    base = dict(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    with pytest.raises(ValueError, match="gpt2.*not supported"):
        ModelArgs.from_hf({**base, "model_type": "gpt2"})
    dyn = Transformer(ModelArgs.from_hf({**base, "model_type": "llama",
                                         "rope_parameters": {"rope_type": "dynamic", "factor": 2.0,
                                                             "rope_theta": 1e4}}))
    with pytest.raises(ValueError, match="dynamic"):
        dyn.setup_cache(8)


@pytest.mark.real
def test_real_smollm2_logits_match_hf():
    from transformers import AutoModelForCausalLM

    from specdec.backbone import embedded_dir, load_transformer

    path = embedded_dir()
    model = load_transformer(path)
    model.setup_cache(128)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2,
           198, 1]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    out = model.forward(torch.tensor(ids))
    assert_close(out.logits, ref, "SmolLM2 prompt logits")
    model.commit(None, len(ids))
    with torch.no_grad():
        ref2 = hf(torch.tensor([ids + [28, 30, 35]])).logits[0, -3:]
    step = model.forward(torch.tensor([28, 30, 35]))
    assert_close(step.logits, ref2, "SmolLM2 incremental logits")


def _saved(tmp_path, hf, edit=None):
    import json

    hf.save_pretrained(tmp_path)
    if edit is not None:
        cfg_file = tmp_path / "config.json"
        cfg = json.loads(cfg_file.read_text())
        edit(cfg)
        cfg_file.write_text(json.dumps(cfg))
    return tmp_path


def _v4_linear(cfg):  # how Llama-2 / Vicuna checkpoints on disk spell their rope settings
    cfg.pop("rope_parameters", None)
    cfg.update(rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 2.0}, torch_dtype="float16")


def _v4_llama3(cfg):  # how Llama-3.1 checkpoints on disk spell theirs
    cfg.pop("rope_parameters", None)
    cfg.update(rope_theta=500000.0, torch_dtype="bfloat16",
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 32})


@pytest.mark.parametrize("family, edit", [("vicuna", _v4_linear), ("llama3", _v4_llama3)])
def test_transformers_v4_style_config_files(tmp_path, family, edit):
    """Real checkpoints carry rope_theta/rope_scaling (transformers 4 names): same logits as HF reading that file."""
    from transformers import AutoModelForCausalLM

    from conftest import make_hf_model
    from specdec.backbone import load_transformer

    path = _saved(tmp_path, make_hf_model(family, seed=3), edit)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert hf.config.rope_parameters["rope_type"] == ("linear" if family == "vicuna" else "llama3")
    model = load_transformer(path)
    model.setup_cache(64)
    ids = rand_ids(60, seed=9)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    assert_close(model.forward(torch.tensor(ids)).logits, ref, f"{family} with a v4-style config.json")


@pytest.mark.parametrize("family", ["llama3", "vicuna"])
def test_rope_scaling_is_not_ignored(tmp_path, tiny_models, family):
    """Guard on the test itself: dropping the rope scaling must change the logits well beyond ATOL."""
    from specdec.backbone import load_transformer

    def plain(cfg):
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_parameters"]["rope_theta"]}

    path = _saved(tmp_path, tiny_models[family].hf, plain)
    model = load_transformer(path)
    model.setup_cache(64)
    ids = rand_ids(60, seed=10)
    assert (model.forward(torch.tensor(ids)).logits - tiny_models[family].logits(ids)).abs().max() > 1e-2


@pytest.mark.parametrize("option", [{"attention_bias": True}, {"mlp_bias": True}, {"hidden_act": "gelu"}])
def test_llama_config_options_match_hf_or_are_refused(tmp_path, option):
    """LlamaConfig options the runner might not implement: either the logits match or loading refuses.

    Silently dropping o_proj / MLP biases or using SiLU for another activation gives wrong logits."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    import conftest
    from specdec.backbone import load_transformer

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(LlamaConfig(**conftest._COMMON, num_key_value_heads=2, **option)).eval()
    conftest.randomize_(hf, 1)
    path = _saved(tmp_path, hf)
    try:
        model = load_transformer(path)
    except ValueError:
        return  # refusing an unsupported option is fine
    model.setup_cache(64)
    ids = rand_ids(20, seed=11)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    assert_close(model.forward(torch.tensor(ids)).logits, ref, f"Llama with {option}")


def test_explicit_head_dim(tmp_path):
    """head_dim set apart from hidden_size / n_heads (as in Mistral-Nemo-style configs)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    import conftest
    from specdec.backbone import load_transformer

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(LlamaConfig(**conftest._COMMON, num_key_value_heads=2, head_dim=32)).eval()
    conftest.randomize_(hf, 2)
    model = load_transformer(_saved(tmp_path, hf))
    assert model.args.head_dim == 32
    model.setup_cache(64)
    ids = rand_ids(30, seed=12)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    assert_close(model.forward(torch.tensor(ids)).logits, ref, "head_dim 32 with hidden 64 and 4 heads")
