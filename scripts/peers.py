"""Peer engines as rows of mtbench_speedup.py's table (--peers llamacpp,vllm): llama.cpp (scripts/llamacpp_bench.py)
and vLLM's CPU build (scripts/vllm_bench.py) decode the same first turns, as the same prompt token ids, greedy, with
the same stop ids, new-token budget and threads, each in its own environment; their turns come back as the
TurnRecords our methods make, so tokens/s, speedup over `hf`, identity with `vanilla`, per category and per question
are computed by the same code. Rows: llamacpp, llamacpp-lookup, vllm, vllm-ngram."""
from __future__ import annotations

from pathlib import Path

PEERS = ("llamacpp", "vllm")


def parse_peers(values: list[str]) -> list[str]:
    """--peers values (comma lists, repeatable) as an ordered list without repeats; an unknown name raises."""
    names = list(dict.fromkeys(n.strip() for v in values for n in v.split(",") if n.strip()))
    if unknown := [n for n in names if n not in PEERS]:
        raise ValueError(f"--peers: unknown {', '.join(unknown)}; known: {', '.join(PEERS)}")
    return names


def missing_environments(peers: list[str]) -> list[str]:
    """For each peer whose virtualenv does not exist: the line saying how to make it."""
    import llamacpp_bench
    import vllm_bench

    checks = {"llamacpp": (llamacpp_bench.LLAMACPP_PYTHON, llamacpp_bench.MISSING),
              "vllm": (vllm_bench.VLLM_PYTHON, vllm_bench.MISSING)}
    return [checks[p][1] for p in peers if not checks[p][0].is_file()]


def peer_records(peers: list[str], questions: list, prompts: list[list[int]], stop_ids: list[int],
                 max_new_tokens: int, dtype: str, threads: int, backbone: Path, out: Path) -> tuple[list, dict]:
    """Run each peer on the prompts (the first turns of `questions`, in order): their TurnRecords and, per row, what
    ran ({"engine", "package", "decoding", ...}), plus vLLM's own mean accepted length."""
    import llamacpp_bench
    import vllm_bench

    runs: dict[str, dict] = {}
    if "llamacpp" in peers:
        runs |= llamacpp_bench.peer_runs(prompts, stop_ids, max_new_tokens, threads)
    if "vllm" in peers:
        runs |= vllm_bench.peer_runs(prompts, stop_ids, max_new_tokens, dtype, threads, backbone, out)
    records, info = [], {}
    for name, run in runs.items():
        records += [turn_record(name, q, t) for q, t in zip(questions, run["turns"], strict=True)]
        info[name] = run["info"] | ({"mean_accepted": run["mean_accepted"]} if "mean_accepted" in run else {})
    return records, info


def turn_record(name: str, question, turn: dict):
    """One peer turn as a TurnRecord (first turn; steps and accepted as the peer counted them, peak memory None where
    the peer does not measure it)."""
    from specdec.metrics import TurnRecord

    return TurnRecord(name, question.question_id, question.category, 1, turn["tokens"], turn["wall_s"],
                      turn["steps"], turn["accepted"], turn.get("peak_mem_mb"))
