"""Temperature sampling for the decode loop: the target distribution, exact tree rejection sampling, and
Medusa's typical acceptance (LOSSY, off by default).

Every function here runs on the logits' device without a host sync, so a sampling step keeps the loop's one
device-to-host transfer. Exact acceptance is the multi-candidate rule for deterministic drafts (each candidate
is a point mass, as for n-gram, lookahead and Medusa's top-k trees): walking from the root, child c of an accepted
node is accepted with probability r(c) under the current distribution r (first the target p); on a rejection
r(c) is zeroed and r renormalised (the residual), and the next child is tried. When no child is accepted the bonus
token is drawn from the residual; after an accepted leaf, from that leaf's p. Each emitted token is then an exact
sample of plain sampling's distribution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from specdec.tree import TreeShape


@dataclass
class SamplingConfig:
    """temperature (0: greedy), top_k (0: off), top_p (1: off), seed (None: fresh entropy); lossy_typical_acceptance:
    Medusa's typical acceptance, LOSSY (accept c if p(c) > min(posterior_threshold, posterior_alpha * exp(-H(p))))."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    lossy_typical_acceptance: bool = False
    posterior_threshold: float = 0.09  # Medusa's epsilon
    posterior_alpha: float = 0.3  # Medusa's alpha (sqrt of epsilon by default there)

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature >= 0) or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1 and top_k >= 0, got {self}")

    @property
    def greedy(self) -> bool:
        """Temperature 0: the loop takes its greedy (argmax) path."""
        return self.temperature == 0

    @property
    def lossless(self) -> bool:
        """False only with typical acceptance at temperature > 0."""
        return self.greedy or not self.lossy_typical_acceptance

    def generator(self, device: torch.device) -> torch.Generator:
        """A generator on `device`, seeded with `seed` (reproducible) or from fresh entropy."""
        g = torch.Generator(device)
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(self.seed)
        return g


def target_probs(logits: Tensor, cfg: SamplingConfig) -> Tensor:
    """The distribution plain sampling draws from at each row of logits [k, V]: temperature, top-k, then top-p."""
    logits = logits.float() / cfg.temperature
    if 0 < cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    if cfg.top_p < 1:
        # keep the smallest most-likely set whose mass reaches top_p (the most likely token always stays)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop_sorted = sorted_p.cumsum(dim=-1) - sorted_p >= cfg.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One token id (0-dim) from a probability vector."""
    return torch.multinomial(probs, 1, generator=generator)[0]


@lru_cache(maxsize=256)
def _sibling_buffers(parents: tuple[int, ...], device: str) -> tuple[Tensor, Tensor]:
    # parent index per node (root: 0) and earlier[i, j]: j is an earlier sibling of i
    par = torch.tensor(parents)
    earlier = (par[:, None] == par[None, :]) & torch.ones(len(parents), len(parents), dtype=torch.bool).tril(-1)
    earlier[0] = False
    return par.clamp(min=0).to(device), earlier.to(device)


def _path_to(last: Tensor, shape: TreeShape) -> tuple[Tensor, Tensor]:
    # the first root-to-leaf path through node `last`, and the number of drafts on it up to `last`
    n = shape.depth[last]
    best = (shape.paths == last).any(dim=1).to(torch.int32).argmax()
    return best, n


def tree_sample_accept(tokens: Tensor, probs: Tensor, shape: TreeShape,
                       generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Exact (lossless) rejection sampling over a tree of deterministic drafts; probs [k, V]: each node's target.
    Returns (path row in shape.paths, accepted drafts, bonus token), like greedy_accept."""
    par, earlier = _sibling_buffers(shape.parents, str(tokens.device))
    k = tokens.shape[0]
    p_child = probs[par, tokens]  # p(c) under the parent's target
    repeat = (earlier & (tokens[None, :] == tokens[:, None])).any(dim=1)  # a rejected token has residual mass 0
    p_child = p_child.masked_fill(repeat, 0.0)
    rejected_mass = earlier.to(p_child.dtype) @ p_child  # mass zeroed by the earlier siblings' rejections
    u = torch.rand(k, generator=generator, device=tokens.device)
    accept = (u * (1 - rejected_mass) < p_child) & (p_child > 0)  # u < p(c) / (1 - rejected mass): residual's p(c)
    accept[0] = True
    first = accept & ~(earlier & accept[None, :]).any(dim=1)  # children are tried in order: the first accepted wins
    on_path = (shape.mask & ~first[None, :]).sum(dim=1) == 0  # every ancestor (and the node) was accepted
    last = torch.where(on_path, shape.depth, -1).argmax()
    children = (par == last) & (torch.arange(k, device=tokens.device) > 0)
    tried = torch.zeros(probs.shape[-1], device=probs.device).index_add(0, tokens, children.to(probs.dtype)) > 0
    residual = probs[last].masked_fill(tried, 0.0)  # every child was rejected: zero them all (a leaf has none)
    residual = torch.where(residual.sum() > 0, residual, probs[last])  # float dust: all mass sat on the children
    best, n = _path_to(last, shape)
    return best, n, sample(residual, generator)


def typical_accept(tokens: Tensor, probs: Tensor, shape: TreeShape, cfg: SamplingConfig,
                   generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Medusa's typical acceptance, LOSSY: the longest path of drafts with p(c) > min(eps, alpha * exp(-H(p)))
    under their parent's target (first such path on ties); the bonus is sampled from the last node's target."""
    par, _ = _sibling_buffers(shape.parents, str(tokens.device))
    entropy = -(probs * probs.clamp(min=1e-30).log()).sum(dim=-1)
    threshold = torch.minimum(torch.full_like(entropy, cfg.posterior_threshold), cfg.posterior_alpha * (-entropy).exp())
    accept = probs[par, tokens] > threshold[par]
    nodes = shape.paths.clamp(min=0)
    ok = accept[nodes[:, 1:]] & (shape.paths[:, 1:] >= 0)
    lengths = ok.to(torch.int32).cumprod(dim=1).sum(dim=1)
    best = lengths.argmax()
    n = lengths[best]
    return best, n, sample(probs[nodes[best, n]], generator)
