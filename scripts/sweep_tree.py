"""Tree sweep: Medusa tree size and depth -> tau, verify cost per step, speedup; marks the best tree for this device.

Every tree is Medusa's accuracy-optimal sparse tree (specdec.tree.sparse_tree) built from the heads' held-out
per-rank accuracies (their config.json "eval"), with N nodes verified per step (the root, i.e. the pending token,
plus N - 1 drafts) and at most D levels of drafts; trees that come out identical under several depth caps run once.
Each tree decodes MT-Bench first turns in one process with transformers `generate` (the baseline) and plain decoding,
interleaved per question; every step drafts the full tree (--min-confidence 0), so tau and cost are the tree's own.
Verify cost: one forward of the tree's nodes with its mask on a --context-token cache, relative to one token
(fastest of 3 rounds, each round over every tree in turn).

    python scripts/sweep_tree.py --threads 1                       # ~15 min on 2 cores
    python scripts/sweep_tree.py --nodes 8,16 --depths 2,3 --heads runs/x/heads
    python scripts/sweep_tree.py --quick --out /tmp/sweep          # CI smoke test
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from tqdm import tqdm

import ablation_common as ac
from bench_output import pyplot
from specdec import cli
from specdec.drafters import MedusaDrafter
from specdec.machine import best_times
from specdec.medusa import load_medusa
from specdec.model import Transformer
from specdec.tree import TreeShape, parents_from_choices, shape_from_parents, sparse_tree

STEM = "sweep_tree"
QUICK_NODES, QUICK_DEPTHS = "4,8", "1,2"


def int_list(spec: str, name: str, low: int) -> list[int]:
    """Parse a comma list of ints >= low, with a clear error."""
    try:
        values = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} must be a comma list of integers, got {spec!r}") from None
    if not values or min(values) < low:
        raise argparse.ArgumentTypeError(f"{name} must be integers >= {low}, got {spec!r}")
    return sorted(set(values))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = cli.parser(__doc__)
    p.add_argument("--heads", default="medusa-trigram",
                   help="Medusa heads with measured accuracies: a directory or shipped name")
    p.add_argument("--nodes", type=lambda s: int_list(s, "--nodes", 2), default="4,8,16,32,64",
                   help="tree sizes: nodes verified per step, root included")
    p.add_argument("--depths", type=lambda s: int_list(s, "--depths", 1), default="1,2,3,4",
                   help="depth caps (draft levels); at most the number of heads")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="draft only when head 0's top probability reaches this (0: every step; the CPU default is 0.6)")
    p.add_argument("--context", type=int, default=200, help="verify-cost benchmark: tokens already in the cache")
    p.add_argument("--repeats", type=int, default=5, help="verify-cost benchmark: forwards per timing round")
    ac.add_common_flags(p, questions=8, max_new_tokens=64, out=f"results/ablations/{STEM}")
    args = p.parse_args(argv)
    if args.quick:
        args.nodes, args.depths = int_list(QUICK_NODES, "--nodes", 2), int_list(QUICK_DEPTHS, "--depths", 1)
        args.repeats = 1
    return args


def tree_grid(accuracies: list[list[float]], nodes: list[int], depths: list[int]) -> list[dict]:
    """Distinct sparse trees for every (size, depth cap); a cap the heads cannot fill at that size is skipped."""
    if max(depths) > len(accuracies):
        raise SystemExit(f"--depths {max(depths)} asks for more levels than the {len(accuracies)} heads draft")
    trees, seen = [], {}
    for n in nodes:
        for d in depths:
            choices = sparse_tree(accuracies[:d], n - 1)
            if len(choices) < n - 1:
                print(f"skipping {n} nodes at depth {d}: "
                      f"{d} head(s) x {len(accuracies[0])} ranks hold {len(choices)} drafts")
                continue
            key = tuple(choices)
            if key in seen:
                seen[key]["depth_caps"].append(d)
                continue
            depth = max(len(c) for c in choices)
            expected = 1 + sum(math.prod(accuracies[i][r] for i, r in enumerate(c)) for c in choices)
            seen[key] = {"nodes": n, "depth": depth, "depth_caps": [d], "choices": [list(c) for c in choices],
                         "expected_tau": expected, "method": f"medusa {n} nodes, depth {depth}"}
            trees.append(seen[key])
    if not trees:
        raise SystemExit(f"no tree fits --nodes {nodes} with --depths {depths}")
    return trees


def verify_forward(model: Transformer, shape: TreeShape, context: int):
    """One forward of `shape`'s nodes with its tree mask at positions after `context` cached tokens."""
    tokens = torch.arange(shape.size) + 500
    positions = context + shape.depth

    def forward():
        with torch.inference_mode():
            model.forward(tokens, positions=positions, tree_mask=None if shape.chain else shape.mask)

    return forward


