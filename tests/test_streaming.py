"""Streamed text: the chunks passed to on_text join to exactly the returned text, also when a reply ends inside a
multi-byte character (the last chunk is flushed), on the real tokenizer and the real model with several drafters."""
from __future__ import annotations

import pytest

from specdec import EagleModel, MedusaModel, NgramModel, SpecModel
from specdec.backbone import load_backbone
from specdec.speculative import TextStream

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(dtype="fp32")


def test_a_cut_multibyte_character_is_flushed_at_the_end(backbone):
    tok = backbone.tokenizer
    ids = tok("日本語の文章です。", add_special_tokens=False).input_ids
    cut = next(n for n in range(1, len(ids)) if tok.decode(ids[:n]).endswith("\ufffd"))
    chunks: list[str] = []
    stream = TextStream(tok, chunks.append)
    for t in ids[:cut]:
        stream([t])
    assert not "".join(chunks).endswith("\ufffd")  # held back while the character may still complete
    stream.end()
    assert "".join(chunks) == tok.decode(ids[:cut])


@pytest.mark.parametrize("cls,options", [(SpecModel, {}), (NgramModel, {}), (MedusaModel, {"heads": "medusa-trigram"}),
                                         (EagleModel, {})])
def test_streamed_chunks_join_to_the_reply(backbone, cls, options):
    model = cls(backbone, cls.make_drafter(backbone, **options))
    for n in (15, 22, 30):
        chunks: list[str] = []
        reply = model.generate("日本の首都について日本語で説明してください。", max_new_tokens=n, on_text=chunks.append)
        assert "".join(chunks) == reply.text
