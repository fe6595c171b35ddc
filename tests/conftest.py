"""Shared fixtures: tiny random Llama-family checkpoints (one per architecture path) and HF references."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
VOCAB = 512
CONTEXT = 256  # max_position_embeddings of the tiny configs; tests stay well inside it

_COMMON = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=3,
    num_attention_heads=4,
    vocab_size=VOCAB,
    max_position_embeddings=CONTEXT,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def run_script(path: Path, *args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """`python scripts/x.py ARGS` (or train/x.py) as a user runs it: its own folder first on its path, output
    captured."""
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout, **kw)


_CALLS = """
import contextlib, io, json, sys
import MODULE as module
space = vars(module)
exec(sys.argv[1], space)
out = {}
for key, expr in json.loads(sys.argv[2]).items():
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            out[key] = {"value": eval(expr, space)}
    except (SystemExit, Exception) as e:
        out[key] = {"raised": type(e).__name__, "message": str(e), "stderr": err.getvalue()}
print(json.dumps(out, default=str))
"""


def call_in_scripts(module: str, calls: dict[str, str], setup: str = "", env: dict | None = None) -> dict[str, dict]:
    """Evaluate Python expressions in a script module's namespace, in one `python` run in scripts/ (where the scripts
    import one another, as when they run): {key: {"value": JSON-able result}} or, for one that raised (an argparse
    error is SystemExit), {key: {"raised", "message", "stderr"}}. `setup` runs first in that namespace; `env`: the
    process environment (default: this one)."""
    code = _CALLS.replace("MODULE", module)
    proc = subprocess.run([sys.executable, "-c", code, setup, json.dumps(calls)], cwd=SCRIPTS, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def tiny_config(family: str):
    """A tiny random config for each architecture path the runner must support."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    if family == "llama":  # Llama-1 style: multi-head attention, untied output, plain rope
        return LlamaConfig(**_COMMON, num_key_value_heads=4, tie_word_embeddings=False)
    if family == "llama3":  # Llama-3 style: GQA, llama3 rope scaling, tied embeddings, large theta
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
        return LlamaConfig(**_COMMON, num_key_value_heads=2, tie_word_embeddings=True, rope_parameters=rope)
    if family == "vicuna":  # Llama-2 / Vicuna style: linear rope scaling (as in long-context Vicuna), untied
        rope = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
        return LlamaConfig(**_COMMON, num_key_value_heads=4, tie_word_embeddings=False, rope_parameters=rope)
    if family == "mistral":  # GQA, sliding window larger than any test context
        return MistralConfig(**_COMMON, num_key_value_heads=2, tie_word_embeddings=False, sliding_window=4096)
    if family == "qwen2":  # q/k/v biases, tied embeddings, GQA
        return Qwen2Config(**_COMMON, num_key_value_heads=2, tie_word_embeddings=True)
    raise KeyError(family)


FAMILIES = ("llama", "llama3", "vicuna", "mistral", "qwen2")


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Replace HF's init (zero biases, unit norms, tiny weights) by a peaky random one.

    Every parameter gets a distinct random value, so a weight the runner ignores or misplaces
    changes the logits, and the logit gaps are large enough that argmax never hinges on 1e-6 noise.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif "lm_head" in name:
                p.copy_(3.0 * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            else:
                p.copy_(1.5 * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def make_hf_model(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32).eval()
    randomize_(hf, seed + 1)
    return hf


class TinyModel:
    """An HF reference model, its saved directory, and cached greedy references."""

    def __init__(self, family: str, hf, path: Path):
        self.family, self.hf, self.path = family, hf, path
        self._greedy: dict[tuple[int, ...], list[int]] = {}

    def load(self, max_seq_len: int = CONTEXT):
        from specdec.backbone import load_transformer

        model = load_transformer(self.path)
        model.setup_cache(max_seq_len)
        return model

    @torch.no_grad()
    def logits(self, ids: list[int]) -> torch.Tensor:
        return self.hf(torch.tensor([ids])).logits[0]

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        """transformers generate(do_sample=False), no eos: n new tokens (cached per prompt, grown on demand)."""
        key = tuple(prompt)
        have = self._greedy.get(key, [])
        if len(have) < n:
            have = hf_generate(self.hf, prompt, n)
            self._greedy[key] = have
        return have[:n]


@torch.no_grad()
def hf_generate(hf, prompt: list[int], n: int, eos_token_id=None) -> list[int]:
    out = hf.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False, max_new_tokens=n, eos_token_id=eos_token_id, pad_token_id=0,
    )
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, TinyModel]:
    """Every family once per session: HF model in memory, checkpoint saved as safetensors."""
    models = {}
    for i, family in enumerate(FAMILIES):
        hf = make_hf_model(family, seed=10 * i)
        path = tmp_path_factory.mktemp(f"tiny-{family}")
        hf.save_pretrained(path, safe_serialization=True)
        assert list(path.glob("*.safetensors")), "save_pretrained wrote no safetensors"
        models[family] = TinyModel(family, hf, path)
    return models


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads and slow down badly when the 2 cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
