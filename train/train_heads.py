r"""Train draft heads on a frozen backbone from cached hidden states (train/gen_distill.py makes them).

    python train/train_heads.py --head medusa --data data/distill_train.jsonl --eval-data data/distill_heldout.jsonl \
        --out runs/medusa
    torchrun --nproc_per_node=2 train/train_heads.py --head medusa --trigram all ...
    python train/train_heads.py --head eagle --data ... --out runs/eagle   # EAGLE draft layer (feature + token loss)
    python train/train_heads.py --head eagle3 --data ... --out runs/eagle3 # EAGLE-3 (fused layers, training-time test)
    python train/train_heads.py --head early-exit --exit-layer 6 --data ... --out runs/ee  # an exit adapter (Kangaroo)

DDP over torchrun (gloo on CPU, nccl on CUDA), bf16 autocast on CUDA, gradient accumulation, cosine schedule
with warm-up, per-head top-1/top-5 eval, checkpoints every --save-every steps; rerun the same command after
a kill and it resumes from the last checkpoint. The final heads land in --out as safetensors + config.json.
The work is specdec.training's (TrainConfig, train); this is its command line.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from specdec import cli
from specdec.training.config import EAGLE3_DRAFT_VOCAB, HEADS, TrainConfig
from specdec.training.data import LABELS
from specdec.training.loop import train

DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = cli.parser(__doc__)
    p.add_argument("--head", choices=HEADS, default=DEFAULTS["head"])
    p.add_argument("--backbone", default=DEFAULTS["backbone"],
                   help="local HF directory (default: the embedded SmolLM2)")
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="gen_distill.py JSONL file(s), hidden states beside each; several are read in order")
    p.add_argument("--eval-data", type=Path, default=DEFAULTS["eval_data"], help="held-out JSONL for per-head accuracy")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labels", choices=LABELS, default=DEFAULTS["labels"],
                   help="backbone: its own next tokens (self-distillation); greedy-path: those only where the text "
                        "follows the backbone's own choices (for teacher-forced ShareGPT replies); "
                        "data: the text's tokens")
    p.add_argument("--num-heads", type=int, default=DEFAULTS["num_heads"])
    p.add_argument("--num-layers", type=int, default=DEFAULTS["num_layers"])
    p.add_argument("--trigram", default=DEFAULTS["trigram"], help="'none', 'all' or head indices like 0,1")
    p.add_argument("--trigram-tokens", choices=("context", "pending"), default=DEFAULTS["trigram_tokens"],
                   help="context: tokens (t-1, t); pending: (t, t+1), the backbone's own next token")
    p.add_argument("--own-lm-head", action="store_true", help="a trainable lm_head copy per head (Medusa's layout)")
    p.add_argument("--draft-vocab", type=int, default=DEFAULTS["draft_vocab"],
                   help="heads score only the N most frequent answer tokens (0: the whole vocabulary; default 0, "
                        f"eagle3 and early-exit {EAGLE3_DRAFT_VOCAB})")
    p.add_argument("--noise", type=float, default=DEFAULTS["noise"],
                   help="eagle: width of the uniform noise on input features (default 0.2; eagle3 0)")
    p.add_argument("--token-weight", type=float, default=DEFAULTS["token_weight"],
                   help="eagle: weight of the token loss (feature loss: 1)")
    p.add_argument("--train-on", choices=("answer", "all"), default=DEFAULTS["train_on"],
                   help="eagle, eagle3: positions whose targets are trained: answers only, or prompts too (their "
                        "features are computed anyway; the targets stay the backbone's own distribution)")
    p.add_argument("--eval-depth", type=int, default=DEFAULTS["eval_depth"],
                   help="eagle: tokens drafted ahead in evaluation (early-exit: of its chain tau estimate)")
    p.add_argument("--exit-layer", type=int, default=DEFAULTS["exit_layer"],
                   help="early-exit: the adapter reads the output of the backbone's first N layers")
    p.add_argument("--rollout-steps", type=int, default=DEFAULTS["rollout_steps"],
                   help="eagle, eagle3: also train on drafting 2..N tokens ahead from the draft's own features "
                        "(EAGLE-3's "
                        "training-time test); 1: teacher forcing only (default 1; eagle3 7, EAGLE-3's)")
    p.add_argument("--init", default=DEFAULTS["init"],
                   help="start from these saved heads / draft ('medusa', 'eagle', ... for the shipped ones); their "
                        "config (heads, trigram, draft vocabulary) replaces those options")
    p.add_argument("--epochs", type=float, default=DEFAULTS["epochs"])
    p.add_argument("--max-positions", type=int, default=DEFAULTS["max_positions"],
                   help="train on the first N answer positions")
    p.add_argument("--micro-batch", type=int, default=DEFAULTS["micro_batch"],
                   help="per process per forward: positions (medusa, default 256) or conversations (eagle, early-exit: "
                        "default 4)")
    p.add_argument("--grad-accum", type=int, default=DEFAULTS["grad_accum"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="default: 1e-3 (medusa), 3e-4 (eagle)")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="warm-up optimizer steps")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument("--loss-decay", type=float, default=DEFAULTS["loss_decay"],
                   help="head i's loss weight is decay**i (1: equal)")
    p.add_argument("--eval-every", type=int, default=DEFAULTS["eval_every"])
    p.add_argument("--eval-positions", type=int, default=DEFAULTS["eval_positions"],
                   help="medusa: positions; eagle: rollouts (1024 at most)")
    p.add_argument("--save-every", type=int, default=DEFAULTS["save_every"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--dtype", default=DEFAULTS["dtype"], help="backbone weights (embeddings and lm_head) dtype")
    p.add_argument("--device", default=DEFAULTS["device"])
    p.add_argument("--quantize", choices=("int8", "bnb-int8"), default=DEFAULTS["quantize"],
                   help="train over the frozen int8 backbone: weight-only int8 (lm_head included) "
                        "or bitsandbytes LLM.int8")
    p.add_argument("--load-in-8bit", dest="quantize", action="store_const", const="bnb-int8",
                   help="= --quantize bnb-int8")
    p.add_argument("--max-steps", type=int, default=DEFAULTS["max_steps"],
                   help="stop after this many steps in this run (rerun to go on)")
    p.add_argument("--minutes", type=float, default=DEFAULTS["minutes"],
                   help="time budget of the training steps: after the first steps a fresh run shortens itself (and its "
                        "cosine schedule) to end within it; never longer than --epochs")
    p.add_argument("--autocast", choices=("auto", "bf16", "off"), default=DEFAULTS["autocast"],
                   help="bf16 autocast of the heads' matmuls (weights and optimizer stay fp32); auto: on CUDA and on "
                        "CPUs with native bf16, else off")
    p.add_argument("--max-grad-norm", type=float, default=DEFAULTS["max_grad_norm"],
                   help="clip gradients to this norm (0: off; EAGLE uses 0.5)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=DEFAULTS["resume"])
    args = p.parse_args(argv)
    command = shlex.join(["train/train_heads.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        return TrainConfig(**vars(args), command=command)
    except ValueError as e:
        p.error(str(e))


if __name__ == "__main__":
    cli.run(lambda: train(parse_args()))
