"""Per-depth acceptance of EAGLE drafts on held-out answers, as chain drafting sees it: from each sampled answer
position the draft rolls `--depth` tokens ahead along the backbone's own answer; depth d's top-1 is the share of
rollouts still on the path whose d-th draft token is the backbone's. Several drafts (EAGLE or EAGLE-3, shipped
names or directories) on the same positions, JSON + Markdown.

    python scripts/draft_accuracy.py --drafts eagle,eagle3 --data data/sd_heldout.jsonl --out results/tmp/draft_accuracy
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from specdec import cli
from specdec.backbone import backbone_dir, load_transformer
from specdec.eagle import load_eagle
from specdec.eagle3 import Eagle3Draft
from specdec.model import rope_tables
from specdec.training.data import sequence_data
from specdec.training.eagle import rollout_accuracy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--drafts", default="eagle,eagle3", help="comma list of shipped names or draft directories")
    p.add_argument("--data", type=Path, required=True, help="gen_distill.py JSONL (held-out split), with aux layers "
                                                             "for EAGLE-3 drafts")
    p.add_argument("--backbone", default=None, help="local HF directory (default: the embedded SmolLM2)")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--positions", type=int, default=1024, help="rollouts (answer positions sampled with --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/tmp/draft_accuracy"))
    return p.parse_args(argv)


def markdown(results: dict[str, dict], args: argparse.Namespace) -> str:
    """Per-depth top-1 and the chain tau they imply, one row per draft."""
    depths = " | ".join(f"d{d}" for d in range(1, args.depth + 1))
    lines = [f"Per-depth top-1 acceptance on {args.data.name} ({next(iter(results.values()))['positions']} rollouts, "
             f"seed {args.seed}); chain tau = 1 + sum of the running products", "",
             f"| draft | {depths} | chain tau |", "|---|" + "---:|" * (args.depth + 1)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.3f}" for a in r["top1"]) + f" | {r['chain_tau']:.2f} |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model = load_transformer(backbone_dir(args.backbone), torch.float32)
    embed, lm_head = model.tok_embeddings.weight, model.output.weight
    data: dict[bool, object] = {}
    results = {}
    for name in [d.strip() for d in args.drafts.split(",") if d.strip()]:
        draft, meta = load_eagle(name, model)
        fused = isinstance(draft, Eagle3Draft)
        if fused not in data:
            data[fused] = sequence_data(args.data, aux=fused)
        seqs = data[fused]
        cos, sin = rope_tables(model.args, max(len(t) for t in seqs.tokens) + args.depth + 8, torch.float32, "cpu")
        acc = rollout_accuracy(draft.float(), seqs, embed, lm_head, cos, sin, args.depth, args.positions, args.seed)
        results[name] = {"kind": meta.get("kind"), **acc}
        print(f"{name}: top1 " + " ".join(f"{a:.3f}" for a in acc["top1"]) + f" | chain tau {acc['chain_tau']:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "draft_accuracy.json").write_text(json.dumps(
        {"config": {k: str(v) for k, v in vars(args).items()}, "drafts": results}, indent=1) + "\n")
    (args.out / "draft_accuracy.md").write_text(markdown(results, args))
    print(markdown(results, args))
    return results


if __name__ == "__main__":
    cli.run(main)
