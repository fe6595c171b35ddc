"""Chat formatting: the tokenizer's own template, or Vicuna's conversation format via fschat."""
from __future__ import annotations

import warnings
from pathlib import Path

CHAT_FORMATS = ("template", "vicuna", "raw")


def detect_chat_format(tokenizer, path: Path) -> str:
    """vicuna for Vicuna checkpoints (they ship no template), else the tokenizer's template, else raw text."""
    if "vicuna" in str(path).lower():
        return "vicuna"
    if getattr(tokenizer, "chat_template", None):
        return "template"
    warnings.warn(f"the tokenizer at {path} has no chat template: prompts are fed as raw text (pass chat_format= to "
                  "choose another format)", stacklevel=2)
    return "raw"


def format_chat(tokenizer, messages: list[dict[str, str]] | str, chat_format: str = "template") -> list[int]:
    """Token ids of `messages` (or one user message) followed by the assistant's turn opener."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not messages or not any(m.get("content") for m in messages):
        raise ValueError("the prompt is empty: give at least one non-empty message")
    if chat_format == "template":
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids)
    if chat_format == "vicuna":
        from fastchat.conversation import get_conv_template

        conv = get_conv_template("vicuna_v1.1")
        for m in messages:
            if m["role"] == "system":
                conv.set_system_message(m["content"])
            else:
                conv.append_message(conv.roles[0] if m["role"] == "user" else conv.roles[1], m["content"])
        conv.append_message(conv.roles[1], None)
        return tokenizer(conv.get_prompt()).input_ids
    if chat_format == "raw":
        return tokenizer("\n".join(m["content"] for m in messages)).input_ids
    raise ValueError(f"unknown chat format {chat_format!r}: use one of {', '.join(CHAT_FORMATS)}")
