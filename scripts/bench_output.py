"""What the benchmark scripts write: speedup plots (matplotlib, headless) and the JSON / Markdown / PNG / SVG files of
a run."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from specdec.metrics import markdown, plot_title


def pyplot():
    """matplotlib's pyplot on the headless Agg backend (no display on benchmark machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _spread(per_question: list[dict], category: str | None = None) -> float:
    """Standard deviation of the per-question speedups (of one category, or all); NaN (no error bar drawn) for a
    single question."""
    values = [q["speedup"] for q in per_question if category in (None, q["category"])]
    return statistics.stdev(values) if len(values) > 1 else math.nan


def plot_speedups(methods: dict[str, dict], paths: list[Path], config: dict | None = None) -> None:
    """Grouped bars: speedup per category (and overall) for each method, its value on the bar and the spread over
    questions as error bars; saved to each path (format by suffix), titled with the settings when config is given."""
    plt = pyplot()
    cats = ["overall"] + list(next(iter(methods.values()))["per_category"])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, len(cats) * (0.3 + 0.12 * len(methods))), 4.5))
    for i, (name, m) in enumerate(methods.items()):
        values = [m["speedup"]] + [m["per_category"][c]["speedup"] for c in cats[1:]]
        errors = [_spread(m["per_question_speedup"])] + [_spread(m["per_question_speedup"], c) for c in cats[1:]]
        bars = ax.bar([x + (i - (len(methods) - 1) / 2) * width for x in range(len(cats))], values, width, label=name,
                      yerr=errors, capsize=1.5, error_kw={"linewidth": 0.6})
        # inside the bar on a light box: above the bar, or bare, the error bar would cover the number
        ax.bar_label(bars, fmt="%.2f", label_type="center", rotation=90, fontsize=5, zorder=5,
                     bbox={"boxstyle": "square,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
    ax.set_ylabel("speedup vs hf generate")
    if config:
        ax.set_title(plot_title(config), fontsize="small")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # inside, it covers bars
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=300)
    plt.close(fig)


def write_results(out_dir: str | Path, config: dict, methods: dict[str, dict],
                  stem: str = "mtbench_speedup") -> list[Path]:
    """Write STEM.json ({"config", "methods"}), STEM.md, STEM.png (300 dpi) and STEM.svg into out_dir; their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.{ext}" for ext in ("json", "md", "png", "svg")]
    paths[0].write_text(json.dumps({"config": config, "methods": methods}, indent=2, default=str) + "\n")
    paths[1].write_text(markdown(methods, config))
    plot_speedups(methods, paths[2:], config)
    return paths
