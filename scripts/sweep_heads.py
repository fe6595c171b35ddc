"""Head-count sweep: Medusa with 1..5 heads -> held-out accuracy per head, tau and speedup on MT-Bench.

One 5-head training (the shipped medusa-trigram recipe with --num-heads 5), cut to its first k heads: Medusa heads
share no parameters, and train_heads.py couples none (the loss is a weighted per-head sum, AdamW is per parameter,
there is no gradient clipping, the draft vocabulary comes from head 0's labels), so its first k heads are the heads
a k-head run would train. For each k and each tree size, the accuracy-optimal sparse tree over the first k heads'
held-out rank accuracies; a k whose tree equals k-1's (the extra head is not worth a node at that size) reuses
that measurement. Chains (head i's top-1 at depth i) show each head's own contribution.

    python scripts/sweep_heads.py --threads 1                      # trains runs/sweep_heads (or loads it), then ~13 min
    python scripts/sweep_heads.py --heads runs/sweep_heads/heads --nodes 8,16,32 --no-chain
    python scripts/sweep_heads.py --quick --out /tmp/heads         # CI smoke test: tiny data, tiny training
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import ablation_common as ac
from bench_output import pyplot
from specdec import cli
from specdec.drafters import MedusaDrafter
from specdec.medusa import load_medusa
from specdec.tree import sparse_tree
from sweep_tree import int_list

STEM = "sweep_heads"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = cli.parser(__doc__)
    p.add_argument("--heads", default=None,
                   help="a trained checkpoint with --max-heads heads (default: train or load --run-dir)")
    p.add_argument("--max-heads", type=int, default=5)
    p.add_argument("--run-dir", type=Path, default=Path("runs/sweep_heads"), help="where the 5-head training goes")
    p.add_argument("--trigram", choices=sorted(ac.TRIGRAM_FLAGS), default="on",
                   help="train trigram heads (as medusa-trigram) or not")
    p.add_argument("--data", type=Path, default=ac.DISTILL_TRAIN, help="training data (gen_distill.py)")
    p.add_argument("--eval-data", type=Path, default=ac.DISTILL_HELDOUT, help="held-out data (gen_distill.py)")
    p.add_argument("--eval-positions", type=int, default=6000)
    p.add_argument("--nodes", type=lambda s: int_list(s, "--nodes", 2), default="8,64",
                   help="sparse tree sizes (nodes verified per step, root included); 8 is the CPU default")
    p.add_argument("--chain", action=argparse.BooleanOptionalAction, default=True,
                   help="also chains: k heads' top-1 tokens one after another (k + 1 nodes), where every head counts")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="draft only when head 0's top probability reaches this (0: every step; the CPU default is 0.6)")
    ac.add_common_flags(p, questions=8, max_new_tokens=64, out=f"results/ablations/{STEM}")
    args = p.parse_args(argv)
    if args.max_heads < 1:
        p.error("--max-heads must be at least 1")
    if args.quick:
        args.nodes = [4]
        args.chain = False
    return args


def train_flags(args: argparse.Namespace) -> list[str]:
    """train_heads.py flags: the shipped recipe (tiny under --quick) with --max-heads heads."""
    budget = (["--draft-vocab", "512", "--micro-batch", "16", "--lr", "3e-3", "--epochs", "1", "--warmup", "1"]
              if args.quick else ac.SHIPPED_TRAIN_FLAGS)
    return ["--data", str(args.data), "--eval-data", str(args.eval_data), "--eval-positions", str(args.eval_positions),
            "--seed", str(args.seed), "--num-heads", str(args.max_heads), *budget, *ac.TRIGRAM_FLAGS[args.trigram]]


def configs(accuracies: list[list[float]], nodes: list[int], chain: bool = True) -> list[dict]:
    """One row per (head count, tree): sparse trees of each size, then chains (each head's top-1, one after another).
    A sparse tree equal to the one with a head fewer points at that row (`same_as`)."""
    rows = []

    def row(k: int, tree: str, choices: list[list[int]]) -> dict:
        return {"heads": k, "tree": tree, "nodes": len(choices) + 1, "choices": choices,
                "depth": max(len(c) for c in choices),
                "expected_tau": 1 + sum(math.prod(accuracies[i][r] for i, r in enumerate(c)) for c in choices),
                "method": f"medusa {k} head{'s' * (k > 1)}, {tree}"}

    for n in nodes:
        previous = None
        for k in range(1, len(accuracies) + 1):
            r = row(k, f"sparse {n}", [list(c) for c in sparse_tree(accuracies[:k], n - 1)])
            if r["nodes"] < n:
                r["skipped"] = f"{k} head(s) x {len(accuracies[0])} ranks hold only {r['nodes'] - 1} drafts"
            elif previous is not None and previous["choices"] == r["choices"]:
                r["same_as"] = previous["method"]
            else:
                previous = r
            rows.append(r)
    if chain:
        rows += [row(k, "chain", [[0] * (j + 1) for j in range(k)]) for k in range(1, len(accuracies) + 1)]
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep, write JSON/Markdown/PNG into --out; returns the JSON object."""
    args = parse_args(argv)
    backbone, bench = ac.setup(args)
    model = backbone.model
    if args.quick:
        workdir = Path(tempfile.mkdtemp(prefix="sweep_heads_"))
        args.eval_positions = min(args.eval_positions, 200)
        args.data, args.eval_data = ac.quick_data(backbone, workdir, n_train=2)
        args.run_dir = workdir / "runs"
    else:
        ac.require(args.eval_data, "held-out data")
    if args.heads is None:
        if not args.quick:
            ac.require(args.data, "training data")
        args.heads = str(ac.train_or_load(args.run_dir, train_flags(args)))
    full, meta = load_medusa(args.heads, model)
    if full.config.num_heads < args.max_heads:
        raise SystemExit(f"{args.heads} has {full.config.num_heads} heads, --max-heads is {args.max_heads}")
    full = ac.first_heads(full, args.max_heads)
    # heads are independent: one evaluation of all of them gives every k's per-head accuracies
    acc = ac.heldout_accuracy(full, model, args.eval_data, args.eval_positions)
    rows = configs(acc["rank_accuracy"], args.nodes, args.chain)
    runnable = [r for r in rows if "skipped" not in r and "same_as" not in r]
    drafters = {r["method"]: MedusaDrafter(model, ac.first_heads(full, r["heads"]), r["choices"], args.min_confidence)
                for r in runnable}
    methods, config = ac.run_mtbench(backbone, bench, drafters)
    for r in rows:
        source = r.get("same_as", r["method"])
        if "skipped" not in r:
            m = methods[source]
            r.update(tau=m["tau"], speedup=m["speedup"], tokens_per_s=m["tokens_per_s"], identical=m["identical"])
    config.update(flags=vars(args), heads=str(args.heads), train_command=meta.get("train", {}).get("command"),
                  eval_positions=acc["positions"])
    payload = {"config": config, "heldout": acc, "rows": rows, "methods": methods}
    table = markdown_table(acc, rows, config)
    ac.write_outputs(args.out, STEM, payload, table, methods, lambda path: plot(acc, rows, path))
    return payload


def markdown_table(acc: dict, rows: list[dict], config: dict) -> str:
    """Per-head held-out accuracy, then one row per (head count, tree size)."""
    lines = [f"Head-count sweep ({config['heads']}, first k heads; "
             f"min confidence {config['flags']['min_confidence']}). "
             f"{ac.settings_line(config)}; held-out positions: {config['eval_positions']}.", "",
             "| head | predicts | held-out top-1 | top-5 |", "|---:|---|---:|---:|"]
    lines += [f"| {i + 1} | t+{i + 2} | {a:.3f} | {b:.3f} |" for i, (a, b) in enumerate(zip(acc["top1"], acc["top5"]))]
    lines += ["", "| heads | tree | nodes | depth | expected tau | tau | tok/s | speedup | identical |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['heads']} | {r['tree']} | — | — | — | — | — | — | skipped: {r['skipped']} |")
            continue
        same = f" (same tree as {r['same_as'].split(', ')[0].removeprefix('medusa ')})" if "same_as" in r else ""
        lines.append(f"| {r['heads']} | {r['tree']} | {r['nodes']} | {r['depth']} | {r['expected_tau']:.2f} | "
                     f"{r['tau']:.2f} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f}x | "
                     f"{'yes' if r['identical'] else 'NO'}{same} |")
    return "\n".join(lines) + "\n"


def plot(acc: dict, rows: list[dict], path: Path) -> None:
    """Left: held-out top-1/top-5 per head; right: tau and speedup against head count, one line per tree size."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    k = len(acc["top1"])
    left.bar([i - 0.2 for i in range(k)], acc["top1"], 0.4, label="top-1")
    left.bar([i + 0.2 for i in range(k)], acc["top5"], 0.4, label="top-5")
    left.set_xticks(range(k), [f"head {i + 1}\n(t+{i + 2})" for i in range(k)])
    left.set_ylabel("held-out accuracy")
    left.legend(fontsize="small")
    for j, tree in enumerate(dict.fromkeys(r["tree"] for r in rows)):
        done = [r for r in rows if r["tree"] == tree and "skipped" not in r]
        x = [r["heads"] for r in done]
        right.plot(x, [r["speedup"] for r in done], marker="o", color=f"C{j}", label=f"speedup, {tree}")
        right.plot(x, [r["tau"] for r in done], marker="s", linestyle=":", color=f"C{j}", label=f"tau, {tree}")
    right.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    right.set_xlabel("Medusa heads")
    right.set_ylabel("speedup vs hf generate / tau")
    right.set_xticks(range(1, k + 1))
    right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    cli.run(main)
