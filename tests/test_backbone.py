"""Loading backbones: clear errors for bad inputs, atomic GGUF conversion, dtypes, chat formats."""
from __future__ import annotations

import json
import shutil
import tempfile

import pytest
import torch

from specdec import backbone as bb
from specdec.chat import detect_chat_format, format_chat

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bb.embedded_dir(), local_files_only=True)


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- local directories


def test_missing_directory(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        bb.load_backbone(missing, dtype="fp32")
    with pytest.raises(FileNotFoundError, match="config.json"):
        bb.load_transformer(missing)


def test_directory_without_config(tmp_path, tiny_models):
    d = copy_checkpoint(tiny_models["llama"].path, tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no config\.json in .*m"):
        bb.load_transformer(d)


def test_directory_without_weights(tmp_path, tiny_models):
    d = copy_checkpoint(tiny_models["llama"].path, tmp_path / "m")
    for f in d.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        bb.load_transformer(d)


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0001])
def test_truncated_safetensors_names_the_file(tmp_path, tiny_models, keep):
    d = copy_checkpoint(tiny_models["llama"].path, tmp_path / "m")
    f = next(d.glob("*.safetensors"))
    with open(f, "r+b") as fh:
        fh.truncate(max(int(f.stat().st_size * keep), 3))
    with pytest.raises(ValueError, match=f"cannot read weights file {f}"):
        bb.load_transformer(d)


def test_checkpoint_missing_a_tensor(tmp_path, tiny_models):
    from safetensors.torch import load_file, save_file

    d = copy_checkpoint(tiny_models["llama"].path, tmp_path / "m")
    f = next(d.glob("*.safetensors"))
    state = load_file(f)
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, f)
    with pytest.raises(ValueError, match="model.layers.1.mlp.down_proj.weight"):
        bb.load_transformer(d)