def verify_costs(model: Transformer, trees: list[dict], context: int, repeats: int, rounds: int = 3) -> float:
    """Time every tree's verify forward (and one token's, returned) on a cache of `context` tokens; fills tree rows.
    Rounds go over all trees in turn and each keeps its fastest (bench_runner's timer), so a burst of load from
    a neighbour on the shared host hits one round, not one tree."""
    model.reset()
    with torch.inference_mode():
        model.forward(torch.arange(context) + 100)
    model.commit(None, context)
    shapes = [shape_from_parents((-1,))] + [shape_from_parents(parents_from_choices([tuple(c) for c in t["choices"]]))
                                            for t in trees]
    forwards = {i: verify_forward(model, shape, context) for i, shape in enumerate(shapes)}
    with tqdm(total=rounds * len(forwards), desc="verify cost", unit="tree") as bar:
        best = {key: t * 1e3 for key, t in best_times(forwards, rounds, repeats, bar).items()}
    for i, t in enumerate(trees, start=1):
        t["verify_ms"], t["verify_x"] = best[i], best[i] / best[0]
    model.reset()
    return best[0]


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep, write JSON/Markdown/PNG into --out; returns the JSON object."""
    args = parse_args(argv)
    backbone, bench = ac.setup(args)
    model = backbone.model
    heads, meta = load_medusa(args.heads, model)
    accuracies = meta.get("eval", {}).get("rank_accuracy")
    if not accuracies:
        raise SystemExit(f"{args.heads} carries no measured rank accuracies (config.json 'eval'): "
                         "train it with --eval-data")
    trees = tree_grid(accuracies, args.nodes, args.depths)
    one_ms = verify_costs(model, trees, args.context, args.repeats, rounds=1 if args.quick else 3)
    drafters = {t["method"]: MedusaDrafter(model, heads, t["choices"], args.min_confidence) for t in trees}
    methods, config = ac.run_mtbench(backbone, bench, drafters)
    for t in trees:
        m = methods[t["method"]]
        t.update(tau=m["tau"], speedup=m["speedup"], tokens_per_s=m["tokens_per_s"], identical=m["identical"])
    best = max(trees, key=lambda t: t["speedup"])
    for t in trees:
        t["best"] = t is best
    config.update(flags=vars(args), heads=str(args.heads), one_token_verify_ms=one_ms, verify_context=args.context,
                  device=f"cpu: {config['machine']['cpu']}")
    payload = {"config": config, "best": {k: best[k] for k in ("nodes", "depth", "choices", "speedup", "tau")},
               "trees": trees, "methods": methods}
    table = markdown_table(trees, methods, config)
    ac.write_outputs(args.out, STEM, payload, table, methods,
                     lambda path: plot(trees, methods["vanilla"]["speedup"], path))
    return payload


def markdown_table(trees: list[dict], methods: dict, config: dict) -> str:
    """One row per tree, plain decoding first; the best speedup is marked."""
    plain = methods["vanilla"]
    lines = [f"Tree sweep ({config['heads']} heads, min confidence {config['flags']['min_confidence']}). "
             f"{ac.settings_line(config)}. Verify cost: one forward of the tree on a {config['verify_context']}-token "
             f"cache, one token = {config['one_token_verify_ms']:.1f} ms.", "",
             "| nodes | depth | expected tau | tau | verify ms | verify x 1 token | tok/s | speedup | identical |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
             f"| 1 (plain) | 0 | 1.00 | {plain['tau']:.2f} | {config['one_token_verify_ms']:.1f} | 1.00 | "
             f"{plain['tokens_per_s']:.1f} | {plain['speedup']:.2f}x | {'yes' if plain['identical'] else 'NO'} |"]
    for t in trees:
        mark = " **best**" if t["best"] else ""
        lines.append(f"| {t['nodes']} | {t['depth']} | {t['expected_tau']:.2f} | {t['tau']:.2f} | "
                     f"{t['verify_ms']:.1f} | "
                     f"{t['verify_x']:.2f} | {t['tokens_per_s']:.1f} | {t['speedup']:.2f}x{mark} | "
                     f"{'yes' if t['identical'] else 'NO'} |")
    best = next(t for t in trees if t["best"])
    lines += ["", f"Best tree on this device ({config['device']}): {best['nodes']} nodes, depth {best['depth']}, "
              f"{best['speedup']:.2f}x; choices {best['choices']}"
              + (f". Plain decoding ({plain['speedup']:.2f}x) beats every tree here."
                 if plain["speedup"] > best["speedup"] else "")]
    return "\n".join(lines) + "\n"


def plot(trees: list[dict], plain_speedup: float, path: Path) -> None:
    """Speedup, tau and verify cost against tree size, one line per depth; the best tree starred,
    plain decoding dotted."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for depth in sorted({t["depth"] for t in trees}):
        rows = sorted((t for t in trees if t["depth"] == depth), key=lambda t: t["nodes"])
        x = [t["nodes"] for t in rows]
        for ax, key in zip(axes, ("speedup", "tau", "verify_x")):
            ax.plot(x, [t[key] for t in rows], marker="o", label=f"depth {depth}")
    best = next(t for t in trees if t["best"])
    axes[0].plot([best["nodes"]], [best["speedup"]], marker="*", markersize=16, color="gold", markeredgecolor="k",
                 linestyle="none", label="best")
    axes[0].axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes[0].axhline(plain_speedup, color="k", linewidth=0.8, linestyle=":", label="plain decoding (1 node)")
    for ax, label in zip(axes, ("speedup vs hf generate", "tau (tokens per verify)", "verify cost (x one token)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tree nodes (root included)")
        ax.set_ylabel(label)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    cli.run(main)
