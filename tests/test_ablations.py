"""The ablation scripts: their --quick runs on the real SmolLM2 (no data/ or runs/ needed) write sane
JSON/Markdown/PNG, and their tree/head bookkeeping is right. The scripts' own functions run in one `python` in
scripts/ (conftest.call_in_scripts), the scripts themselves as commands."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import SCRIPTS, call_in_scripts, run_script
from specdec.tree import parents_from_choices

# per-rank accuracies shaped like real heads' (decreasing with rank and depth), 3 heads x 4 ranks
ACC = [[0.4, 0.1, 0.05, 0.02], [0.2, 0.08, 0.04, 0.01], [0.12, 0.05, 0.02, 0.01]]


def outputs(out: Path, stem: str) -> tuple[dict, str]:
    for ext in ("json", "md", "png"):
        assert (out / f"{stem}.{ext}").is_file(), ext
    assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    return json.loads((out / f"{stem}.json").read_text()), (out / f"{stem}.md").read_text()


def sane_method(m: dict, max_tau: float) -> None:
    assert m["identical"] is True  # fp32: every Medusa tree decodes exactly plain greedy's tokens
    assert 1.0 <= m["tau"] <= max_tau and m["speedup"] > 0 and m["tokens_per_s"] > 0


def sane_accuracy(acc: dict, heads: int) -> None:
    assert len(acc["top1"]) == len(acc["top5"]) == len(acc["rank_accuracy"]) == heads and acc["positions"] > 0
    assert all(0 <= a <= b <= 1 for a, b in zip(acc["top1"], acc["top5"]))
    assert all(math.isclose(sum(r[:5]), b, abs_tol=1e-5) for r, b in zip(acc["rank_accuracy"], acc["top5"]))


# the first heads of a random 4-head checkpoint, as k-head models, against the full model's outputs
FIRST_HEADS = """
import torch
import sweep_heads
import sweep_tree
from specdec.medusa import MedusaConfig, MedusaHeads

torch.manual_seed(0)
heads = MedusaHeads(MedusaConfig(16, 50, num_heads=4, trigram=[True, False, True, False], trigram_tokens="pending"))
for p in heads.parameters():
    torch.nn.init.normal_(p, std=0.3)
embed, lm_head = torch.randn(50, 16), torch.randn(50, 16)
hidden, ctx = torch.randn(5, 16), torch.randint(0, 50, (5, 3))
full = heads(hidden, ctx, embed, lm_head)


def first(k):
    small = first_heads(heads, k)
    return [small.config.num_heads, small.config.trigram,
            torch.allclose(small(hidden, ctx, embed, lm_head), full[:k], atol=1e-6)]
"""


@pytest.fixture(scope="module")
def calls(tmp_path_factory) -> dict[str, dict]:
    """The ablation scripts' functions, in one `python` in scripts/: {key: {"value"} or {"raised", ...}}."""
    run = tmp_path_factory.mktemp("run")
    config = run / "heads" / "config.json"
    same = json.dumps({"train": {"command": f"train/train_heads.py --epochs 3 --out {run}"}})
    return call_in_scripts("ablation_common", {
        "grid": f"sweep_tree.tree_grid({ACC}, [4, 8, 16], [1, 2, 3])",
        "too_deep": f"sweep_tree.tree_grid({ACC}, [4], [4])",
        **{f"bad_sizes_{i}": f"sweep_tree.parse_args({bad!r})" for i, bad in enumerate(BAD_SIZES)},
        "configs": f"sweep_heads.configs({ACC}, [4, 8])",
        "no_chain": f"sweep_heads.configs({ACC}, [4], chain=False)",
        "first": "[first(k) for k in (1, 2, 4)]",
        "first_5": "first_heads(heads, 5)",
        "other": f"(Path({str(config)!r}).parent.mkdir(parents=True), Path({str(config)!r}).write_text("
                 f"{json.dumps(json.dumps({'train': {'command': 'train/train_heads.py --epochs 1'}}))}))",
        "refused": f"train_or_load(Path({str(run)!r}), ['--epochs', '3'])",
        "same": f"Path({str(config)!r}).write_text({json.dumps(same)})",
        "loaded": f"train_or_load(Path({str(run)!r}), ['--epochs', '3'])",
    }, FIRST_HEADS) | {"run": {"value": str(run)}}


BAD_SIZES = (["--nodes", "1,4"], ["--nodes", "four"], ["--depths", "0"])


