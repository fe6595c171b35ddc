"""Notebook entry points: a backbone plus a drafter, chat in, text out (streamed), statistics attached."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from specdec.backbone import Backbone, load_backbone
from specdec.decode import DecodeStats, decode
from specdec.drafters import (Drafter, EagleDrafter, LookaheadConfig, LookaheadDrafter, MedusaDrafter, NgramConfig,
                              NgramDrafter, NoDrafter, eagle2)
from specdec.machine import machine_kind
from specdec.sampling import SamplingConfig
from specdec.verify_step import VerifyStep


@dataclass
class Generation:
    """One reply: its text, token ids and decode statistics (tau, steps, timings)."""

    text: str
    tokens: list[int]
    stats: DecodeStats


class TextStream:
    """Turns token chunks into text chunks, holding back an incomplete multi-byte character until more tokens
    complete it or `end` flushes it: the chunks join to exactly the decoded reply."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.tokens: list[int] = []
        self.sent = 0

    def __call__(self, new: list[int]) -> None:
        self.tokens.extend(new)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            self._send(text)

    def end(self) -> None:
        """Send whatever was held back: the reply ended, complete or not."""
        self._send(self.tokenizer.decode(self.tokens, skip_special_tokens=True))

    def _send(self, text: str) -> None:
        if len(text) > self.sent:
            self.on_text(text[self.sent :])
            self.sent = len(text)


class SpecModel:
    """A backbone with a drafter; `generate` is lossless: greedy output equals plain greedy decoding, sampled output
    follows plain sampling's distribution (unless lossy_typical_acceptance)."""

    def __init__(self, backbone: Backbone, drafter: Drafter | None = None, verify: str = "auto"):
        self.backbone = backbone
        self.drafter = drafter or NoDrafter()
        self.step = VerifyStep(backbone.model, verify)

    @classmethod
    def load(
        cls,
        backbone: str | Path | None = None,
        dtype: str | torch.dtype = "auto",
        device: str = "cpu",
        max_seq_len: int = 2048,
        quantize: str | None = None,
        verify: str = "auto",
        **drafter_options,
    ) -> "SpecModel":
        """Load a backbone (None: the embedded SmolLM2; quantize="int8" or "bnb-int8") and build this class's drafter;
        verify: "auto" (eager on CPU, CUDA graphs on GPU) or a VerifyStep mode."""
        loaded = load_backbone(backbone, dtype, device, max_seq_len, quantize=quantize)
        return cls(loaded, cls.make_drafter(loaded, **drafter_options), verify)

    @classmethod
    def make_drafter(cls, backbone: Backbone, **options) -> Drafter:
        """This class's drafter for `backbone`, built from keyword options (plain decoding takes none)."""
        if options:
            raise TypeError(f"plain decoding takes no drafter options, got {sorted(options)}")
        return NoDrafter()

    def generate(
        self,
        prompt: str | list[dict[str, str]] | list[int],
        max_new_tokens: int = 256,
        on_text: Callable[[str], None] | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        lossy_typical_acceptance: bool = False,
    ) -> Generation:
        """Reply to a user message, a chat (list of role/content dicts) or raw token ids; on_text streams text.
        temperature 0 is greedy; seed makes sampling reproducible; typical acceptance is LOSSY (see SamplingConfig)."""
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            ids = prompt
        else:
            ids = self.backbone.encode_chat(prompt)
        tok = self.backbone.tokenizer
        stream = TextStream(tok, on_text) if on_text else None
        sampling = SamplingConfig(temperature, top_p, top_k, seed, lossy_typical_acceptance)
        res = decode(self.backbone.model, ids, self.drafter, max_new_tokens, self.backbone.stop_ids, stream,
                     sampling=sampling, step=self.step)
        if stream is not None:
            stream.end()
        return Generation(tok.decode(res.tokens, skip_special_tokens=True), res.tokens, res.stats)


class NgramModel(SpecModel):
    """Prompt-lookup speculative decoding: no training, best on copy-heavy prompts."""

    @classmethod
    def make_drafter(cls, backbone: Backbone, **options) -> Drafter:
        """An n-gram drafter: the backbone device's default NgramConfig, with `options` replacing its fields."""
        kind = machine_kind(backbone.model.tok_embeddings.weight)
        return NgramDrafter(replace(NgramConfig.for_machine(kind), **options))


class MedusaModel(SpecModel):
    """Medusa heads over a frozen backbone: `heads` is a directory, "medusa" or "medusa-trigram" (shipped)."""

    @classmethod
    def make_drafter(cls, backbone: Backbone, heads: str | Path = "medusa", tree: str | int | list = "auto",
                     lookup: bool | NgramConfig = False) -> Drafter:
        """Medusa drafter; tree is "auto" (sparse, sized for the device), a node count or a choice list; lookup=True
        adds a prompt-lookup branch (specdec.drafters.lookup)."""
        return MedusaDrafter(backbone.model, heads, tree, lookup=lookup)


class EagleModel(SpecModel):
    """EAGLE over a frozen backbone: `draft` is a directory (ours or EAGLE's layout) or "eagle" (shipped);
    tree="dynamic" is EAGLE-2, "auto", a node count or a choice list a static EAGLE-1 tree."""

    @classmethod
    def make_drafter(cls, backbone: Backbone, draft: str | Path = "eagle", tree: str | int | list = "dynamic",
                     **options) -> Drafter:
        """EAGLE drafter; options: depth, top_k, total_tokens, verify_cost, lookup (see EagleDrafter)."""
        if tree == "dynamic":
            return eagle2(backbone.model, draft, **options)
        return EagleDrafter(backbone.model, draft, tree, **options)


class LookaheadModel(SpecModel):
    """Lookahead decoding (Jacobi window + n-gram pool): no training, no draft model."""

    @classmethod
    def make_drafter(cls, backbone: Backbone, **options) -> Drafter:
        """A lookahead drafter: the backbone device's default LookaheadConfig, with `options` replacing its fields."""
        kind = machine_kind(backbone.model.tok_embeddings.weight)
        return LookaheadDrafter(replace(LookaheadConfig.for_machine(kind), **options))
