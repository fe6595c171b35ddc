"""Export trained drafts (EAGLE, EAGLE-3, Medusa) and their backbone in the layouts vLLM serves.

    python scripts/export_heads.py --weights eagle3 --weights runs/my_medusa/heads --out exports/smollm2
    vllm serve exports/smollm2/backbone --speculative-config '{"method": "eagle3", "model": "exports/smollm2/eagle3", \
"num_speculative_tokens": 3}'

Writes <out>/backbone (config.json with `architectures`, weights linked) and <out>/<name> per draft, then prints the
`vllm serve` command for each. Layouts and what each cannot express: specdec/export.py.
"""
from __future__ import annotations

import json
import shlex

from specdec import cli
from specdec.export import DTYPES, export_heads


def main(argv: list[str] | None = None) -> dict:
    """Export, print one `vllm serve` command per draft; returns {name: {path, method, speculative_config, notes}}."""
    p = cli.parser(__doc__)
    p.add_argument("--weights", action="append", required=True,
                   help="a trained draft: a directory, or a shipped name (eagle, eagle3, medusa); repeatable")
    p.add_argument("--backbone", default=None, help="local Hugging Face directory (default: embedded SmolLM2-135M)")
    p.add_argument("--out", default="results/tmp/vllm_export", help="output directory")
    p.add_argument("--speculative-tokens", type=int, default=3, help="draft length vLLM proposes (EAGLE, EAGLE-3)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of the written weights")
    args = p.parse_args(argv)
    if args.speculative_tokens < 1:
        p.error("--speculative-tokens must be at least 1")
    target, exports = export_heads(args.weights, args.out, args.backbone, args.speculative_tokens, args.dtype)
    report = {}
    for name, e in exports.items():
        print(f"{name}: {e.path} ({e.method})")
        for note in e.notes:
            print(f"  note: {note}")
        flags = [f"--{k.replace('_', '-')}={json.dumps(v)}" for k, v in e.engine_args.items()]
        print("  vllm serve " + shlex.join([str(target), "--speculative-config", json.dumps(e.speculative_config),
                                            *flags]))
        report[name] = {"path": str(e.path), "method": e.method, "speculative_config": e.speculative_config,
                        "engine_args": e.engine_args, "notes": e.notes}
    return report


if __name__ == "__main__":
    cli.run(main)
