"""Decode speed of the embedded SmolLM2 in int8 against fp32 and bf16: plain greedy decoding through the runner, all
backbones in one process, interleaved per question, first turns of a stratified MT-Bench subset.

    OMP_NUM_THREADS=1 python scripts/int8_speed.py --questions 4 --max-new-tokens 64 --out results/int8

tok/s counts new tokens over wall time (prefill included); "same as fp32" compares each output with fp32's.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from specdec import cli
from specdec.backbone import load_backbone
from specdec.data import load_mtbench, stratified_subset
from specdec.decode import decode
from specdec.metrics import first_divergence

CONFIGS = {  # label: (activation dtype, quantize)
    "fp32": ("fp32", None),
    "int8 (fp32 activations)": ("fp32", "int8"),
    "bf16": ("bf16", None),
    "int8 (bf16 activations)": ("bf16", "int8"),
    "bnb LLM.int8 (fp32)": ("fp32", "bnb-int8"),
}


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer but the KV cache (which the runner keeps as a plain attribute)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def main(argv: list[str] | None = None) -> dict:
    p = cli.parser(__doc__)
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma list of: " + ", ".join(CONFIGS))
    p.add_argument("--out", type=Path, default=Path("results/int8"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    labels = a.configs.split(",")
    backbones = {k: load_backbone(dtype=CONFIGS[k][0], quantize=CONFIGS[k][1], max_seq_len=1024) for k in labels}
    questions = stratified_subset(load_mtbench(), a.questions)
    tokens = {k: [] for k in labels}
    seconds = {k: 0.0 for k in labels}
    for q in questions:
        for k, bb in backbones.items():
            ids = bb.encode_chat([{"role": "user", "content": q.turns[0]}])
            t0 = time.perf_counter()
            res = decode(bb.model, ids, None, a.max_new_tokens, bb.stop_ids)
            seconds[k] += time.perf_counter() - t0
            tokens[k].append(res.tokens)
    ref = tokens.get("fp32")
    rows = {k: {"tok_per_s": sum(map(len, tokens[k])) / seconds[k], "tokens": sum(map(len, tokens[k])),
                "weights_mb": weight_bytes(backbones[k].model) / 1e6,
                "same_as_fp32": (None if ref is None
                                 else [first_divergence(t, r) is None for t, r in zip(tokens[k], ref)])}
            for k in labels}
    out = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} thread(s)",
           "questions": [q.question_id for q in questions], "max_new_tokens": a.max_new_tokens, "configs": rows}
    base = rows[labels[0]]["tok_per_s"]
    lines = [f"| backbone | weights MB | tok/s | vs {labels[0]} | same tokens as fp32 |", "|---|---:|---:|---:|---|"]
    for k, r in rows.items():
        same = "—" if r["same_as_fp32"] is None else f"{sum(r['same_as_fp32'])}/{len(questions)}"
        lines.append(f"| {k} | {r['weights_mb']:.0f} | {r['tok_per_s']:.1f} | {r['tok_per_s'] / base:.2f}x | {same} |")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "int8_speed.json").write_text(json.dumps(out, indent=1))
    (a.out / "int8_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    cli.run(main)
