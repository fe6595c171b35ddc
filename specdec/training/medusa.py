"""Medusa heads' training: per-head cross-entropy against the backbone's own next tokens, per-head accuracy, the
task the shared loop runs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from specdec.medusa import MedusaConfig, MedusaHeads, load_medusa, save_medusa
from specdec.model import Transformer
from specdec.training.config import EVAL_RANKS, Task, TrainConfig
from specdec.training.data import HeadData, frequent_tokens, head_data


def trigram_flags(spec: str, num_heads: int) -> list[bool]:
    """A trigram spec ('none', 'all' or head indices like '0,1') as one flag per head."""
    if spec in ("none", "all"):
        return [spec == "all"] * num_heads
    try:
        idx = {int(x) for x in spec.split(",")}
    except ValueError as e:
        raise ValueError(f"--trigram must be 'none', 'all' or head indices like 0,1; got {spec!r}") from e
    if not idx <= set(range(num_heads)):
        raise ValueError(f"--trigram names heads {sorted(idx)} but there are {num_heads}")
    return [i in idx for i in range(num_heads)]


def head_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-head cross-entropy [K] over positions with a label."""
    k, n, v = logits.shape
    ce = F.cross_entropy(logits.float().reshape(k * n, v), labels.T.reshape(-1), ignore_index=-100, reduction="none")
    valid = (labels.T != -100).float().reshape(k, n)
    return (ce.view(k, n) * valid).sum(1) / valid.sum(1).clamp(min=1)


def draft_labels(labels: Tensor, heads: MedusaHeads, vocab_size: int) -> Tensor:
    """Token labels as draft-vocabulary indices; tokens outside it are ignored (no head can draft them)."""
    if not heads.config.draft_vocab:
        return labels
    index = torch.full((vocab_size,), -100, dtype=torch.long, device=labels.device)
    index[heads.vocab_ids] = torch.arange(len(heads.vocab_ids), device=labels.device)
    return torch.where(labels >= 0, index[labels.clamp(min=0)], -100)


@torch.no_grad()
def evaluate(heads: MedusaHeads, data: HeadData, embed: Tensor, lm_head: Tensor, batch: int) -> dict:
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


def medusa_task(config: TrainConfig, model: Transformer, device: torch.device) -> Task:
    """Medusa heads over cached answer positions (with config.init, the saved heads' own config)."""
    embed = model.tok_embeddings.weight
    if config.init:
        heads = load_medusa(config.init, model)[0].float().requires_grad_(True)
    num_heads = heads.config.num_heads if config.init else config.num_heads
    data = head_data(config.data, num_heads, config.max_positions, config.labels)
    eval_data = head_data(config.eval_data, num_heads, config.eval_positions) if config.eval_data else None
    if not config.init:
        heads = MedusaHeads(MedusaConfig(model.args.dim, model.args.vocab_size, num_heads, config.num_layers,
                                         trigram_flags(config.trigram, num_heads), config.own_lm_head,
                                         config.draft_vocab, config.trigram_tokens))
        if config.draft_vocab:
            heads.vocab_ids.copy_(frequent_tokens(data.labels[:, 0], config.draft_vocab))
        heads.init_lm_heads(model.output.weight.float().cpu())
    heads.to(device)

    def losses(trainable: torch.nn.Module, micro: Tensor) -> Tensor:
        lm_head = heads.draft_lm_head(model.output.weight)  # after a resume the checkpoint's draft vocabulary
        logits = trainable(data.hidden[micro].to(device, torch.float32), data.context[micro].to(device), embed, lm_head)
        return head_losses(logits, draft_labels(data.labels[micro].to(device), heads, model.args.vocab_size))

    return Task(heads, len(data), torch.tensor([config.loss_decay**i for i in range(num_heads)], device=device),
                losses,
                lambda: evaluate(heads, eval_data, embed, heads.draft_lm_head(model.output.weight), config.micro_batch),
                lambda path, extra: save_medusa(path, heads, model, extra))
