"""The one decode loop: prefill, then draft -> verify -> accept -> commit, greedy or sampling."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from specdec.drafters.base import DecodeState, Drafter, NoDrafter, root_only
from specdec.kernels import greedy_accept
from specdec.model import Transformer
from specdec.sampling import SamplingConfig, sample, target_probs, tree_sample_accept, typical_accept
from specdec.verify_step import VerifyStep, default_step


@dataclass
class DecodeStats:
    """What one generation cost: verify steps, tokens emitted per step (bonus included), wall times."""

    new_tokens: int = 0
    steps: int = 0
    accepted: list[int] = field(default_factory=list)
    tree_sizes: list[int] = field(default_factory=list)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stop_reason: str = ""

    @property
    def tau(self) -> float:
        """Mean tokens emitted per verify forward, bonus included (plain decoding: 1.0)."""
        return sum(self.accepted) / max(len(self.accepted), 1)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / max(self.prefill_s + self.decode_s, 1e-9)


@dataclass
class DecodeResult:
    """Generated token ids (prompt excluded), statistics, and plain decoding's top-2 logit gaps if tracked."""

    tokens: list[int]
    stats: DecodeStats
    top2_gaps: list[float] | None = None


def _top2_gap(logits: Tensor) -> float:
    top = logits.float().topk(2).values
    return float(top[0] - top[1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def decode(
    model: Transformer,
    prompt_ids: Sequence[int],
    drafter: Drafter | None = None,
    max_new_tokens: int = 256,
    stop_ids: Sequence[int] = (),
    on_tokens: Callable[[list[int]], bool | None] | None = None,
    track_top2_gaps: bool = False,
    sampling: SamplingConfig | None = None,
    step: VerifyStep | None = None,
) -> DecodeResult:
    """Speculative decoding: greedy (no sampling / temperature 0) is plain greedy token for token, sampling is plain
    sampling in distribution (unless lossy typical acceptance). Stops at a stop id (kept), max_new_tokens, full context,
    or when on_tokens (called with each step's new tokens) returns True. step: the verify forward (default: the
    model's "auto" one, the one SpecModel uses: specdec.verify_step.default_step)."""
    drafter = drafter or NoDrafter()
    verify = step or default_step(model)
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token")
    if len(prompt) >= model.max_seq_len:
        raise ValueError(
            f"the prompt has {len(prompt)} tokens but the context holds {model.max_seq_len}: "
            "shorten it or load the model with a larger max_seq_len"
        )
    if min(prompt) < 0 or max(prompt) >= model.args.vocab_size:
        bad = next(t for t in prompt if not 0 <= t < model.args.vocab_size)
        raise ValueError(f"prompt token id {bad} is outside the vocabulary (0..{model.args.vocab_size - 1})")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    device = model.tok_embeddings.weight.device
    sampling = sampling if sampling is not None and not sampling.greedy else None
    generator = sampling.generator(device) if sampling else None
    budget = min(max_new_tokens, model.max_seq_len - len(prompt))
    stops = set(int(s) for s in stop_ids)
    stats = DecodeStats()
    gaps: list[float] | None = [] if track_top2_gaps else None
    out_tokens: list[int] = []

    def emit(new: list[int]) -> bool:
        for i, t in enumerate(new):
            if t in stops or len(out_tokens) + i + 1 == budget:
                new = new[: i + 1]
                stats.stop_reason = ("stop_id" if t in stops
                                     else ("max_new_tokens" if budget == max_new_tokens else "context"))
                break
        out_tokens.extend(new)
        if on_tokens is not None and on_tokens(new) and not stats.stop_reason:
            stats.stop_reason = "caller"
        return bool(stats.stop_reason)

    t0 = time.perf_counter()
    model.reset()
    out = model.forward(torch.tensor(prompt, device=device), logits_for=slice(-1, None),
                        hidden_layers=drafter.hidden_layers)
    model.commit(None, len(prompt))
    first = int(sample(target_probs(out.logits[-1], sampling), generator) if sampling else out.logits[-1].argmax())
    if gaps is not None:
        gaps.append(_top2_gap(out.logits[-1]))
    state = DecodeState(tokens=prompt + [first], prompt_len=len(prompt), hidden=out.hidden, layers=out.layers)
    done = emit([first])
    drafter.begin(state)
    _sync(device)
    stats.prefill_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    while not done:
        tree = drafter.propose(state)
        if model.length + tree.shape.size > model.max_seq_len:
            tree = root_only(state)
        shape = tree.shape
        out = verify(
            tree.tokens,
            positions=model.length + shape.depth,
            tree_mask=None if shape.chain else shape.mask,
            hidden_layers=drafter.hidden_layers,
        )
        target = out.logits.argmax(dim=-1)  # also when sampling: drafters (lookahead) use each node's argmax
        if sampling is None:
            best, n_drafts, bonus = greedy_accept(tree.tokens, target, shape.paths)
        elif sampling.lossy_typical_acceptance:
            best, n_drafts, bonus = typical_accept(tree.tokens, target_probs(out.logits, sampling), shape, sampling,
                                                   generator)
        else:
            best, n_drafts, bonus = tree_sample_accept(tree.tokens, target_probs(out.logits, sampling), shape,
                                                       generator)
        path = shape.paths[best]
        # one device-to-host transfer per step: root, accepted count, bonus, the best path's tokens, every node's target
        head = torch.stack((tree.tokens[0], n_drafts.long(), bonus.long()))
        root, n, bonus_token, *rest = torch.cat((head, tree.tokens[path.clamp(min=0)], target)).tolist()
        path_tokens, targets = rest[: path.shape[0]], rest[path.shape[0] :]
        if root != state.tokens[-1]:
            raise RuntimeError(f"drafter {drafter.name!r} proposed a tree whose root is not the pending token")
        accepted = path[: n + 1]
        model.commit(None if shape.chain else accepted, n + 1)
        new = path_tokens[1 : n + 1] + [bonus_token]
        if gaps is not None:
            gaps.extend(_top2_gap(out.logits[i]) for i in accepted.tolist())
        stats.steps += 1
        stats.accepted.append(n + 1)
        stats.tree_sizes.append(shape.size)
        state.tokens.extend(new)
        state.hidden = out.hidden[accepted]
        state.layers = {i: h[accepted] for i, h in out.layers.items()}
        state.accepted = accepted
        state.tree, state.targets = tree, targets
        done = emit(new)
        if not done:
            drafter.update(state)
    _sync(device)
    stats.decode_s = time.perf_counter() - t0
    stats.new_tokens = len(out_tokens)
    if gaps is not None:
        gaps = gaps[: len(out_tokens)]
    return DecodeResult(tokens=out_tokens, stats=stats, top2_gaps=gaps)
