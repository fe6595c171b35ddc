"""Streamed text: the chunks passed to on_text join to exactly the returned text, also when a reply ends inside a
multi-byte character (the last chunk is flushed), on the real tokenizer and the real model with several drafters."""
from __future__ import annotations

import pytest

from specdec import SpecModel, make_drafter
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


@pytest.mark.parametrize("name,options", [("vanilla", {}), ("ngram", {}), ("medusa", {"weights": "medusa-trigram"}),
                                          ("eagle2+lookup", {})])
def test_streamed_chunks_join_to_the_reply(backbone, name, options):
    model = SpecModel(backbone, make_drafter(name, backbone.model, **options))
    for n in (15, 22, 30):
        chunks: list[str] = []
        reply = model.generate("日本の首都について日本語で説明してください。", max_new_tokens=n, on_text=chunks.append)
        assert "".join(chunks) == reply.text


@pytest.fixture(scope="module")
def eagle(backbone):
    return SpecModel(backbone, make_drafter("eagle2", backbone.model))


def test_transformers_streamers_receive_exactly_the_generated_text(backbone, eagle):
    from transformers import TextIteratorStreamer, TextStreamer

    printed: list[str] = []

    class Capture(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            printed.append(text)

    reply = eagle.generate("Name two planets.", max_new_tokens=20,
                           streamer=Capture(backbone.tokenizer, skip_prompt=True, skip_special_tokens=True))
    assert "".join(printed).strip() == reply.text.strip()
    it = TextIteratorStreamer(backbone.tokenizer, skip_prompt=True, skip_special_tokens=True)
    reply = eagle.generate("Name two planets.", max_new_tokens=20, streamer=it)
    assert "".join(it).strip() == reply.text.strip()


def test_stream_iterates_over_the_reply_and_stop_strings_end_it(eagle):
    full = eagle.generate("Count from one to ten in words, comma separated.", max_new_tokens=40)
    assert "".join(eagle.stream("Count from one to ten in words, comma separated.", max_new_tokens=40)) == full.text
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    chunks: list[str] = []
    cut = eagle.generate("Count from one to ten in words, comma separated.", max_new_tokens=40, stop=[stop],
                         on_text=chunks.append)
    assert cut.text == full.text[: full.text.index(stop)] == "".join(chunks)
    assert cut.stats.stop_reason == "caller" and len(cut.tokens) < len(full.tokens)
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(eagle.stream("Hi", max_new_tokens=0))