def test_tree_grid_dedupes_and_skips(calls):
    trees = calls["grid"]["value"]
    keys = [tuple(map(tuple, t["choices"])) for t in trees]
    assert len(keys) == len(set(keys))
    for t in trees:
        assert len(t["choices"]) == t["nodes"] - 1 and t["depth"] == max(map(len, t["choices"])) <= max(t["depth_caps"])
        parents_from_choices([tuple(c) for c in t["choices"]])  # a valid tree: every node's parent is in it
        assert 1 < t["expected_tau"] < 1 + t["depth"]
    # one head holds 4 ranks: 8 and 16 nodes cannot be depth-1 trees
    assert {(t["nodes"], min(t["depth_caps"])) for t in trees if t["depth"] == 1} == {(4, 1)}
    assert trees[0]["choices"] == [[0], [1], [2]]
    assert calls["too_deep"]["raised"] == "SystemExit" and "more levels" in calls["too_deep"]["message"]


def test_bad_tree_sizes_are_refused(calls):
    for i in range(len(BAD_SIZES)):
        assert calls[f"bad_sizes_{i}"]["raised"] == "SystemExit" and "must be" in calls[f"bad_sizes_{i}"]["stderr"]


def test_head_configs_reuse_equal_trees(calls):
    rows = calls["configs"]["value"]
    by = {(r["heads"], r["tree"]): r for r in rows}
    assert by[(1, "sparse 4")]["choices"] == [[0], [1], [2]] and "same_as" not in by[(1, "sparse 4")]
    assert "skipped" in by[(1, "sparse 8")]  # 7 drafts do not fit one head's 4 ranks
    assert [by[(k, "chain")]["choices"] for k in (1, 3)] == [[[0]], [[0], [0, 0], [0, 0, 0]]]
    assert by[(3, "chain")]["expected_tau"] == pytest.approx(1 + 0.4 + 0.4 * 0.2 + 0.4 * 0.2 * 0.12)
    assert not any(r["tree"] == "chain" for r in calls["no_chain"]["value"])
    for r in rows:
        if "same_as" in r:
            assert next(x for x in rows if x["method"] == r["same_as"])["choices"] == r["choices"]
        if "skipped" not in r:
            assert max(map(len, r["choices"])) <= r["heads"]


def test_first_heads_are_the_heads_of_a_smaller_model(calls):
    trigram = [True, False, True, False]
    assert calls["first"]["value"] == [[k, trigram[:k], True] for k in (1, 2, 4)]
    assert calls["first_5"]["raised"] == "ValueError"


def test_train_or_load_refuses_heads_of_another_command(calls):
    assert calls["refused"]["raised"] == "SystemExit" and "another command" in calls["refused"]["message"]
    # the same command: loaded, not retrained
    assert calls["loaded"]["value"] == str(Path(calls["run"]["value"]) / "heads")


def quick(script: str, out: Path, *flags: str) -> None:
    proc = run_script(SCRIPTS / script, "--quick", *flags, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.real
def test_ablate_trigram_quick(tmp_path):
    quick("ablate_trigram.py", tmp_path)
    data, md = outputs(tmp_path, "ablate_trigram")
    rows = data["rows"]
    assert rows["off"]["trigram"] == [False] * 4 and rows["on"]["trigram"] == [True] * 4
    for row in rows.values():
        sane_accuracy(row["heldout"], 4)
        sane_method(data["methods"][row["method"]], max_tau=5)
        assert row["tree_nodes"] == 8 and row["tau"] == data["methods"][row["method"]]["tau"]
    assert data["methods"]["hf"]["speedup"] == pytest.approx(1.0) and data["config"]["question_ids"] == [81, 91]
    assert "| off |" in md and "| on (pending) |" in md and "MT-Bench detail" in md


@pytest.mark.real
def test_sweep_tree_quick(tmp_path):
    quick("sweep_tree.py", tmp_path)
    data, md = outputs(tmp_path, "sweep_tree")
    trees = data["trees"]
    assert {(t["nodes"], t["depth"]) for t in trees} == {(4, 1), (4, 2), (8, 1), (8, 2)}
    for t in trees:
        sane_method(data["methods"][t["method"]], max_tau=t["depth"] + 1)
        assert len(t["choices"]) == t["nodes"] - 1 and t["verify_ms"] > 0 and t["verify_x"] > 0
    best = [t for t in trees if t["best"]]
    assert len(best) == 1 and best[0]["speedup"] == max(t["speedup"] for t in trees)
    assert data["best"]["nodes"] == best[0]["nodes"] and md.count("**best**") == 1


@pytest.mark.real
def test_sweep_heads_quick(tmp_path):
    quick("sweep_heads.py", tmp_path, "--max-heads", "3")
    data, md = outputs(tmp_path, "sweep_heads")
    sane_accuracy(data["heldout"], 3)
    assert "train_heads.py" in data["config"]["train_command"] and "--num-heads 3" in data["config"]["train_command"]
    ran = [r for r in data["rows"] if "skipped" not in r]
    assert {r["heads"] for r in ran} >= {1, 2, 3}
    for r in ran:
        sane_method(data["methods"][r.get("same_as", r["method"])], max_tau=r["depth"] + 1)
    assert "| 3 | t+4 |" in md
