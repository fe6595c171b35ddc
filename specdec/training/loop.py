"""The training loop every head kind shares: DDP under torchrun (gloo on CPU, nccl on CUDA), bf16 autocast,
gradient accumulation, a cosine schedule with warm-up, periodic eval, checkpoints a rerun resumes from, and a stop
by step count, time budget or Ctrl-C that leaves a checkpoint and usable weights."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from specdec.backbone import backbone_dir, load_transformer, resolve_dtype
from specdec.training.config import TrainConfig
from specdec.training.eagle import eagle_task
from specdec.training.early_exit import exit_task
from specdec.training.medusa import medusa_task

TIMING_START, TIMING_STEPS = 3, 10  # a time budget times the steps after the first few


def save_checkpoint(path: Path, module: torch.nn.Module, opt, sched, step: int, total: int) -> None:
    """Weights (safetensors) and optimizer/scheduler/step/total steps (tensors-only torch file), swapped in
    atomically."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp / "heads.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "total": total},
               tmp / "trainer.pt")
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, module: torch.nn.Module, opt, sched) -> tuple[int, int | None]:
    """Restore a checkpoint written by save_checkpoint; returns its step and the run's total steps if recorded."""
    module.load_state_dict(load_file(str(path / "heads.safetensors")))
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


def describe(acc: dict) -> str:
    """One line of per-head (or per-depth) accuracies."""
    line = "top1 " + " ".join(f"{a:.3f}" for a in acc["top1"]) + " | top5 " + " ".join(f"{a:.3f}" for a in acc["top5"])
    return line + (f" | chain tau {acc['chain_tau']:.2f}" if "chain_tau" in acc else "")


def train(config: TrainConfig) -> dict:
    """Train config.head on a frozen backbone from cached hidden states; run once per process (torchrun sets
    WORLD_SIZE / RANK). Returns {"step", "total_steps", "losses"} (plus "train" and "eval" once the run is done);
    the weights land in config.weights_dir, the checkpoint in config.out / "checkpoint"."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    device = torch.device(config.device
                          or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_rank = rank == 0
    torch.manual_seed(config.seed)

    model = load_transformer(backbone_dir(config.backbone), resolve_dtype(config.dtype, device), device,
                             config.quantize).requires_grad_(False)
    task = {"medusa": medusa_task, "early-exit": exit_task}.get(config.head, eagle_task)(config, model, device)
    has_eval = config.eval_data is not None
    trainable = torch.nn.parallel.DistributedDataParallel(task.module) if world > 1 else task.module
    per_step = config.micro_batch * config.grad_accum * world
    steps_per_epoch = task.size // per_step
    if steps_per_epoch < 1:
        raise ValueError(f"{task.size} training items cannot fill one step of {per_step}: lower --micro-batch")
    total = max(1, math.ceil(config.epochs * steps_per_epoch))
    opt = torch.optim.AdamW(task.module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = cosine_schedule(opt, config.warmup, total)

    ckpt = config.out / "checkpoint"
    step = 0
    if config.resume and ckpt.exists():
        step, saved_total = load_checkpoint(ckpt, task.module, opt, sched)
        if saved_total is not None and saved_total != total:  # a run that shortened itself to its time budget
            total = saved_total
            sched = cosine_schedule(opt, config.warmup, total, step)
    timed = config.minutes is not None and step == 0
    if main_rank:
        print(f"{task.size} {'positions' if config.head == 'medusa' else 'conversations'}, {world} process(es), "
              f"{per_step} per step, {total} steps" + (f", resuming at step {step}" if step else ""), flush=True)
    bf16 = config.autocast == "bf16" or (config.autocast == "auto"
                                         and resolve_dtype("auto", device) == torch.bfloat16)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=bf16)
    bar = tqdm(total=total, initial=step, disable=not main_rank, unit="step")
    started, history = time.perf_counter(), []
    stop_at = total if config.max_steps is None else min(total, step + config.max_steps)
    task.module.train()
    interrupted = False
    try:
        while step < stop_at:
            epoch, within = divmod(step, steps_per_epoch)
            order = torch.randperm(task.size, generator=torch.Generator().manual_seed(config.seed + epoch))
            batch = order[within * per_step : (within + 1) * per_step]
            batch = batch.view(config.grad_accum, world, config.micro_batch)[:, rank]
            losses = torch.zeros(len(task.weights), device=device)
            # per-step randomness (EAGLE's noise): a resumed run repeats it
            torch.manual_seed(config.seed * 1_000_003 + step)
            for micro in batch:
                with autocast:
                    parts = task.losses(trainable, micro)
                ((parts * task.weights).sum() / config.grad_accum).backward()
                losses += parts.detach() / config.grad_accum
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(task.module.parameters(), config.max_grad_norm)
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
                                      config.minutes * 60 - (now - started))
                if world > 1:  # every rank must stop at the same step
                    fitted_t = torch.tensor([fitted], device=device)
                    dist.all_reduce(fitted_t, op=dist.ReduceOp.MIN)
                    fitted = int(fitted_t)
                if fitted < total:
                    total, stop_at = fitted, min(stop_at, fitted)
                    sched = cosine_schedule(opt, config.warmup, total, step)
                    bar.total = total
                    bar.write(f"--minutes {config.minutes:g}: {total} steps in all")
            history.append(losses.tolist())
            bar.update(1)
            bar.set_postfix(loss=" ".join(f"{x:.2f}" for x in losses.tolist()))
            if step % config.save_every == 0 or step == total:
                if main_rank:
                    save_checkpoint(ckpt, task.module, opt, sched, step, total)
                if world > 1:
                    dist.barrier()
            if has_eval and main_rank and (step % config.eval_every == 0 or step == total):
                bar.write(f"step {step}: " + describe(task.evaluate()))
    except KeyboardInterrupt:  # Ctrl-C: keep what the finished steps learned
        interrupted = True
    bar.close()
    summary = {"step": step, "total_steps": total, "losses": history}
    if step < total and main_rank:  # stopped early (max_steps, Ctrl-C): a checkpoint and usable weights
        if step % config.save_every:
            save_checkpoint(ckpt, task.module, opt, sched, step, total)
        out = task.save(config.weights_dir, {"train": {"steps": step, "of_steps": total, "complete": False}})
        print(f"stopped at step {step} of {total}: checkpoint {ckpt}, weights so far {out}; run the same command "
              "again to resume", flush=True)
    if interrupted:
        raise KeyboardInterrupt
    if main_rank and step == total:
        extra = {"train": {"command": config.command, "steps": total, "items": task.size, "processes": world,
                           "seconds": round(time.perf_counter() - started, 1)}}
        if has_eval:
            extra["eval"] = task.evaluate()
        out = task.save(config.weights_dir, extra)
        print(json.dumps(extra.get("eval", {}), indent=None)[:2000])
        print(f"saved {config.head} weights to {out}")
        summary.update(extra)
    if world > 1:
        dist.barrier()  # rank 0's final eval and save are done before the group goes
        del trainable  # DDP's reducer holds the group: left alive, gloo's teardown waits on a peer that has exited
        dist.destroy_process_group()
    return summary
