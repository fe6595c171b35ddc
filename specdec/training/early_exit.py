"""Early-exit adapter training (Kangaroo): the frozen backbone's first E layers run over cached conversations, the
adapter reads their output and learns the backbone's own next-token distribution (soft cross-entropy against
softmax(lm_head f_t), f_t the cached final hidden state), on answer positions whose backbone argmax the draft
vocabulary holds.

The drafting layers' output depends only on the tokens, so a draft k tokens ahead whose earlier drafts were right
reads exactly the teacher-forced input: teacher-forced accuracy is the per-depth acceptance, and training needs no
rollout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from specdec.early_exit import ExitAdapter, exit_layers, load_adapter, new_adapter, save_adapter
from specdec.model import Transformer, rope_tables
from specdec.training.config import Task, TrainConfig
from specdec.training.data import SequenceData, frequent_tokens, sequence_data


@dataclass
class ExitBatch:
    """Whole conversations packed in one row set (block-diagonal causal mask, positions restarting per conversation):
    token t, the backbone's final hidden state after it, and whether it predicts an answer token."""

    tokens: Tensor  # [n]
    positions: Tensor  # [n]
    mask: Tensor  # [n, n] bool
    targets: Tensor  # [n, d]
    answer: Tensor  # [n] bool
    best: Tensor  # [n] the backbone's argmax after each token


def pack_exit(data: SequenceData, index: list[int], device: torch.device) -> ExitBatch:
    """The conversations `index` (every token but each one's last) as one ExitBatch on `device`."""
    toks, pos, seq, targets, answer, best = [], [], [], [], [], []
    for n, i in enumerate(index):
        ids, p = data.tokens[i], data.prompt_len[i]
        rows = len(ids) - 1
        toks.append(ids[:-1])
        pos.append(torch.arange(rows))
        seq.append(torch.full((rows,), n))
        targets.append(data.hidden[i].float())
        answer.append(torch.arange(rows) >= p - 1)  # token t predicts t + 1: an answer token from p - 1 on
        best.append(data.best[i])
    seq_t, pos_t = torch.cat(seq), torch.cat(pos)
    mask = (seq_t[:, None] == seq_t[None, :]) & (pos_t[:, None] >= pos_t[None, :])
    return ExitBatch(torch.cat(toks).to(device), pos_t.to(device), mask.to(device), torch.cat(targets).to(device),
                     torch.cat(answer).to(device), torch.cat(best).to(device))


@torch.no_grad()
def layer_outputs(model: Transformer, layers: tuple[int, ...], batch: ExitBatch, cos: Tensor, sin: Tensor) -> Tensor:
    """The drafting layers' output [n, d] over a packed batch, each layer attending over a scratch cache."""
    a, n = model.args, batch.tokens.shape[0]
    x = model.tok_embeddings(batch.tokens)
    c, s = cos[batch.positions].to(x.dtype), sin[batch.positions].to(x.dtype)
    kv = torch.empty(2, a.n_kv_heads, n, a.head_dim, dtype=x.dtype, device=x.device)
    for i in layers:
        x = model.layers[i](x, c, s, kv, 0, batch.mask)
    return x


