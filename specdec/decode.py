"""The one decode loop: prefill, then draft -> verify -> accept -> commit, greedy or sampling."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from specdec.drafters.base import DecodeState, Drafter, NoDrafter, root_only
from specdec.kernels import greedy_accept
from specdec.model import ForwardOut, Transformer
from specdec.sampling import SamplingConfig, sample, target_probs, tree_sample_accept, typical_accept
from specdec.tree import Tree
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


def check_prompt(model: Transformer, prompt_ids: Sequence[int]) -> list[int]:
    """The prompt as a list of ints, or a clear error: empty, longer than the context, ids outside the vocabulary."""
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
    return prompt


class DecodeSequence:
    """One prompt being decoded: its drafter, decode state, output and statistics. The loops (`decode` for one
    sequence, `specdec.batch.decode_batch` for many) run the backbone; a DecodeSequence does the rest: the first
    token, the tree to verify, acceptance when sampling, and the commit of the accepted path into its own state."""

    def __init__(self, model: Transformer, prompt: list[int], drafter: Drafter, max_new_tokens: int,
                 stop_ids: Sequence[int], on_tokens: Callable[[list[int]], bool | None] | None,
                 sampling: SamplingConfig | None, generator: torch.Generator | None, track_top2_gaps: bool):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.max_seq_len = model.max_seq_len
        self.prompt, self.drafter, self.on_tokens = prompt, drafter, on_tokens
        self.sampling, self.generator = sampling, generator
        self.max_new_tokens = max_new_tokens
        self.budget = min(max_new_tokens, model.max_seq_len - len(prompt))
        self.stops = set(int(s) for s in stop_ids)
        self.stats = DecodeStats()
        self.gaps: list[float] | None = [] if track_top2_gaps else None
        self.tokens: list[int] = []
        self.length = 0  # committed cache slots
        self.state: DecodeState | None = None
        self.done = False

    def _emit(self, new: list[int]) -> bool:
        stats = self.stats
        for i, t in enumerate(new):
            if t in self.stops or len(self.tokens) + i + 1 == self.budget:
                new = new[: i + 1]
                stats.stop_reason = ("stop_id" if t in self.stops
                                     else ("max_new_tokens" if self.budget == self.max_new_tokens else "context"))
                break
        self.tokens.extend(new)
        if self.on_tokens is not None and self.on_tokens(new) and not stats.stop_reason:
            stats.stop_reason = "caller"
        return bool(stats.stop_reason)

    def start(self, logits: Tensor, hidden: Tensor, layers: dict[int, Tensor]) -> None:
        """After the prefill: the last prompt position's logits [V], every prompt position's hidden states."""
        first = int(sample(target_probs(logits, self.sampling), self.generator) if self.sampling else logits.argmax())
        if self.gaps is not None:
            self.gaps.append(_top2_gap(logits))
        self.length = len(self.prompt)
        self.state = DecodeState(tokens=self.prompt + [first], prompt_len=len(self.prompt), hidden=hidden,
                                 layers=layers)
        self.done = self._emit([first])
        self.drafter.begin(self.state)

    def propose(self) -> Tree:
        """The drafter's tree, or the root alone where the tree would not fit the context."""
        return self.fit(self.drafter.propose(self.state))

    def fit(self, tree: Tree) -> Tree:
        """The tree, or the root alone where it would not fit the context."""
        return root_only(self.state) if self.length + tree.shape.size > self.max_seq_len else tree

    def sample_accept(self, tree: Tree, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(path row, accepted drafts, bonus) by exact rejection sampling, or LOSSY typical acceptance if asked."""
        probs = target_probs(logits, self.sampling)
        if self.sampling.lossy_typical_acceptance:
            return typical_accept(tree.tokens, probs, tree.shape, self.sampling, self.generator)
        return tree_sample_accept(tree.tokens, probs, tree.shape, self.generator)

    def advance(self, tree: Tree, out: ForwardOut, target: Tensor, best: Tensor, n_drafts: Tensor,
                bonus: Tensor) -> Tensor:
        """Take the accepted path (out: this tree's verify output, target: each node's argmax) into the state and the
        output; returns the accepted node indices, whose K/V the caller keeps."""
        shape, state = tree.shape, self.state
        path = shape.paths[best]
        # one device-to-host transfer per step: root, accepted count, bonus, the best path's tokens, every node's target
        head = torch.stack((tree.tokens[0], n_drafts.long(), bonus.long()))
        root, n, bonus_token, *rest = torch.cat((head, tree.tokens[path.clamp(min=0)], target)).tolist()
        path_tokens, targets = rest[: path.shape[0]], rest[path.shape[0] :]
        if root != state.tokens[-1]:
            raise RuntimeError(f"drafter {self.drafter.name!r} proposed a tree whose root is not the pending token")
        accepted = path[: n + 1]
        new = path_tokens[1 : n + 1] + [bonus_token]
        if self.gaps is not None:
            self.gaps.extend(_top2_gap(out.logits[i]) for i in accepted.tolist())
        self.length += n + 1
        self.stats.steps += 1
        self.stats.accepted.append(n + 1)
        self.stats.tree_sizes.append(shape.size)
        state.tokens.extend(new)
        state.hidden = out.hidden[accepted]
        state.layers = {i: h[accepted] for i, h in out.layers.items()}
        state.accepted = accepted
        state.tree, state.targets = tree, targets
        self.done = self._emit(new)
        if not self.done:
            self.drafter.update(state)
        return accepted

    def result(self) -> DecodeResult:
        self.stats.new_tokens = len(self.tokens)
        gaps = None if self.gaps is None else self.gaps[: len(self.tokens)]
        return DecodeResult(tokens=self.tokens, stats=self.stats, top2_gaps=gaps)


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
    model's "auto" one, the one SpecModel uses: specdec.verify_step.default_step). Many prompts at once:
    specdec.batch.decode_batch."""
    drafter = drafter or NoDrafter()
    verify = step or default_step(model)
    prompt = check_prompt(model, prompt_ids)
    device = model.tok_embeddings.weight.device
    sampling = sampling if sampling is not None and not sampling.greedy else None
    seq = DecodeSequence(model, prompt, drafter, max_new_tokens, stop_ids, on_tokens, sampling,
                   sampling.generator(device) if sampling else None, track_top2_gaps)

    t0 = time.perf_counter()
    model.reset()
    out = model.forward(torch.tensor(prompt, device=device), logits_for=slice(-1, None),
                        hidden_layers=drafter.hidden_layers)
    model.commit(None, len(prompt))
    seq.start(out.logits[-1], out.hidden, out.layers)
    _sync(device)
    seq.stats.prefill_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    while not seq.done:
        tree = seq.propose()
        shape = tree.shape
        out = verify(
            tree.tokens,
            positions=model.length + shape.depth,
            tree_mask=None if shape.chain else shape.mask,
            hidden_layers=drafter.hidden_layers,
        )
        target = out.logits.argmax(dim=-1)  # also when sampling: drafters (lookahead) use each node's argmax
        if sampling is None:
            best, n_drafts, bonus = (x[0] for x in greedy_accept(tree.tokens[None], target[None], shape.paths[None]))
        else:
            best, n_drafts, bonus = seq.sample_accept(tree, out.logits, target)
        accepted = seq.advance(tree, out, target, best, n_drafts, bonus)
        model.commit(None if shape.chain else accepted, accepted.shape[0])
    _sync(device)
    seq.stats.decode_s = time.perf_counter() - t0
    return seq.result()
