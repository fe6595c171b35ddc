"""Notebook entry points: a backbone plus a drafter, chat in, text out (streamed), statistics attached."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from specdec import machine
from specdec.backbone import Backbone, load_backbone
from specdec.batch import decode_batch
from specdec.decode import DecodeResult, DecodeStats, decode
from specdec.drafters import Drafter, NoDrafter, make_drafter
from specdec.sampling import SamplingConfig
from specdec.verify_step import VerifyStep, make_step


@dataclass
class Generation:
    """One reply: its text, token ids and decode statistics (tau, steps, timings)."""

    text: str
    tokens: list[int]
    stats: DecodeStats


class TextStream:
    """Turns token chunks into text chunks, holding back an incomplete multi-byte character (and whatever could still
    become a stop string) until more tokens settle it or `end` flushes it: the chunks join to exactly the reply text.
    Called with new tokens, it returns True once a stop string appeared (the text then ends before it)."""

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None, stop: Sequence[str] = ()):
        self.tokenizer, self.on_text, self.stop = tokenizer, on_text, tuple(s for s in stop if s)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.tokens: list[int] = []
        self.text = ""  # the reply so far, cut before a stop string once one appears
        self.stopped = False
        self.sent = 0

    def __call__(self, new: list[int]) -> bool:
        self.tokens.extend(new)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            self._send(len(self.text))
        elif not text.endswith("\ufffd"):
            self.text = text
            self._send(len(text) - self.hold)
        else:
            self.text = text
        return self.stopped

    def end(self) -> None:
        """Send whatever was held back: the reply ended, complete or not."""
        if not self.stopped:
            self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        self._send(len(self.text))

    def _send(self, upto: int) -> None:
        if upto > self.sent and self.on_text is not None:
            self.on_text(self.text[self.sent : upto])
        self.sent = max(self.sent, upto)


def is_prompt_list(prompt) -> bool:
    """True for several prompts (messages, chats or id lists), False for one (a message, a chat, ids)."""
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(isinstance(p, (str, list, tuple))
                                                                      for p in prompt)


class SpecModel:
    """A backbone with a drafter; `generate` is lossless: greedy output equals plain greedy decoding, sampled output
    follows plain sampling's distribution (unless lossy_typical_acceptance). The named subclasses (NgramModel,
    LookaheadModel, MedusaModel, EagleModel) only pick a default drafter."""

    default_drafter = "vanilla"

    def __init__(self, backbone: Backbone, drafter: Drafter | None = None, verify: str | VerifyStep = "auto"):
        self.backbone = backbone
        self.drafter = drafter or NoDrafter()
        self.step = verify if isinstance(verify, VerifyStep) else make_step(backbone.model, verify)

    @classmethod
    def load(
        cls,
        backbone: str | Path | None = None,
        drafter: str | None = None,
        weights: str | Path | None = None,
        dtype: str | torch.dtype = "auto",
        device: str = "cpu",
        max_seq_len: int = 2048,
        quantize: str | None = None,
        verify: str = "auto",
        calibrate: bool = True,
        **options,
    ) -> "SpecModel":
        """Load a backbone (None: the embedded SmolLM2; quantize="int8" or "bnb-int8") and a drafter by name
        (specdec.drafters.drafter_names(); default: this class's) with its trained `weights` (a directory or a shipped
        name) and its own options, the names the benchmark's --drafter-option takes (drafter_options(name)).
        verify: "auto" (eager on CPU, CUDA graphs on GPU) or a VerifyStep mode. calibrate: on a CPU, size the
        drafter's trees by the verify cost measured on this machine (specdec.machine.calibrate: a few seconds the
        first time, then cached), else by the machine kind's fixed curve."""
        loaded = load_backbone(backbone, dtype, device, max_seq_len, quantize=quantize)
        step = make_step(loaded.model, verify)
        if calibrate:
            machine.calibrate(loaded.model, step)
        if weights is not None:
            options["weights"] = weights
        return cls(loaded, make_drafter(drafter or cls.default_drafter, loaded.model, **options), step)

    def generate(
        self,
        prompt: str | list[dict[str, str]] | list[int] | list,
        max_new_tokens: int = 256,
        on_text: Callable[[str], None] | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        lossy_typical_acceptance: bool = False,
        stop: Sequence[str] = (),
        streamer=None,
        batch_size: int = 8,
    ) -> Generation | list[Generation]:
        """Reply to a user message, a chat (list of role/content dicts) or raw token ids; or to a list of those
        (several messages, chats or id lists): then up to batch_size are decoded together (specdec.batch) and one
        Generation per prompt comes back, in order, each what the prompt alone would give.

        on_text streams text chunks; streamer is an object in transformers' convention (put(token ids), then end():
        TextStreamer, TextIteratorStreamer), given the prompt's ids first as transformers' generate does; stop ends
        the reply at the first of these strings (the text stops before it). temperature 0 is greedy; seed makes
        sampling reproducible (prompt i of a list draws with seed + i); typical acceptance is LOSSY (see
        SamplingConfig)."""
        sampling = SamplingConfig(temperature, top_p, top_k, seed, lossy_typical_acceptance)
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        if is_prompt_list(prompt):
            if on_text is not None or streamer is not None:
                raise ValueError("streaming (on_text, streamer) takes one prompt; a list of prompts is decoded as a "
                                 "batch and returned when done")
            return self._generate_batch(prompt, max_new_tokens, sampling, stop, batch_size)
        ids = self._ids(prompt)
        tok = self.backbone.tokenizer
        # the reply is decoded after every step only for someone who reads it then: a callback or a stop string
        stream = TextStream(tok, on_text, stop) if on_text is not None or stop else None
        if streamer is not None:
            streamer.put(torch.tensor([ids]))

        def on_tokens(new: list[int]) -> bool:
            if streamer is not None:
                streamer.put(torch.tensor(new))
            return stream is not None and stream(new)

        try:
            res = decode(self.backbone.model, ids, self.drafter, max_new_tokens, self.backbone.stop_ids,
                         on_tokens if stream is not None or streamer is not None else None,
                         sampling=sampling, step=self.step)
        finally:
            if streamer is not None:
                streamer.end()
        return self._reply(res, stream)

    def _ids(self, prompt: str | list[dict[str, str]] | list[int]) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            return prompt
        return self.backbone.encode_chat(prompt)

    def _reply(self, res: DecodeResult, stream: TextStream | None) -> Generation:
        if stream is None:
            return Generation(self.backbone.tokenizer.decode(res.tokens, skip_special_tokens=True), res.tokens,
                              res.stats)
        stream.end()
        return Generation(stream.text, res.tokens, res.stats)

    def _generate_batch(self, prompts: list, max_new_tokens: int, sampling: SamplingConfig, stop: tuple[str, ...],
                        batch_size: int) -> list[Generation]:
        ids = [self._ids(p) for p in prompts]
        streams = [TextStream(self.backbone.tokenizer, None, stop) for _ in ids] if stop else None
        results = decode_batch(self.backbone.model, ids, self.drafter, batch_size, max_new_tokens,
                               self.backbone.stop_ids, sampling,
                               on_tokens=(lambda i, new: streams[i](new)) if streams else None)
        return [self._reply(r, streams[i] if streams else None) for i, r in enumerate(results)]

    def stream(self, prompt: str | list[dict[str, str]] | list[int], **options) -> Iterator[str]:
        """generate's text chunks as an iterator (generate runs in a background thread); options as generate's."""
        chunks: queue.Queue = queue.Queue()
        done = object()

        def run() -> None:
            try:
                self.generate(prompt, on_text=chunks.put, **options)
                chunks.put(done)
            except BaseException as e:  # re-raised in the caller's thread
                chunks.put(e)

        threading.Thread(target=run, daemon=True).start()
        while (item := chunks.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item


class NgramModel(SpecModel):
    """Prompt-lookup speculative decoding: no training, best on copy-heavy prompts."""

    default_drafter = "ngram"


class LookaheadModel(SpecModel):
    """Lookahead decoding (Jacobi window + n-gram pool): no training, no draft model."""

    default_drafter = "lookahead"


class MedusaModel(SpecModel):
    """Medusa heads over a frozen backbone (weights: a directory, "medusa" or "medusa-trigram", shipped)."""

    default_drafter = "medusa"


class EagleModel(SpecModel):
    """EAGLE over a frozen backbone: EAGLE-2's dynamic trees by default ("eagle" for a static EAGLE-1 tree); weights:
    a directory (ours or the official layouts, EAGLE or EAGLE-3: the checkpoint says which) or a shipped name."""

    default_drafter = "eagle2"
