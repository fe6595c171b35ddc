"""The ablation scripts: their --quick runs on the real SmolLM2 (no data/ or runs/ needed) write sane
JSON/Markdown/PNG, and their tree/head bookkeeping is right."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import load_script
from specdec.medusa import MedusaConfig, MedusaHeads
from specdec.tree import parents_from_choices

ROOT = Path(__file__).resolve().parents[1]
common = load_script(ROOT / "scripts" / "ablation_common.py")
ablate_trigram = load_script(ROOT / "scripts" / "ablate_trigram.py")
sweep_tree = load_script(ROOT / "scripts" / "sweep_tree.py")
sweep_heads = load_script(ROOT / "scripts" / "sweep_heads.py")

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


def test_tree_grid_dedupes_and_skips():
    trees = sweep_tree.tree_grid(ACC, [4, 8, 16], [1, 2, 3])
    keys = [tuple(map(tuple, t["choices"])) for t in trees]
    assert len(keys) == len(set(keys))
    for t in trees:
        assert len(t["choices"]) == t["nodes"] - 1 and t["depth"] == max(map(len, t["choices"])) <= max(t["depth_caps"])
        parents_from_choices([tuple(c) for c in t["choices"]])  # a valid tree: every node's parent is in it
        assert 1 < t["expected_tau"] < 1 + t["depth"]
    # one head holds 4 ranks: 8 and 16 nodes cannot be depth-1 trees
    assert {(t["nodes"], min(t["depth_caps"])) for t in trees if t["depth"] == 1} == {(4, 1)}
    assert trees[0]["choices"] == [[0], [1], [2]]
    with pytest.raises(SystemExit, match="more levels"):
        sweep_tree.tree_grid(ACC, [4], [4])


def test_bad_tree_sizes_are_refused(capsys):
    for bad in (["--nodes", "1,4"], ["--nodes", "four"], ["--depths", "0"]):
        with pytest.raises(SystemExit):
            sweep_tree.parse_args(bad)
        assert "must be" in capsys.readouterr().err


def test_head_configs_reuse_equal_trees():
    rows = sweep_heads.configs(ACC, [4, 8])
    by = {(r["heads"], r["tree"]): r for r in rows}
    assert by[(1, "sparse 4")]["choices"] == [[0], [1], [2]] and "same_as" not in by[(1, "sparse 4")]
    assert "skipped" in by[(1, "sparse 8")]  # 7 drafts do not fit one head's 4 ranks
    assert [by[(k, "chain")]["choices"] for k in (1, 3)] == [[[0]], [[0], [0, 0], [0, 0, 0]]]
    assert by[(3, "chain")]["expected_tau"] == pytest.approx(1 + 0.4 + 0.4 * 0.2 + 0.4 * 0.2 * 0.12)
    assert not any(r["tree"] == "chain" for r in sweep_heads.configs(ACC, [4], chain=False))
    for r in rows:
        if "same_as" in r:
            assert next(x for x in rows if x["method"] == r["same_as"])["choices"] == r["choices"]
        if "skipped" not in r:
            assert max(map(len, r["choices"])) <= r["heads"]


def test_first_heads_are_the_heads_of_a_smaller_model():
    torch.manual_seed(0)
    heads = MedusaHeads(MedusaConfig(16, 50, num_heads=4, trigram=[True, False, True, False], trigram_tokens="pending"))
    for p in heads.parameters():
        torch.nn.init.normal_(p, std=0.3)
    embed, lm_head = torch.randn(50, 16), torch.randn(50, 16)
    hidden, ctx = torch.randn(5, 16), torch.randint(0, 50, (5, 3))
    full = heads(hidden, ctx, embed, lm_head)
    for k in (1, 2, 4):
        small = common.first_heads(heads, k)
        assert small.config.num_heads == k and small.config.trigram == heads.config.trigram[:k]
        assert torch.allclose(small(hidden, ctx, embed, lm_head), full[:k], atol=1e-6)
    with pytest.raises(ValueError):
        common.first_heads(heads, 5)


def test_train_or_load_refuses_heads_of_another_command(tmp_path):
    heads = tmp_path / "heads"
    heads.mkdir()
    (heads / "config.json").write_text(json.dumps({"train": {"command": "train/train_heads.py --epochs 1"}}))
    with pytest.raises(SystemExit, match="another command"):
        common.train_or_load(tmp_path, ["--epochs", "3"])
    # the same command: loaded, not retrained
    (heads / "config.json").write_text(
        json.dumps({"train": {"command": f"train/train_heads.py --epochs 3 --out {tmp_path}"}}))
    assert common.train_or_load(tmp_path, ["--epochs", "3"]) == heads


@pytest.mark.real
def test_ablate_trigram_quick(tmp_path):
    ablate_trigram.main(["--quick", "--out", str(tmp_path)])
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
    sweep_tree.main(["--quick", "--out", str(tmp_path)])
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
    data = sweep_heads.main(["--quick", "--max-heads", "3", "--out", str(tmp_path)])
    on_disk, md = outputs(tmp_path, "sweep_heads")
    assert on_disk["rows"] == json.loads(json.dumps(data["rows"]))
    sane_accuracy(data["heldout"], 3)
    assert "train_heads.py" in data["config"]["train_command"] and "--num-heads 3" in data["config"]["train_command"]
    ran = [r for r in data["rows"] if "skipped" not in r]
    assert {r["heads"] for r in ran} >= {1, 2, 3}
    for r in ran:
        sane_method(data["methods"][r.get("same_as", r["method"])], max_tau=r["depth"] + 1)
    assert "| 3 | t+4 |" in md
