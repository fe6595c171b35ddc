"""Trigram ablation: Medusa heads with trigram conditioning off and on, same data, budget and seed.

Per-head top-1/top-5 on held-out self-distilled ShareGPT answers, then tau and speedup over transformers
`generate` on MT-Bench (same run, interleaved per question, greedy, lossless: identity with plain greedy is checked).
By default it loads the shipped `medusa` / `medusa-trigram` heads (trained by the same command but the trigram
flags); --train retrains both under one budget (loaded instead when that exact command already ran).

    python scripts/ablate_trigram.py --threads 1                   # shipped heads, ~7 min on 2 cores
    python scripts/ablate_trigram.py --train --threads 1           # retrain both first (~15 min each at 1 thread)
    python scripts/ablate_trigram.py --quick --out /tmp/abl        # CI smoke test, no data/ or runs/ needed
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import ablation_common as ac
from bench_output import pyplot
from specdec import cli
from specdec.drafters import MedusaDrafter
from specdec.medusa import load_medusa

STEM = "ablate_trigram"
VARIANTS = ("off", "on")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = cli.parser(__doc__)
    p.add_argument("--plain", default="medusa", help="heads without trigram: a directory or shipped name")
    p.add_argument("--trigram", default="medusa-trigram", help="heads with trigram: a directory or shipped name")
    p.add_argument("--train", action="store_true", help="train both with train_heads.py (same flags but the trigram)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/ablate_trigram"), help="--train: <run-dir>/{off,on}")
    p.add_argument("--epochs", type=float, default=3.0, help="--train: the budget of both runs")
    p.add_argument("--data", type=Path, default=ac.DISTILL_TRAIN, help="--train: training data (gen_distill.py)")
    p.add_argument("--eval-data", type=Path, default=ac.DISTILL_HELDOUT, help="held-out data (gen_distill.py)")
    p.add_argument("--eval-positions", type=int, default=6000)
    p.add_argument("--tree", default="auto",
                   help="tree of both drafters: auto (sparse, from each one's accuracies), N, or a choice list")
    ac.add_common_flags(p, questions=8, max_new_tokens=128, out=f"results/ablations/{STEM}")
    return p.parse_args(argv)


def train_flags(args: argparse.Namespace, variant: str) -> list[str]:
    """train_heads.py flags of one variant: the shipped recipe (tiny under --quick), the trigram flags differ."""
    common = ["--data", str(args.data), "--eval-data", str(args.eval_data), "--seed", str(args.seed),
              "--eval-positions", str(args.eval_positions)]
    if args.quick:
        budget = ["--draft-vocab", "512", "--micro-batch", "16", "--lr", "3e-3", "--epochs", "1", "--warmup", "1"]
    else:
        budget = list(ac.SHIPPED_TRAIN_FLAGS)
        budget[budget.index("--epochs") + 1] = f"{args.epochs:g}"
    return [*common, *budget, *ac.TRIGRAM_FLAGS[variant]]


def main(argv: list[str] | None = None) -> dict:
    """Run the ablation, write JSON/Markdown/PNG into --out; returns the JSON object."""
    args = parse_args(argv)
    backbone, bench = ac.setup(args)
    model = backbone.model
    workdir = Path(tempfile.mkdtemp(prefix="ablate_trigram_")) if args.quick else None
    if args.quick:
        args.eval_positions = min(args.eval_positions, 200)
        train, args.eval_data = ac.quick_data(backbone, workdir, n_train=3 if args.train else 0)
        args.data = train or args.data
        args.run_dir = workdir / "runs"
    else:
        ac.require(args.eval_data, "held-out data")
        if args.train:
            ac.require(args.data, "training data")
    sources = {"off": args.plain, "on": args.trigram}
    if args.train:
        sources = {v: str(ac.train_or_load(args.run_dir / v, train_flags(args, v))) for v in VARIANTS}

    rows, drafters = {}, {}
    for v in VARIANTS:
        heads, meta = load_medusa(sources[v], model)
        if any(heads.config.trigram) != (v == "on"):
            raise SystemExit(f"--{'trigram' if v == 'on' else 'plain'} {sources[v]}: "
                             f"its heads have trigram={heads.config.trigram}")
        acc = ac.heldout_accuracy(heads, model, args.eval_data, args.eval_positions)
        name = f"medusa (trigram {v})"
        drafters[name] = MedusaDrafter(model, sources[v], args.tree)
        rows[v] = {"method": name, "heads": str(sources[v]), "trigram": heads.config.trigram,
                   "trigram_tokens": heads.config.trigram_tokens, "draft_vocab": heads.config.draft_vocab,
                   "train_command": meta.get("train", {}).get("command"), "heldout": acc,
                   "tree_nodes": len(drafters[name].choices) + 1, "min_confidence": drafters[name].min_confidence}
    methods, config = ac.run_mtbench(backbone, bench, drafters)
    for row in rows.values():
        m = methods[row["method"]]
        row.update(tau=m["tau"], speedup=m["speedup"], tokens_per_s=m["tokens_per_s"], identical=m["identical"])
    config.update(flags=vars(args), eval_data=str(args.eval_data), eval_positions=rows["off"]["heldout"]["positions"])
    payload = {"config": config, "rows": rows, "methods": methods}
    table = markdown_table(rows, config)
    ac.write_outputs(args.out, STEM, payload, table, methods, lambda path: plot(rows, path))
    return payload


def markdown_table(rows: dict, config: dict) -> str:
    """Per-head accuracies and MT-Bench tau/speedup, one row per variant."""
    conf = rows["off"]["min_confidence"]
    lines = [f"Trigram ablation. {ac.settings_line(config)}; held-out positions: {config['eval_positions']}. "
             f"Tree {config['flags']['tree']!r}: each head set's sparse tree from its own accuracies"
             + (f", drafted only when head 0's top probability is at least {conf}." if conf else "."), "",
             "| trigram | top-1 per head | top-5 per head | tree nodes | tau | speedup | identical |",
             "|---|---|---|---:|---:|---:|---|"]
    for v, r in rows.items():
        acc = r["heldout"]
        tri = "off" if v == "off" else f"on ({r['trigram_tokens']})"
        lines.append(f"| {tri} | {' '.join(f'{a:.3f}' for a in acc['top1'])} | "
                     f"{' '.join(f'{a:.3f}' for a in acc['top5'])} | "
                     f"{r['tree_nodes']} | {r['tau']:.2f} | {r['speedup']:.2f}x | "
                     f"{'yes' if r['identical'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def plot(rows: dict, path: Path) -> None:
    """Left: per-head top-1 / top-5 for both variants; right: MT-Bench tau and speedup."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 1]})
    k = len(rows["off"]["heldout"]["top1"])
    width = 0.2
    for j, (v, r) in enumerate(rows.items()):
        for m, (metric, alpha) in enumerate((("top1", 1.0), ("top5", 0.45))):
            x = [i + (2 * j + m - 1.5) * width for i in range(k)]
            left.bar(x, r["heldout"][metric], width, alpha=alpha, color=f"C{j}", label=f"trigram {v}: {metric}")
    left.set_xticks(range(k), [f"head {i + 1}\n(t+{i + 2})" for i in range(k)])
    left.set_ylabel("held-out accuracy")
    left.set_ylim(0, 1.2 * max(max(r["heldout"]["top5"]) for r in rows.values()))
    left.legend(fontsize="small", ncol=2)
    names = list(rows)
    for j, metric in enumerate(("tau", "speedup")):
        right.bar([i + (j - 0.5) * 0.35 for i in range(len(names))], [rows[v][metric] for v in names], 0.35,
                  label=metric, color=f"C{j + 2}")
    right.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    right.set_xticks(range(len(names)), [f"trigram {v}" for v in names])
    right.set_title("MT-Bench (speedup vs hf generate)", fontsize="medium")
    right.set_ylim(0, 1.3 * max(max(r["tau"], r["speedup"]) for r in rows.values()))
    right.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    cli.run(main)
