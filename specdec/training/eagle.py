"""EAGLE / EAGLE-3 training: packed teacher-forced batches, the losses, rolled-out accuracy, the task the shared
loop runs.

Input j of a conversation is (f_j, x_{j+1}); its target is f_{j+1}. EAGLE: SmoothL1 on the feature plus 0.1 x the
cross-entropy against the backbone's own distribution softmax(lm_head f_{j+1}), on answer positions only.
EAGLE-3: the input is the fused layers' features at j, and the loss has no feature term: per drafting step, the
soft cross-entropy against the backbone's distribution restricted to the draft vocabulary (positions whose backbone
argmax lies outside it masked), steps weighted 0.8^i by the caller.
With `steps` > 1 the draft is also trained on what it reads when drafting s tokens ahead (EAGLE-3's training-time
test, HASS's context alignment): at step s input j is (the step s-1 output at j-1, x_{j+1}), attending to the
teacher-forced keys up to j-s+1 and to its own steps' keys on the diagonal, exactly the draft cache at depth s.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from specdec.eagle import Draft, EagleConfig, EagleDraft, load_eagle, save_eagle
from specdec.eagle3 import Eagle3Config, Eagle3Draft
from specdec.model import Transformer, rope_tables
from specdec.training.config import EVAL_RANKS, Task, TrainConfig
from specdec.training.data import SequenceData, aux_layers_of, frequent_tokens, sequence_data


@dataclass
class PackedBatch:
    """Several conversations in one row set with a block-diagonal causal mask; positions restart per conversation."""

    features: Tensor  # [n, d] inputs f_j (EAGLE-3: the fused layers' [n, k * d])
    tokens: Tensor  # [n] inputs x_{j+1}
    targets: Tensor  # [n, d] f_{j+1}
    positions: Tensor  # [n]
    mask: Tensor  # [n, n] bool
    answer: Tensor  # [n] bool: the target predicts an answer token
    best: Tensor  # [n] the backbone's argmax at j+1 (what f_{j+1} predicts)


def pack(data: SequenceData, index: list[int], device: torch.device, dtype: torch.dtype,
         all_positions: bool = False) -> PackedBatch:
    """Teacher-forced inputs and targets of the conversations `index`, on one device (inputs from the fused layers
    when the data holds them); all_positions: prompt rows count as `answer` rows too (they get a loss)."""
    feats, toks, targets, pos, answer, seq, best = [], [], [], [], [], [], []
    for n, i in enumerate(index):
        f, ids, p = data.hidden[i], data.tokens[i], data.prompt_len[i]
        rows = len(ids) - 2  # inputs j = 0 .. T-3
        feats.append((data.aux[i] if data.aux else f)[:-1].to(dtype))  # cast first: CPU autocast's cat refuses fp16
        toks.append(ids[1:-1])
        targets.append(f[1:].to(dtype))
        best.append((data.best[i] if data.best else ids[1:])[1:])  # data without recorded picks: its own text
        pos.append(torch.arange(rows))
        # h_{j+1} predicts x_{j+2}: an answer token from p - 1 on
        answer.append(torch.arange(1, rows + 1) >= (0 if all_positions else p - 1))
        seq.append(torch.full((rows,), n))
    seq_t, pos_t = torch.cat(seq), torch.cat(pos)
    mask = (seq_t[:, None] == seq_t[None, :]) & (pos_t[:, None] >= pos_t[None, :])
    return PackedBatch(torch.cat(feats).to(device, dtype), torch.cat(toks).to(device),
                       torch.cat(targets).to(device, dtype), pos_t.to(device), mask.to(device),
                       torch.cat(answer).to(device), torch.cat(best).to(device))


def rollout_mask(batch: PackedBatch, step: int) -> Tensor:
    """[n, step * n] attention of step `step` (1-based) over the keys of steps 1..step: teacher-forced keys up to
    j - step + 1, then the key of step u at row j - (step - u); rows of other conversations never."""
    same = batch.mask | batch.mask.T  # same conversation (the packed mask is causal within it)
    lag = batch.positions[:, None] - batch.positions[None, :]
    return torch.cat([same & (lag >= step - 1)] + [same & (lag == step - u) for u in range(2, step + 1)], dim=1)


def rollout_outputs(draft: torch.nn.Module, batch: PackedBatch, embed: Tensor, cos: Tensor, sin: Tensor, steps: int,
                    noise: float) -> list[tuple[Tensor, Tensor]]:
    """(draft outputs [n, d], rows that exist at this step [n]) for steps 1..`steps`; noise on step 1's inputs only.
    Steps from 2 on read the previous step's outputs in place of the backbone's features (the training-time test)."""
    x = batch.features + (torch.rand_like(batch.features) - 0.5) * noise
    module = draft.module if hasattr(draft, "module") else draft
    n = x.shape[0]
    kv = module.new_cache(n).to(x.dtype)
    c, s = cos[batch.positions], sin[batch.positions]
    out = draft(x, batch.tokens, embed, c, s, kv, 0, batch.mask)
    results = [(out, torch.ones(n, dtype=torch.bool, device=x.device))]
    for step in range(2, steps + 1):
        prev = torch.cat((out[:1], out[:-1]))  # row j reads row j-1's; rows where that is another conversation's
        # (position < step - 1) do not exist at this step and no row that does exist attends to them
        # a new tensor: autograd needs the old keys as read
        kv = torch.cat((kv, module.new_cache(n).to(x.dtype)), dim=2)
        out = draft(prev, batch.tokens, embed, c, s, kv, (step - 1) * n, rollout_mask(batch, step))
        results.append((out, batch.positions >= step - 1))
    return results


def eagle_losses(draft: torch.nn.Module, batch: PackedBatch, embed: Tensor, lm_head: Tensor, cos: Tensor, sin: Tensor,
                 noise: float, steps: int = 1) -> Tensor:
    """[feature SmoothL1, token cross-entropy] over answer positions, averaged over `steps` drafting steps."""
    total = torch.zeros(2, device=batch.features.device)
    targets = batch.targets[batch.answer]
    with torch.no_grad():  # every step predicts the same tokens: their distributions are computed once
        probs = F.softmax(F.linear(targets, lm_head).float(), dim=-1)
    for out, exists in rollout_outputs(draft, batch, embed, cos, sin, steps, noise):
        keep = exists[batch.answer]
        out, target, p = out[batch.answer & exists], targets[keep], probs[keep]
        feature_loss = F.smooth_l1_loss(out.float(), target.float())
        token_loss = -(p * F.log_softmax(F.linear(out, lm_head).float(), dim=-1)).sum(-1).mean()
        total = total + torch.stack((feature_loss, token_loss))
    return total / steps


def eagle3_losses(draft: torch.nn.Module, batch: PackedBatch, embed: Tensor, lm_head: Tensor, cos: Tensor,
                  sin: Tensor, noise: float, steps: int) -> Tensor:
    """[steps] soft cross-entropies against the backbone's distribution over the draft vocabulary, answer
    positions whose backbone argmax the draft vocabulary holds."""
    module = draft.module if hasattr(draft, "module") else draft
    rows = batch.answer & module.t2d[batch.best]
    with torch.no_grad():  # every step predicts the same tokens: their distributions are computed once
        probs = F.softmax(F.linear(batch.targets[rows], lm_head[module.t2d]).float(), dim=-1)
    losses = []
    for out, exists in rollout_outputs(draft, batch, embed, cos, sin, steps, noise):
        keep = exists[rows]
        logp = F.log_softmax(module.logits(out[rows & exists]).float(), dim=-1)
        losses.append(-(probs[keep] * logp).sum(-1).mean() if keep.any() else out.sum() * 0)
    return torch.stack(losses)


@torch.no_grad()
def rollout_accuracy(draft: Draft, data: SequenceData, embed: Tensor, lm_head: Tensor, cos: Tensor, sin: Tensor,
                     depth: int = 5, positions: int = 1024, seed: int = 0) -> dict:
    """Draft `depth` tokens ahead from answer positions along the true (greedy) answer, as when decoding: per-depth
    top-1/top-5 and rank accuracy, each conditioned on the path so far being right; out-of-vocabulary = miss.
    EAGLE-3 drafts read the data's fused layers."""
    device = embed.device
    index = torch.full((embed.shape[0],), -1, dtype=torch.long, device=device)
    index[draft.vocab_ids] = torch.arange(len(draft.vocab_ids), device=device)
    starts = [(i, j) for i, (ids, p) in enumerate(zip(data.tokens, data.prompt_len))
              for j in range(max(p - 2, 0), len(ids) - 2)]  # j: last verified pair; x_{j+2} is an answer token
    g = torch.Generator().manual_seed(seed)
    chosen = sorted((starts[k] for k in torch.randperm(len(starts), generator=g)[:positions].tolist()), reverse=True)
    hits, counts = torch.zeros(depth, EVAL_RANKS), torch.zeros(depth)
    by_seq: dict[int, list[int]] = {}
    for i, j in chosen:
        by_seq.setdefault(i, []).append(j)
    dtype = draft.fc.weight.dtype
    for i, js in by_seq.items():
        ids = data.tokens[i].to(device)
        f = (data.aux[i] if data.aux else data.hidden[i]).to(device, dtype)
        kv = draft.new_cache(len(ids) + depth)
        n = len(ids) - 2
        pos = torch.arange(n, device=device)
        true_out = draft(f[:-1], ids[1:-1], embed, cos[pos], sin[pos], kv, 0, None)
        for j in js:  # descending: a rollout overwrites only cache slots above its own start
            h = true_out[j : j + 1]
            for d in range(1, depth + 1):
                if j + 1 + d >= len(ids):
                    break
                label = index[ids[j + 1 + d]]
                counts[d - 1] += 1
                if label < 0:
                    break
                top = draft.logits(h, lm_head)[0].topk(EVAL_RANKS).indices
                hits[d - 1] += (top == label).float().cpu()
                p = torch.tensor([j + d], device=device)
                h = draft(h, ids[j + 1 + d : j + 2 + d], embed, cos[p], sin[p], kv, j + d, None)
    rank_acc = hits / counts.clamp(min=1)[:, None]
    top1 = rank_acc[:, 0].tolist()
    chain_tau, run = 1.0, 1.0
    for a in top1:
        run *= a
        chain_tau += run
    return {"top1": top1, "top5": rank_acc[:, :5].sum(1).tolist(), "rank_accuracy": rank_acc.tolist(),
            "positions": int(counts[0]), "chain_tau": chain_tau}


