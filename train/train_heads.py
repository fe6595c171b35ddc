r"""Train draft heads on a frozen backbone from cached hidden states (train/gen_distill.py makes them).

    python train/train_heads.py --head medusa --data data/distill_train.jsonl --eval-data data/distill_heldout.jsonl \
        --out runs/medusa
    torchrun --nproc_per_node=2 train/train_heads.py --head medusa --trigram all ...
    python train/train_heads.py --head eagle --data ... --out runs/eagle   # EAGLE draft layer (feature + token loss)
    python train/train_heads.py --head eagle3 --data ... --out runs/eagle3 # EAGLE-3 (fused layers, training-time test)

DDP over torchrun (gloo on CPU, nccl on CUDA), bf16 autocast on CUDA, gradient accumulation, cosine schedule
with warm-up, per-head top-1/top-5 eval, checkpoints every --save-every steps; rerun the same command after
a kill and it resumes from the last checkpoint. The final heads land in --out as safetensors + config.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from specdec import cli
from specdec.backbone import backbone_dir, load_transformer, resolve_dtype
from specdec.eagle import EagleConfig, EagleDraft, load_eagle, save_eagle
from specdec.eagle3 import Eagle3Config, Eagle3Draft
from specdec.medusa import MedusaConfig, MedusaHeads, load_medusa, save_medusa
from specdec.model import Transformer, rope_tables
from specdec.train_data import LABELS, HeadData, SequenceData, aux_layers_of, head_data, sequence_data
from specdec.train_eagle import eagle3_losses, eagle_losses, pack, rollout_accuracy

EVAL_RANKS = 10
EAGLE3_DRAFT_VOCAB = 8192  # of SmolLM2's 49,152 tokens; vLLM's own EAGLE-3 test draft for it uses the same size
TIMING_START, TIMING_STEPS = 3, 10  # --minutes: steps timed after the first few


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--head", choices=("medusa", "eagle", "eagle3"), default="medusa")
    p.add_argument("--backbone", default=None, help="local HF directory (default: the embedded SmolLM2)")
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="gen_distill.py JSONL file(s), hidden states beside each; several are read in order")
    p.add_argument("--eval-data", type=Path, default=None, help="held-out JSONL for per-head accuracy")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labels", choices=LABELS, default="backbone",
                   help="backbone: its own next tokens (self-distillation); greedy-path: those only where the text "
                        "follows the backbone's own choices (for teacher-forced ShareGPT replies); "
                        "data: the text's tokens")
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--trigram", default="none", help="'none', 'all' or head indices like 0,1")
    p.add_argument("--trigram-tokens", choices=("context", "pending"), default="context",
                   help="context: tokens (t-1, t); pending: (t, t+1), the backbone's own next token")
    p.add_argument("--own-lm-head", action="store_true", help="a trainable lm_head copy per head (Medusa's layout)")
    p.add_argument("--draft-vocab", type=int, default=None,
                   help="heads score only the N most frequent answer tokens (0: the whole vocabulary; default 0, "
                        f"eagle3 {EAGLE3_DRAFT_VOCAB})")
    p.add_argument("--noise", type=float, default=None,
                   help="eagle: width of the uniform noise on input features (default 0.2; eagle3 0)")
    p.add_argument("--token-weight", type=float, default=0.1, help="eagle: weight of the token loss (feature loss: 1)")
    p.add_argument("--train-on", choices=("answer", "all"), default="answer",
                   help="eagle, eagle3: positions whose targets are trained: answers only, or prompts too (their "
                        "features are computed anyway; the targets stay the backbone's own distribution)")
    p.add_argument("--eval-depth", type=int, default=5, help="eagle: tokens drafted ahead in evaluation")
    p.add_argument("--rollout-steps", type=int, default=None,
                   help="eagle, eagle3: also train on drafting 2..N tokens ahead from the draft's own features "
                        "(EAGLE-3's "
                        "training-time test); 1: teacher forcing only (default 1; eagle3 7, EAGLE-3's)")
    p.add_argument("--init", default=None,
                   help="start from these saved heads / draft ('medusa', 'eagle', ... for the shipped ones); their "
                        "config (heads, trigram, draft vocabulary) replaces those options")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-positions", type=int, default=None, help="train on the first N answer positions")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="per process per forward: positions (medusa, default 256) or conversations (eagle, default 4)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=None, help="default: 1e-3 (medusa), 3e-4 (eagle)")
    p.add_argument("--warmup", type=int, default=20, help="warm-up optimizer steps")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--loss-decay", type=float, default=0.8, help="head i's loss weight is decay**i (1: equal)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-positions", type=int, default=8192, help="medusa: positions; eagle: rollouts (1024 at most)")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="fp32", help="backbone weights (embeddings and lm_head) dtype")
    p.add_argument("--device", default=None)
    p.add_argument("--quantize", choices=("int8", "bnb-int8"), default=None,
                   help="train over the frozen int8 backbone: weight-only int8 (lm_head included) "
                        "or bitsandbytes LLM.int8")
    p.add_argument("--load-in-8bit", dest="quantize", action="store_const", const="bnb-int8",
                   help="= --quantize bnb-int8")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many steps in this run (rerun to go on)")
    p.add_argument("--minutes", type=float, default=None,
                   help="time budget of the training steps: after the first steps a fresh run shortens itself (and its "
                        "cosine schedule) to end within it; never longer than --epochs")
    p.add_argument("--autocast", choices=("auto", "bf16", "off"), default="auto",
                   help="bf16 autocast of the heads' matmuls (weights and optimizer stay fp32); auto: on CUDA and on "
                        "CPUs with native bf16 (1.5x an EAGLE-3 step on an AVX512-BF16 EPYC), else off")
    p.add_argument("--max-grad-norm", type=float, default=0.0,
                   help="clip gradients to this norm (0: off; EAGLE uses 0.5)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    eagle, eagle3 = args.head in ("eagle", "eagle3"), args.head == "eagle3"
    args.rollout_steps = args.rollout_steps or (7 if eagle3 else 1)
    args.noise = (0.0 if eagle3 else 0.2) if args.noise is None else args.noise
    args.draft_vocab = (EAGLE3_DRAFT_VOCAB if eagle3 else 0) if args.draft_vocab is None else args.draft_vocab
    if args.rollout_steps < 1 or (args.rollout_steps > 1 and not eagle):
        p.error("--rollout-steps must be at least 1, and above 1 only with --head eagle or eagle3")
    if eagle3 and args.draft_vocab < 1:
        p.error("--head eagle3 scores a draft vocabulary: --draft-vocab must be at least 1")
    args.micro_batch = args.micro_batch or (4 if eagle else 256)
    args.lr = args.lr or (3e-4 if eagle else 1e-3)
    return args


def trigram_flags(spec: str, num_heads: int) -> list[bool]:
    """Parse --trigram into one flag per head."""
    if spec in ("none", "all"):
        return [spec == "all"] * num_heads
    try:
        idx = {int(x) for x in spec.split(",")}
    except ValueError as e:
        raise SystemExit(f"--trigram must be 'none', 'all' or head indices like 0,1; got {spec!r}") from e
    if not idx <= set(range(num_heads)):
        raise SystemExit(f"--trigram names heads {sorted(idx)} but there are {num_heads}")
    return [i in idx for i in range(num_heads)]


def head_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-head cross-entropy [K] over positions with a label."""
    k, n, v = logits.shape
    ce = F.cross_entropy(logits.float().reshape(k * n, v), labels.T.reshape(-1), ignore_index=-100, reduction="none")
    valid = (labels.T != -100).float().reshape(k, n)
    return (ce.view(k, n) * valid).sum(1) / valid.sum(1).clamp(min=1)