def exit_loss(adapter: torch.nn.Module, model: Transformer, layers: tuple[int, ...], batch: ExitBatch,
              lm_head: Tensor, vocab_ids: Tensor, in_vocab: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """[1] soft cross-entropy against the backbone's distribution over the draft vocabulary (lm_head: its rows)."""
    h = layer_outputs(model, layers, batch, cos, sin).float()
    rows = batch.answer & in_vocab[batch.best]
    with torch.no_grad():
        probs = F.softmax(F.linear(batch.targets[rows], lm_head).float(), dim=-1)
    module = adapter.module if hasattr(adapter, "module") else adapter
    kv = module.new_cache(h.shape[0]).to(h.dtype)
    out = adapter(h, cos[batch.positions], sin[batch.positions], kv, 0, batch.mask)[rows]
    logp = F.log_softmax(F.linear(out, lm_head.to(out.dtype)).float(), dim=-1)
    return (-(probs * logp).sum(-1).mean() if rows.any() else out.sum() * 0).view(1)


@torch.no_grad()
def exit_accuracy(model: Transformer, layers: tuple[int, ...], adapter: ExitAdapter | None, data: SequenceData,
                  depth: int = 5, conversations: int | None = None) -> dict:
    """Teacher-forced top-1 / top-5 of the exit head (the adapter, or the final norm + lm_head when None) against the
    backbone's own next token on answer positions: the acceptance of each drafted token whose predecessors were right;
    chain_tau = 1 + a + ... + a^depth, the tau of greedy chains of `depth` drafts at that acceptance. Tokens outside
    the adapter's draft vocabulary count as misses."""
    device = model.tok_embeddings.weight.device
    cos, sin = rope_tables(model.args, max(len(t) for t in data.tokens), torch.float32, device)
    hits1 = hits5 = total = 0
    for i in range(len(data) if conversations is None else min(conversations, len(data))):
        batch = pack_exit(data, [i], device)
        h = layer_outputs(model, layers, batch, cos, sin)
        if adapter is None:
            logits, vocab = model.output(model.norm(h)), None
        else:
            kv = adapter.new_cache(h.shape[0])
            out = adapter(h.to(kv.dtype), cos[batch.positions].to(kv.dtype), sin[batch.positions].to(kv.dtype), kv,
                          0, batch.mask)
            logits, vocab = F.linear(out, adapter.draft_lm_head(model.output.weight).to(out.dtype)), adapter.vocab_ids
        top = logits[batch.answer].topk(5, dim=-1).indices
        top = top if vocab is None else vocab[top]
        hit = top == batch.best[batch.answer][:, None]
        hits1 += int(hit[:, 0].sum())
        hits5 += int(hit.any(dim=1).sum())
        total += int(batch.answer.sum())
    top1 = hits1 / max(total, 1)
    return {"top1": [top1], "top5": [hits5 / max(total, 1)], "positions": total,
            "chain_tau": sum(top1**d for d in range(depth + 1)), "layers": list(layers)}


def exit_task(config: TrainConfig, model: Transformer, device: torch.device) -> Task:
    """An exit adapter after the backbone's first config.exit_layer layers, over cached conversations."""
    data = sequence_data(config.data, config.max_positions)
    eval_data = sequence_data(config.eval_data) if config.eval_data else None
    layers = exit_layers(model.args.n_layers, config.exit_layer)
    if config.init:
        adapter = load_adapter(config.init, model)[0].float().requires_grad_(True)
        if adapter.layers != layers:
            raise ValueError(f"--init {config.init} follows layers {list(adapter.layers)}, not the first "
                             f"{config.exit_layer}")
    else:
        picks = torch.cat([b[p - 1 :] for b, p in zip(data.best, data.prompt_len)])
        vocab = frequent_tokens(picks, config.draft_vocab, model.args.vocab_size) if config.draft_vocab else None
        adapter = new_adapter(model, layers, vocab)
    adapter.to(device).train()
    lengths = [len(t) for t in data.tokens + (eval_data.tokens if eval_data else [])]
    cos, sin = rope_tables(model.args, max(lengths), torch.float32, device)
    lm_head = adapter.draft_lm_head(model.output.weight).float()
    in_vocab = torch.zeros(model.args.vocab_size, dtype=torch.bool, device=device)
    in_vocab[adapter.vocab_ids] = True

    def losses(trainable: torch.nn.Module, micro: Tensor) -> Tensor:
        batch = pack_exit(data, micro.tolist(), device)
        return exit_loss(trainable, model, layers, batch, lm_head, adapter.vocab_ids, in_vocab, cos, sin)

    def evaluate() -> dict:
        adapter.eval()
        out = exit_accuracy(model, layers, adapter, eval_data, config.eval_depth)
        adapter.train()
        return out

    return Task(adapter, len(data), torch.ones(1, device=device), losses, evaluate,
                lambda path, extra: save_adapter(path, adapter, model, extra))