def eagle_task(config: TrainConfig, model: Transformer, device: torch.device) -> Task:
    """An EAGLE or EAGLE-3 draft layer over cached conversations (prompt and answer features)."""
    embed = model.tok_embeddings.weight
    eagle3 = config.head == "eagle3"
    data = sequence_data(config.data, config.max_positions, aux=eagle3)
    eval_data = sequence_data(config.eval_data, aux=eagle3) if config.eval_data else None
    if config.init:
        draft = load_eagle(config.init, model)[0].float().requires_grad_(True)
        if isinstance(draft, Eagle3Draft) != eagle3:
            raise ValueError(f"--init {config.init} is not an {config.head} draft")
    elif eagle3:
        draft = new_eagle3(config, model, data)
    else:
        draft = EagleDraft(EagleConfig(model.args.dim, model.args.vocab_size, config.draft_vocab), model.args)
        if config.draft_vocab:
            answers = torch.cat([t[p:] for t, p in zip(data.tokens, data.prompt_len)])
            draft.vocab_ids.copy_(frequent_tokens(answers, config.draft_vocab))
    draft.to(device)
    cos, sin = rope_tables(model.args, max(len(t) for t in data.tokens + (eval_data.tokens if eval_data else [])) + 8,
                           torch.float32, device)

    def losses(trainable: torch.nn.Module, micro: Tensor) -> Tensor:
        batch = pack(data, micro.tolist(), device, torch.float32, config.train_on == "all")
        if eagle3:
            return eagle3_losses(trainable, batch, embed, model.output.weight, cos, sin, config.noise,
                                 config.rollout_steps)
        return eagle_losses(trainable, batch, embed, draft.draft_lm_head(model.output.weight), cos, sin, config.noise,
                            config.rollout_steps)

    def evaluate_draft() -> dict:
        draft.eval()
        out = rollout_accuracy(draft, eval_data, embed, model.output.weight, cos, sin, config.eval_depth,
                               min(config.eval_positions, 1024), config.seed)
        draft.train()
        return out

    weights = [config.loss_decay**i for i in range(config.rollout_steps)] if eagle3 else [1.0, config.token_weight]
    return Task(draft, len(data), torch.tensor(weights, device=device), losses, evaluate_draft,
                lambda path, extra: save_eagle(path, draft, model, extra))


def new_eagle3(config: TrainConfig, model: Transformer, data: SequenceData) -> Eagle3Draft:
    """A fresh EAGLE-3 draft: the data's fused layers, the answers' most frequent backbone picks as its vocabulary,
    its lm_head and final norm started from the backbone's (its outputs start out read like backbone features)."""
    layers = {tuple(aux_layers_of(path)) for path in config.data}
    if len(layers) > 1:
        raise ValueError(f"the data files keep different aux layers {sorted(layers)}: make them with one --aux-layers")
    a = model.args
    draft = Eagle3Draft(Eagle3Config(a.dim, a.vocab_size, config.draft_vocab, list(layers.pop())), a)
    picks = torch.cat([b[p - 1 :] for b, p in zip(data.best, data.prompt_len)])
    draft.set_vocab(frequent_tokens(picks, config.draft_vocab, a.vocab_size))
    with torch.no_grad():
        draft.lm_head.weight.copy_(model.output.weight[draft.vocab_ids].float())
        draft.norm.weight.copy_(model.norm.weight.float())
    return draft