def frequent_tokens(labels: torch.Tensor, n: int, vocab_size: int = 0) -> torch.Tensor:
    """The n most frequent tokens among labels (ties by id): the draft vocabulary."""
    counts = torch.bincount(labels[labels >= 0], minlength=max(n, vocab_size))
    return counts.argsort(descending=True, stable=True)[:n]


def draft_labels(labels: torch.Tensor, heads: MedusaHeads, vocab_size: int) -> torch.Tensor:
    """Token labels as draft-vocabulary indices; tokens outside it are ignored (no head can draft them)."""
    if not heads.config.draft_vocab:
        return labels
    index = torch.full((vocab_size,), -100, dtype=torch.long, device=labels.device)
    index[heads.vocab_ids] = torch.arange(len(heads.vocab_ids), device=labels.device)
    return torch.where(labels >= 0, index[labels.clamp(min=0)], -100)


@torch.no_grad()
def evaluate(heads: MedusaHeads, data: HeadData, embed: torch.Tensor, lm_head: torch.Tensor, batch: int) -> dict:
    """Per-head top-1/top-5 and per-rank accuracy (for sparse trees) against the backbone's tokens;
    a token outside the draft vocabulary counts as a miss."""
    k = heads.config.num_heads
    hits = torch.zeros(k, EVAL_RANKS)
    counts = torch.zeros(k)
    device = embed.device
    for s in range(0, len(data), batch):
        h = data.hidden[s : s + batch].to(device, embed.dtype)
        ctx, lab = data.context[s : s + batch].to(device), data.labels[s : s + batch].to(device)
        top = heads.vocab_ids[heads(h, ctx, embed, lm_head).topk(EVAL_RANKS, dim=-1).indices]  # [K, n, R]
        for i in range(k):
            valid = lab[:, i] != -100
            hits[i] += (top[i][valid] == lab[valid, i, None]).float().sum(0).cpu()
            counts[i] += valid.sum().cpu()
    rank_acc = hits / counts.clamp(min=1)[:, None]
    return {"top1": rank_acc[:, 0].tolist(), "top5": rank_acc[:, :5].sum(1).tolist(),
            "rank_accuracy": rank_acc.tolist(), "positions": int(counts[0])}