def test_pytorch_bin_checkpoint_loads(tmp_path, tiny_models):
    """Old checkpoints (Vicuna's) ship pytorch_model.bin; it is read with weights_only and gives the same logits."""
    from safetensors.torch import load_file

    tm = tiny_models["vicuna"]
    d = copy_checkpoint(tm.path, tmp_path / "m")
    f = next(d.glob("*.safetensors"))
    torch.save(load_file(f), d / "pytorch_model.bin")
    f.unlink()
    model = bb.load_transformer(d)
    model.setup_cache(32)
    ids = list(range(3, 23))
    assert (model.forward(torch.tensor(ids)).logits - tm.logits(ids)).abs().max() < 1e-4
    # and a truncated .bin is reported like a truncated safetensors file
    data = (d / "pytorch_model.bin").read_bytes()
    (d / "pytorch_model.bin").write_bytes(data[: len(data) * 9 // 10])
    with pytest.raises(ValueError, match="cannot read weights file .*pytorch_model.bin"):
        bb.load_transformer(d)


# ---------------------------------------------------------------- GGUF conversion


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """SPECDEC_CACHE and the process temp dir both inside tmp_path, so leftovers are visible."""
    cache = tmp_path / "cache"
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setenv("SPECDEC_CACHE", str(cache))
    monkeypatch.setenv("TMPDIR", str(systmp))
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    return cache, systmp


def _partial_gguf(dst, n_bytes):
    with open(bb.embedded_gguf_path(), "rb") as src, open(dst, "wb") as out:
        out.write(src.read(n_bytes))
    return dst


@pytest.mark.parametrize("kind", ["header-only", "half", "empty", "garbage"])
def test_corrupt_gguf_raises_and_leaves_nothing(tmp_path, isolated_cache, kind):
    cache, systmp = isolated_cache
    src = tmp_path / "src"
    src.mkdir()
    gguf = src / "model.gguf"
    if kind == "header-only":
        _partial_gguf(gguf, 1 << 20)
    elif kind == "half":
        _partial_gguf(gguf, bb.embedded_gguf_path().stat().st_size // 2)
    elif kind == "empty":
        gguf.write_bytes(b"")
    else:
        gguf.write_bytes(b"GGUF" + bytes(range(256)) * 20)
    out = cache / "converted"
    with pytest.raises(ValueError, match=f"cannot read GGUF file {gguf}"):
        bb.convert_gguf(gguf, out)
    assert not out.exists()
    assert list(cache.iterdir()) == [], "a failed conversion left files in the cache"
    assert list(systmp.iterdir()) == [], "a failed conversion left files in the temp dir"
    assert [p.name for p in src.iterdir()] == ["model.gguf"]


def test_missing_gguf(tmp_path, isolated_cache):
    with pytest.raises(FileNotFoundError, match="nothing.gguf"):
        bb.convert_gguf(tmp_path / "nothing.gguf", isolated_cache[0] / "x")


def test_embedded_dir_with_corrupt_gguf_keeps_cache_clean(tmp_path, isolated_cache, monkeypatch):
    cache, systmp = isolated_cache
    bad = _partial_gguf(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf", 4096)
    monkeypatch.setattr(bb, "embedded_gguf_path", lambda: bad)
    with pytest.raises(ValueError, match="cannot read GGUF file"):
        bb.embedded_dir()
    assert not (cache / bb.EMBEDDED_NAME).exists()
    assert list(cache.iterdir()) == [] and list(systmp.iterdir()) == []
    with pytest.raises(ValueError):  # and it tries again (no half-written cache entry is trusted)
        bb.load_backbone(dtype="fp32")


# ---------------------------------------------------------------- dtypes and load_backbone


def test_resolve_dtype():
    assert bb.resolve_dtype("fp32", "cpu") is torch.float32
    assert bb.resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert bb.resolve_dtype("float16", "cpu") is torch.float16
    assert bb.resolve_dtype(torch.float64, "cpu") is torch.float64
    assert bb.resolve_dtype("auto", "cuda") is torch.bfloat16
    assert bb.resolve_dtype("auto", "cpu") is (torch.bfloat16 if bb.cpu_has_native_bf16() else torch.float32)
    for bad in ("int4", "fp8", "", "FP32x"):
        with pytest.raises(ValueError, match="unknown dtype"):
            bb.resolve_dtype(bad, "cpu")


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory, tiny_models, smol_tokenizer):
    d = tmp_path_factory.mktemp("bb") / "tiny-llama"
    shutil.copytree(tiny_models["llama"].path, d)
    smol_tokenizer.save_pretrained(d)
    return d


def test_load_backbone_local_dir(tiny_with_tokenizer, tiny_models):
    with pytest.raises(ValueError, match="unknown dtype 'fp7'"):
        bb.load_backbone(tiny_with_tokenizer, dtype="fp7")
    back = bb.load_backbone(tiny_with_tokenizer, dtype="fp32", max_seq_len=100_000)
    assert back.model.max_seq_len == 256, "max_seq_len is capped at max_position_embeddings"
    assert back.model.output.weight.dtype == torch.float32
    assert back.chat_format == "template"
    assert back.stop_ids == [2]
    ids = back.encode_chat("Hi")
    assert ids == format_chat(back.tokenizer, "Hi", "template")
    half = bb.load_backbone(tiny_with_tokenizer, dtype="bf16", max_seq_len=64)
    assert half.model.output.weight.dtype == torch.bfloat16 and half.model.max_seq_len == 64
    assert half.model.kv.dtype == torch.bfloat16


def test_vicuna_dir_is_detected(tmp_path, tiny_with_tokenizer):
    d = shutil.copytree(tiny_with_tokenizer, tmp_path / "vicuna-7b-v1.5")
    back = bb.load_backbone(d, dtype="fp32", max_seq_len=64)
    assert back.chat_format == "vicuna"
    text = back.tokenizer.decode(back.encode_chat("Hi"))
    assert text.endswith("USER: Hi ASSISTANT:")


def test_stop_ids_merge_config_and_tokenizer(smol_tokenizer):
    assert bb.stop_ids(smol_tokenizer, {"eos_token_id": [2, 7]}) == [2, 7]
    assert bb.stop_ids(smol_tokenizer, {"eos_token_id": 5}) == [5, 2]
    assert bb.stop_ids(smol_tokenizer, {}) == [2]


# ---------------------------------------------------------------- chat formats


def test_template_chat_format(smol_tokenizer):
    ids = format_chat(smol_tokenizer, "Name a colour.", "template")
    text = smol_tokenizer.decode(ids)
    assert text.endswith("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")
    assert ids == list(smol_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a colour."}], add_generation_prompt=True, tokenize=True, return_dict=False))
    assert all(isinstance(i, int) for i in ids)
    # a message list with a system prompt
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = smol_tokenizer.decode(format_chat(smol_tokenizer, msgs, "template"))
    assert "<|im_start|>system\nBe brief.<|im_end|>" in text


def test_vicuna_chat_format(smol_tokenizer):
    text = smol_tokenizer.decode(format_chat(smol_tokenizer, "What is 2+2?", "vicuna"))
    assert text.startswith("A chat between a curious user and an artificial intelligence assistant.")
    assert text.endswith("USER: What is 2+2? ASSISTANT:")
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    text = smol_tokenizer.decode(format_chat(smol_tokenizer, msgs, "vicuna"))
    assert text.startswith("You are terse. USER: Hi ASSISTANT: Hello.")
    assert text.endswith("USER: Bye ASSISTANT:")


def test_raw_chat_format(smol_tokenizer):
    assert format_chat(smol_tokenizer, "Hi", "raw") == smol_tokenizer("Hi").input_ids


@pytest.mark.parametrize("fmt", ["template", "vicuna", "raw"])
@pytest.mark.parametrize("empty", ["", [], [{"role": "user", "content": ""}]])
def test_empty_prompt_raises(smol_tokenizer, fmt, empty):
    with pytest.raises(ValueError, match="empty"):
        format_chat(smol_tokenizer, empty, fmt)


def test_unknown_chat_format(smol_tokenizer):
    with pytest.raises(ValueError, match="unknown chat format 'alpaca'"):
        format_chat(smol_tokenizer, "Hi", "alpaca")


def test_detect_chat_format(smol_tokenizer, tmp_path):
    assert detect_chat_format(smol_tokenizer, tmp_path / "smollm") == "template"
    assert detect_chat_format(smol_tokenizer, tmp_path / "lmsys" / "Vicuna-13B-v1.3") == "vicuna"

    class NoTemplate:
        chat_template = None

    assert detect_chat_format(NoTemplate(), tmp_path / "llama") == "raw"


def test_config_json_is_read_as_written(tmp_path, tiny_models):
    """config.json round trip: what load_transformer reads is the saved HF config."""
    model = bb.load_transformer(tiny_models["qwen2"].path)
    saved = json.loads((tiny_models["qwen2"].path / "config.json").read_text())
    assert model.args.vocab_size == saved["vocab_size"] and model.args.n_layers == saved["num_hidden_layers"]
    assert model.args.tie_embeddings and model.args.qkv_bias
