"""What a training run is: its settings (TrainConfig) and what the shared loop needs from a head kind (Task)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from specdec.training.data import LABELS

HEADS = ("medusa", "eagle", "eagle3", "early-exit")
EVAL_RANKS = 10  # evaluations report accuracy per rank for the first EVAL_RANKS drafts (sparse trees use it)
EAGLE3_DRAFT_VOCAB = 8192  # of SmolLM2's 49,152 tokens; vLLM's own EAGLE-3 test draft for it uses the same size
EXIT_LAYER = 6  # early-exit: the adapter follows the backbone's first 6 layers by default (the shipped one)


@dataclass
class TrainConfig:
    """One run of train(): the head kind, data, model options, optimisation and stopping. Fields left None take the
    head kind's default (see __post_init__); train/train_heads.py's flags are these fields."""

    data: Sequence[str | Path]  # gen_distill data file(s), read in order
    out: str | Path  # checkpoint and final weights land here
    head: str = "medusa"
    backbone: str | None = None  # local HF directory (None: the embedded SmolLM2)
    eval_data: str | Path | None = None  # held-out data for per-head / per-depth accuracy
    labels: str = "backbone"  # medusa: one of LABELS
    num_heads: int = 4
    num_layers: int = 1
    trigram: str = "none"  # 'none', 'all' or head indices like '0,1'
    trigram_tokens: str = "context"
    own_lm_head: bool = False
    draft_vocab: int | None = None  # 0: the whole vocabulary (default 0; eagle3, early-exit EAGLE3_DRAFT_VOCAB)
    noise: float | None = None  # eagle: uniform noise on input features (default 0.2; eagle3 0)
    token_weight: float = 0.1  # eagle: weight of the token loss (feature loss: 1)
    train_on: str = "answer"  # eagle, eagle3: 'answer' positions only, or 'all'
    eval_depth: int = 5  # eagle, eagle3: tokens drafted ahead in evaluation (early-exit: of its chain tau estimate)
    exit_layer: int = EXIT_LAYER  # early-exit: the adapter reads the output of the backbone's first exit_layer layers
    rollout_steps: int | None = None  # eagle, eagle3: training-time test steps (default 1; eagle3 7)
    init: str | None = None  # start from these saved weights (or a shipped name)
    epochs: float = 1.0
    max_positions: int | None = None
    micro_batch: int | None = None  # positions (medusa, default 256) or conversations (eagle, early-exit: 4)
    grad_accum: int = 1
    lr: float | None = None  # default 1e-3 (medusa), 3e-4 (eagle, eagle3, early-exit)
    warmup: int = 20
    weight_decay: float = 0.0
    loss_decay: float = 0.8  # head i's (eagle3: step i's) loss weight is loss_decay**i
    eval_every: int = 100
    eval_positions: int = 8192  # medusa: positions; eagle: rollouts (1024 at most)
    save_every: int = 50
    seed: int = 0
    dtype: str = "fp32"  # backbone weights (embeddings and lm_head)
    device: str | None = None
    quantize: str | None = None  # 'int8' or 'bnb-int8': train over the frozen int8 backbone
    max_steps: int | None = None  # stop after this many steps in this run (rerun to go on)
    minutes: float | None = None  # time budget: a fresh run shortens itself (and its schedule) to end within it
    autocast: str = "auto"  # bf16 autocast of the heads' matmuls: 'auto', 'bf16' or 'off'
    max_grad_norm: float = 0.0
    resume: bool = True
    command: str | None = None  # the command line that asked for this run, recorded with the weights

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.labels not in LABELS:
            raise ValueError(f"labels must be one of {LABELS}, got {self.labels!r}")
        self.data = [Path(self.data)] if isinstance(self.data, (str, Path)) else [Path(p) for p in self.data]
        self.out = Path(self.out)
        self.eval_data = None if self.eval_data is None else Path(self.eval_data)
        eagle, eagle3 = self.head in ("eagle", "eagle3"), self.head == "eagle3"
        sequences = eagle or self.head == "early-exit"  # whole conversations per item, not positions
        self.rollout_steps = self.rollout_steps or (7 if eagle3 else 1)
        self.noise = (0.0 if eagle3 else 0.2) if self.noise is None else self.noise
        if self.draft_vocab is None:
            self.draft_vocab = EAGLE3_DRAFT_VOCAB if eagle3 or self.head == "early-exit" else 0
        if self.rollout_steps < 1 or (self.rollout_steps > 1 and not eagle):
            raise ValueError("rollout_steps (--rollout-steps) must be at least 1, and above 1 only for eagle or eagle3")
        if eagle3 and self.draft_vocab < 1:
            raise ValueError("eagle3 scores a draft vocabulary: draft_vocab (--draft-vocab) must be at least 1")
        self.micro_batch = self.micro_batch or (4 if sequences else 256)
        self.lr = self.lr or (3e-4 if sequences else 1e-3)

    @property
    def weights_dir(self) -> Path:
        """Where the trained weights land: out/heads (Medusa) or out/<head> (EAGLE, EAGLE-3, early-exit)."""
        return self.out / ("heads" if self.head == "medusa" else self.head)


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