def save_checkpoint(path: Path, heads: torch.nn.Module, opt, sched, step: int, total: int) -> None:
    """Heads (safetensors) and optimizer/scheduler/step/total steps (tensors-only torch file), swapped in atomically."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous().cpu() for k, v in heads.state_dict().items()}, str(tmp / "heads.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "total": total},
               tmp / "trainer.pt")
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, heads: torch.nn.Module, opt, sched) -> tuple[int, int | None]:
    """Restore a checkpoint written by save_checkpoint; returns its step and the run's total steps if recorded."""
    heads.load_state_dict(load_file(str(path / "heads.safetensors")))
    state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return int(state["step"]), state.get("total")


def cosine_schedule(opt, warmup: int, total: int, step: int = 0):
    """Warm-up then cosine decay over `total` steps, positioned at `step` (a run resized mid-way keeps its place)."""
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(opt, min(warmup, total // 2), total, last_epoch=step - 1)


def fitted_total(step: int, total: int, seconds_per_step: float, seconds_left: float) -> int:
    """The total steps that end a run within its time budget, never more than planned and at least one more."""
    return max(step + 1, min(total, step + int(seconds_left / seconds_per_step)))


@dataclass
class Task:
    """What the shared loop trains: a module over `size` items, per-component losses of a micro-batch of item
    indices, their weights, an evaluation and the final save."""

    module: torch.nn.Module
    size: int
    weights: torch.Tensor
    losses: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
    evaluate: Callable[[], dict]
    save: Callable[[Path, dict], Path]


def medusa_task(args: argparse.Namespace, model: Transformer, device: torch.device) -> Task:
    """Medusa heads over cached answer positions."""
    embed = model.tok_embeddings.weight
    if args.init:
        heads = load_medusa(args.init, model)[0].float().requires_grad_(True)
        args.num_heads = heads.config.num_heads
    data = head_data(args.data, args.num_heads, args.max_positions, args.labels)
    eval_data = head_data(args.eval_data, args.num_heads, args.eval_positions) if args.eval_data else None
    if not args.init:
        heads = MedusaHeads(MedusaConfig(model.args.dim, model.args.vocab_size, args.num_heads, args.num_layers,
                                         trigram_flags(args.trigram, args.num_heads), args.own_lm_head,
                                         args.draft_vocab, args.trigram_tokens))
        if args.draft_vocab:
            heads.vocab_ids.copy_(frequent_tokens(data.labels[:, 0], args.draft_vocab))
        heads.init_lm_heads(model.output.weight.float().cpu())
    heads.to(device)

    def losses(trainable: torch.nn.Module, micro: torch.Tensor) -> torch.Tensor:
        lm_head = heads.draft_lm_head(model.output.weight)  # after a resume the checkpoint's draft vocabulary
        logits = trainable(data.hidden[micro].to(device, torch.float32), data.context[micro].to(device), embed, lm_head)
        return head_losses(logits, draft_labels(data.labels[micro].to(device), heads, model.args.vocab_size))

    return Task(heads, len(data), torch.tensor([args.loss_decay**i for i in range(args.num_heads)], device=device),
                losses,
                lambda: evaluate(heads, eval_data, embed, heads.draft_lm_head(model.output.weight), args.micro_batch),
                lambda path, extra: save_medusa(path, heads, model, extra))


def eagle_task(args: argparse.Namespace, model: Transformer, device: torch.device) -> Task:
    """An EAGLE or EAGLE-3 draft layer over cached conversations (prompt and answer features)."""
    embed = model.tok_embeddings.weight
    eagle3 = args.head == "eagle3"
    data = sequence_data(args.data, args.max_positions, aux=eagle3)
    eval_data = sequence_data(args.eval_data, aux=eagle3) if args.eval_data else None
    if args.init:
        draft = load_eagle(args.init, model)[0].float().requires_grad_(True)
        if isinstance(draft, Eagle3Draft) != eagle3:
            raise SystemExit(f"--init {args.init} is not an {args.head} draft")
    elif eagle3:
        draft = new_eagle3(args, model, data)
    else:
        draft = EagleDraft(EagleConfig(model.args.dim, model.args.vocab_size, args.draft_vocab), model.args)
        if args.draft_vocab:
            answers = torch.cat([t[p:] for t, p in zip(data.tokens, data.prompt_len)])
            draft.vocab_ids.copy_(frequent_tokens(answers, args.draft_vocab))
    draft.to(device)
    cos, sin = rope_tables(model.args, max(len(t) for t in data.tokens + (eval_data.tokens if eval_data else [])) + 8,
                           torch.float32, device)

    def losses(trainable: torch.nn.Module, micro: torch.Tensor) -> torch.Tensor:
        batch = pack(data, micro.tolist(), device, torch.float32, args.train_on == "all")
        if eagle3:
            return eagle3_losses(trainable, batch, embed, model.output.weight, cos, sin, args.noise, args.rollout_steps)
        return eagle_losses(trainable, batch, embed, draft.draft_lm_head(model.output.weight), cos, sin, args.noise,
                            args.rollout_steps)

    def evaluate_draft() -> dict:
        draft.eval()
        out = rollout_accuracy(draft, eval_data, embed, model.output.weight, cos, sin, args.eval_depth,
                               min(args.eval_positions, 1024), args.seed)
        draft.train()
        return out

    weights = [args.loss_decay**i for i in range(args.rollout_steps)] if eagle3 else [1.0, args.token_weight]
    return Task(draft, len(data), torch.tensor(weights, device=device), losses, evaluate_draft,
                lambda path, extra: save_eagle(path, draft, model, extra))


def new_eagle3(args: argparse.Namespace, model: Transformer, data: SequenceData) -> Eagle3Draft:
    """A fresh EAGLE-3 draft: the data's fused layers, the answers' most frequent backbone picks as its vocabulary,
    its lm_head and final norm started from the backbone's (its outputs start out read like backbone features)."""
    layers = {tuple(aux_layers_of(path)) for path in args.data}
    if len(layers) > 1:
        raise SystemExit(f"the data files keep different aux layers {sorted(layers)}: make them with one --aux-layers")
    a = model.args
    draft = Eagle3Draft(Eagle3Config(a.dim, a.vocab_size, args.draft_vocab, list(layers.pop())), a)
    picks = torch.cat([b[p - 1 :] for b, p in zip(data.best, data.prompt_len)])
    draft.set_vocab(frequent_tokens(picks, args.draft_vocab, a.vocab_size))
    with torch.no_grad():
        draft.lm_head.weight.copy_(model.output.weight[draft.vocab_ids].float())
        draft.norm.weight.copy_(model.norm.weight.float())
    return draft


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    device = torch.device(args.device
                          or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_rank = rank == 0
    torch.manual_seed(args.seed)

    model = load_transformer(backbone_dir(args.backbone), resolve_dtype(args.dtype, device), device,
                             args.quantize).requires_grad_(False)
    task = (medusa_task if args.head == "medusa" else eagle_task)(args, model, device)
    has_eval = args.eval_data is not None
    trainable = torch.nn.parallel.DistributedDataParallel(task.module) if world > 1 else task.module
    per_step = args.micro_batch * args.grad_accum * world
    steps_per_epoch = task.size // per_step
    if steps_per_epoch < 1:
        raise SystemExit(f"{task.size} training items cannot fill one step of {per_step}: lower --micro-batch")
    total = max(1, math.ceil(args.epochs * steps_per_epoch))
    opt = torch.optim.AdamW(task.module.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = cosine_schedule(opt, args.warmup, total)

    ckpt = args.out / "checkpoint"
    step = 0
    if args.resume and ckpt.exists():
        step, saved_total = load_checkpoint(ckpt, task.module, opt, sched)
        if saved_total is not None and saved_total != total:  # a run that shortened itself to its time budget
            total = saved_total
            sched = cosine_schedule(opt, args.warmup, total, step)
    timed = args.minutes is not None and step == 0
    if main_rank:
        print(f"{task.size} {'positions' if args.head == 'medusa' else 'conversations'}, {world} process(es), "
              f"{per_step} per step, {total} steps" + (f", resuming at step {step}" if step else ""), flush=True)
    bf16 = args.autocast == "bf16" or (args.autocast == "auto" and resolve_dtype("auto", device) == torch.bfloat16)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=bf16)
    bar = tqdm(total=total, initial=step, disable=not main_rank, unit="step")
    started, history = time.perf_counter(), []
    stop_at = total if args.max_steps is None else min(total, step + args.max_steps)
    task.module.train()
    interrupted = False
    try:
        while step < stop_at:
            epoch, within = divmod(step, steps_per_epoch)
            order = torch.randperm(task.size, generator=torch.Generator().manual_seed(args.seed + epoch))
            batch = order[within * per_step : (within + 1) * per_step]
            batch = batch.view(args.grad_accum, world, args.micro_batch)[:, rank]
            losses = torch.zeros(len(task.weights), device=device)
            # per-step randomness (EAGLE's noise): a resumed run repeats it
            torch.manual_seed(args.seed * 1_000_003 + step)
            for micro in batch:
                with autocast:
                    parts = task.losses(trainable, micro)
                ((parts * task.weights).sum() / args.grad_accum).backward()
                losses += parts.detach() / args.grad_accum
            if args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(task.module.parameters(), args.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if timed and step == TIMING_START:
                timing_from = time.perf_counter()
            if timed and step == TIMING_START + TIMING_STEPS:  # first steps warm caches up: time the ones after them
                timed = False
                now = time.perf_counter()
                fitted = fitted_total(step, total, (now - timing_from) / TIMING_STEPS,
                                      args.minutes * 60 - (now - started))
                if world > 1:  # every rank must stop at the same step
                    fitted_t = torch.tensor([fitted], device=device)
                    dist.all_reduce(fitted_t, op=dist.ReduceOp.MIN)
                    fitted = int(fitted_t)
                if fitted < total:
                    total, stop_at = fitted, min(stop_at, fitted)
                    sched = cosine_schedule(opt, args.warmup, total, step)
                    bar.total = total
                    bar.write(f"--minutes {args.minutes:g}: {total} steps in all")
            history.append(losses.tolist())
            bar.update(1)
            bar.set_postfix(loss=" ".join(f"{x:.2f}" for x in losses.tolist()))
            if step % args.save_every == 0 or step == total:
                if main_rank:
                    save_checkpoint(ckpt, task.module, opt, sched, step, total)
                if world > 1:
                    dist.barrier()
            if has_eval and main_rank and (step % args.eval_every == 0 or step == total):
                bar.write(f"step {step}: " + describe(task.evaluate()))
    except KeyboardInterrupt:  # Ctrl-C: keep what the finished steps learned
        interrupted = True
    bar.close()
    summary = {"step": step, "total_steps": total, "losses": history}
    if step < total and main_rank:  # stopped early (--max-steps, Ctrl-C): a checkpoint and usable weights
        if step % args.save_every:
            save_checkpoint(ckpt, task.module, opt, sched, step, total)
        out = task.save(args.out / ("heads" if args.head == "medusa" else args.head),
                        {"train": {"steps": step, "of_steps": total, "complete": False}})
        print(f"stopped at step {step} of {total}: checkpoint {ckpt}, weights so far {out}; run the same command "
              "again to resume", flush=True)
    if interrupted:
        raise SystemExit(130)
    if main_rank and step == total:
        extra = {"train": {"command": shlex.join(["train/train_heads.py", *(sys.argv[1:] if argv is None else argv)]),
                           "steps": total, "items": task.size, "processes": world,
                           "seconds": round(time.perf_counter() - started, 1)}}
        if has_eval:
            extra["eval"] = task.evaluate()
        out = task.save(args.out / ("heads" if args.head == "medusa" else args.head), extra)
        print(json.dumps(extra.get("eval", {}), indent=None)[:2000])
        print(f"saved {args.head} weights to {out}")
        summary.update(extra)
    if world > 1:
        dist.barrier()  # rank 0's final eval and save are done before the group goes
        del trainable  # DDP's reducer holds the group: left alive, gloo's teardown waits on a peer that has exited
        dist.destroy_process_group()
    return summary


def describe(acc: dict) -> str:
    """One line of per-head (or per-depth) accuracies."""
    line = "top1 " + " ".join(f"{a:.3f}" for a in acc["top1"]) + " | top5 " + " ".join(f"{a:.3f}" for a in acc["top5"])
    return line + (f" | chain tau {acc['chain_tau']:.2f}" if "chain_tau" in acc else "")


if __name__ == "__main__":
    cli.run(main)
