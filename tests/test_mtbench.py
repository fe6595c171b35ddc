"""MT-Bench speedup script: question selection, method names, metrics aggregation, and one real smoke run."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from conftest import load_script
from specdec.data import copy_prompts, load_mtbench, stratified_subset
from specdec.metrics import TurnRecord, first_divergence, markdown, summarize, write_results

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "mtbench_speedup.py"


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT)


def test_mtbench_has_80_questions_in_8_categories():
    qs = load_mtbench()
    assert len(qs) == 80
    assert set(Counter(q.category for q in qs).values()) == {10}
    assert all(len(q.turns) == 2 for q in qs)


@pytest.mark.parametrize("n", [1, 8, 16, 20, 80])
def test_stratified_subset_is_even_over_categories(n):
    qs = load_mtbench()
    picked = stratified_subset(qs, n)
    counts = Counter(q.category for q in picked)
    assert len(picked) == len({q.question_id for q in picked}) == n
    assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == min(n, 8)
    first = {}
    for q in qs:
        first.setdefault(q.category, q.question_id)
    # round-robin: the first 8 are each category's lowest question id, in question-id order
    assert [q.question_id for q in picked[:8]] == sorted(first.values())[:n]


def test_stratified_subset_rejects_bad_sizes():
    qs = load_mtbench()
    for n in (0, 81):
        with pytest.raises(ValueError, match="cannot pick"):
            stratified_subset(qs, n)


def test_copy_prompts_are_copy_heavy():
    qs = copy_prompts()
    assert len(qs) == 8 and {q.category for q in qs} == {"summarise", "fix-grammar", "rewrite", "extract"}
    assert all(150 <= len(q.turns[0].split()) <= 320 and len(q.turns) == 2 for q in qs)


def test_methods_always_include_baseline_and_reference(script):
    assert script.resolve_methods("ngram") == ["hf", "vanilla", "ngram"]
    assert script.resolve_methods("vanilla, hf-pld,hf,vanilla") == ["vanilla", "hf-pld", "hf"]


def test_unknown_method_lists_available(script):
    with pytest.raises(ValueError) as e:
        script.resolve_methods("hf,nonsense")
    msg = str(e.value)
    assert "unknown" in msg and "available: " + ", ".join(script.available_methods()) in msg


def test_sampling_flags(script, capsys):
    args = script.parse_args(["--temperature", "0.7", "--top-p", "0.9", "--top-k", "20", "--seed", "3"])
    cfg = script.sampling_config(args)
    assert (cfg.temperature, cfg.top_p, cfg.top_k, cfg.seed, cfg.lossless) == (0.7, 0.9, 20, 3, True)
    assert script.method_label("ngram", args) == "ngram"
    typical = script.parse_args(["--temperature", "0.7", "--lossy-typical-acceptance"])
    assert script.method_label("medusa", typical) == "medusa (typical, LOSSY)"
    assert script.method_label("hf", typical) == "hf" and script.method_label("vanilla", typical) == "vanilla"
    for bad, msg in ((["--lossy-typical-acceptance"], "needs --temperature > 0"),
                     (["--temperature", "-1"], "temperature >= 0")):
        with pytest.raises(SystemExit):
            script.parse_args(bad)
        assert msg in capsys.readouterr().err


def test_summarize_sampled_records_marks_identity_na():
    m = summarize(synthetic_records(), identity=False)
    assert m["hf"]["identical"] is None and m["ngram"]["identical"] == "n/a" and m["ngram"]["divergences"] == []
    assert "| ngram |" in markdown(m) and "n/a (sampled)" in markdown(m)


def test_flags_reject_unavailable_methods(script, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--methods", "eagle4"])
    assert "'eagle4' is unknown; available: hf, hf-pld, vanilla, ngram, lookahead" in capsys.readouterr().err
    assert script.parse_args(["--methods", "ngram"]).methods == ["hf", "vanilla", "ngram"]


def test_default_methods_end_with_eagle3(script):
    assert script.parse_args([]).methods[-4:] == ["eagle2", "eagle2+lookup", "eagle3", "eagle3+lookup"]


def test_drafter_options_reach_the_drafters_that_take_them(script, capsys):
    args = script.parse_args(["--methods", "ngram,eagle2", "--drafter-option", "depth=6",
                              "--drafter-option", "verify_cost={}", "--drafter-option", "top_k=10"])
    assert args.drafter_option == {"depth": 6, "verify_cost": {}, "top_k": 10}
    assert script.drafter_options("eagle2", args) == {"depth": 6, "verify_cost": {}, "top_k": 10}
    assert "depth" not in script.drafter_options("ngram", args)
    for bad, msg in ((["--methods", "ngram", "--drafter-option", "depth=6"], "none of the drafters"),
                     (["--drafter-option", "depth"], "expected KEY=VALUE"),
                     (["--methods", "eagle2", "--drafter-option", "weights=x"], "set by --weights")):
        with pytest.raises(SystemExit):
            script.parse_args(bad)
        assert msg in capsys.readouterr().err


def test_weights_go_to_each_methods_heads_or_draft(script):
    args = script.parse_args(["--methods", "ngram,medusa,eagle2+lookup,eagle3",
                              "--weights", "medusa=runs/x/heads, eagle2+lookup=eagle", "--weights", "eagle3=runs/e3"])
    assert args.weights == {"medusa": "runs/x/heads", "eagle2+lookup": "eagle", "eagle3": "runs/e3"}
    assert script.drafter_options("medusa", args) == {"weights": "runs/x/heads"}
    assert script.drafter_options("eagle2+lookup", args) == {"weights": "eagle"}
    assert script.drafter_options("eagle3", args) == {"weights": "runs/e3"}
    assert script.drafter_options("ngram", args) == {}
    assert script.parse_args(["--methods", "medusa"]).weights == {}


@pytest.mark.parametrize("argv, msg", [
    (["--methods", "ngram", "--weights", "medusa=x"], "--weights medusa: not among the methods (hf, vanilla, ngram)"),
    (["--methods", "ngram", "--weights", "ngram=x"], "--weights ngram: it takes no weights; ones that do: medusa,"),
    (["--weights", "hf=x"], "--weights hf: it takes no weights"),
    (["--methods", "medusa", "--weights", "medusa"], "expected METHOD=PATH_OR_SHIPPED_NAME"),
    (["--methods", "medusa", "--weights", "medusa="], "expected METHOD=PATH_OR_SHIPPED_NAME"),
    (["--methods", "medusa", "--weights", "medusa=a", "--weights", "medusa=b"], "--weights medusa: given twice"),
    (["--heads", "x"], "unrecognized arguments: --heads"),
])
def test_bad_weights_are_errors(script, capsys, argv, msg):
    with pytest.raises(SystemExit):
        script.parse_args(argv)
    assert msg in capsys.readouterr().err


def test_out_defaults_under_the_ignored_results_tmp(script):
    assert script.parse_args([]).out == "results/tmp/mtbench"
    assert "results/tmp/" in (ROOT / ".gitignore").read_text().split()


def test_threads_default_to_omp_num_threads(script, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert script.parse_args([]).threads == 3 and script.parse_args(["--threads", "5"]).threads == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert script.parse_args([]).threads == len(os.sched_getaffinity(0))
    with pytest.raises(SystemExit):
        script.parse_args(["--threads", "0"])
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_skip_questions_picks_the_held_aside_ones(script, capsys):
    reported = script.select_questions(script.parse_args(["--questions", "16"]))
    aside = script.select_questions(script.parse_args(["--questions", "8", "--skip-questions", "16"]))
    assert [q.question_id for q in script.select_questions(script.parse_args(["--questions", "24"]))] == \
        [q.question_id for q in reported + aside]
    assert len({q.category for q in aside}) == 8
    with pytest.raises(ValueError, match="cannot pick"):
        script.select_questions(script.parse_args(["--questions", "8", "--skip-questions", "76"]))
    with pytest.raises(SystemExit):
        script.parse_args(["--skip-questions", "-1"])
    assert "--skip-questions must be at least 0" in capsys.readouterr().err


def rec(method, qid, cat, tokens, wall, steps=None, accepted=None, turn=1, gaps=None, mem=100.0):
    return TurnRecord(method, qid, cat, turn, tokens, wall, steps, accepted, mem, gaps)


def synthetic_records() -> list[TurnRecord]:
    return [
        rec("hf", 1, "a", [1, 2, 3, 4], 2.0, 3, 3), rec("hf", 2, "b", [5, 6], 1.0, 1, 1),
        rec("vanilla", 1, "a", [1, 2, 3, 4], 1.0, 3, 3, gaps=[.5, .4, .3, .2]),
        rec("vanilla", 2, "b", [5, 7], 1.0, 1, 1, gaps=[.9, .01]),
        rec("ngram", 1, "a", [1, 2, 9, 9], 0.5, 1, 3, mem=150.0), rec("ngram", 2, "b", [5, 7], 0.25, 1, 1, mem=120.0),
        rec("hf-pld", 1, "a", [1, 2, 3, 4], 2.0), rec("hf-pld", 2, "b", [5, 6], 1.0),
    ]


def synthetic_config(script, *argv: str) -> dict:
    """mtbench_speedup's config for a 2-question run with these flags, on a made-up machine."""
    return {"flags": vars(script.parse_args(["--questions", "2", *argv])), "question_ids": [81, 91],
            "backbone_path": "/w/smollm2-135m-instruct", "dtype": "bfloat16", "device": "cpu",
            "machine": {"cpu": "Test CPU 9000", "cores": 4, "threads": 3, "torch": "2.9.0"}}


def test_summarize_synthetic_records():
    m = summarize(synthetic_records())
    assert m["vanilla"]["per_question_speedup"] == [{"question_id": 1, "category": "a", "speedup": pytest.approx(2.0)},
                                                    {"question_id": 2, "category": "b", "speedup": pytest.approx(1.0)}]
    assert [q["speedup"] for q in m["ngram"]["per_question_speedup"]] == [pytest.approx(4.0)] * 2
    assert m["hf"]["tokens_per_s"] == pytest.approx(2.0) and m["hf"]["speedup"] == pytest.approx(1.0)
    assert m["hf"]["tau"] == pytest.approx(1.0) and m["hf"]["identical"] is None
    assert m["vanilla"]["speedup"] == pytest.approx(1.5)
    assert m["vanilla"]["divergences"] == [{"question_id": 2, "turn": 1, "position": 1, "top2_gap": 0.01}]
    assert m["ngram"]["tokens_per_s"] == pytest.approx(8.0) and m["ngram"]["speedup"] == pytest.approx(4.0)
    assert m["ngram"]["tau"] == pytest.approx(2.0) and m["ngram"]["identical"] is False
    assert m["ngram"]["divergences"] == [{"question_id": 1, "turn": 1, "position": 2, "top2_gap": 0.3}]
    assert m["ngram"]["peak_mem_mb"] == 150.0
    assert m["ngram"]["per_category"] == {"a": {"speedup": pytest.approx(4.0), "tau": pytest.approx(3.0)},
                                          "b": {"speedup": pytest.approx(4.0), "tau": pytest.approx(1.0)}}
    # hf-pld matches vanilla on question 1 and diverges on question 2 (vanilla's own divergence from hf)
    assert m["hf-pld"]["tau"] is None and m["hf-pld"]["per_category"]["a"]["tau"] is None
    assert [d["question_id"] for d in m["hf-pld"]["divergences"]] == [2]


def test_second_turn_is_not_compared_after_a_first_turn_divergence():
    recs = [rec("hf", 1, "a", [1, 2], 1.0, 1, 1), rec("hf", 1, "a", [3, 4], 1.0, 1, 1, turn=2),
            rec("vanilla", 1, "a", [1, 2], 1.0, 1, 1, gaps=[1.0, 1.0]),
            rec("vanilla", 1, "a", [3, 5], 1.0, 1, 1, turn=2, gaps=[1.0, 0.02])]
    recs += [rec("ngram", 1, "a", [1, 9], 1.0, 1, 2), rec("ngram", 1, "a", [8, 8], 1.0, 1, 2, turn=2)]
    m = summarize(recs)
    assert m["vanilla"]["divergences"] == [{"question_id": 1, "turn": 2, "position": 1, "top2_gap": 0.02}]
    assert m["ngram"]["divergences"] == [{"question_id": 1, "turn": 1, "position": 1, "top2_gap": 1.0}]


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 4, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


def test_write_results_on_synthetic_records(script, tmp_path):
    from PIL import Image

    methods = summarize(synthetic_records())
    paths = write_results(tmp_path, synthetic_config(script), methods)
    assert [p.name for p in paths] == [f"mtbench_speedup.{ext}" for ext in ("json", "md", "png", "svg")]
    saved = json.loads(paths[0].read_text())["methods"]["ngram"]
    assert saved["tau"] == pytest.approx(2.0) and saved["peak_mem_mb"] == 150.0
    table = markdown(methods)
    assert "| ngram | 8.0 | 4.00x | 2.00 | no (1 q, top-2 gap ≤ 0.3) |" in table and "| hf-pld |" in table
    assert "peak MB" not in table, "the process-wide peak is the same in every row"
    assert paths[1].read_text().startswith("Settings: backbone `smollm2-135m-instruct`")
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
    assert Image.open(paths[2]).info["dpi"] == pytest.approx((300, 300), abs=0.01)
    assert b"<svg" in paths[3].read_bytes()[:1000]


def test_caption_names_every_setting(script):
    methods = summarize(synthetic_records())
    greedy = markdown(methods, synthetic_config(script, "--methods", "ngram,medusa", "--weights", "medusa=runs/x/heads",
                                                "--drafter-option", "min_confidence=0.1", "--max-new-tokens", "64"))
    caption = greedy.splitlines()[0]
    for part in ("backbone `smollm2-135m-instruct`", "bfloat16 on cpu", "2 MT-Bench questions", "1 turn(s)",
                 "up to 64 new tokens", "greedy", "weights medusa=runs/x/heads", "min_confidence=0.1",
                 "Test CPU 9000", "3 torch thread(s)", "torch 2.9.0"):
        assert part in caption
    assert greedy.splitlines()[2].startswith("| method |")
    sampled = markdown(methods, synthetic_config(script, "--prompts", "copy", "--temperature", "0.7", "--top-p", "0.9",
                                                 "--top-k", "20", "--seed", "3"))
    assert "2 copy-heavy prompts" in sampled and "temperature 0.7, top-p 0.9, top-k 20, seed 3" in sampled
    assert "drafters: defaults" in sampled
    assert not markdown(methods).startswith("Settings"), "other callers pass no config"


def test_identity_note_and_the_gap_of_a_no_cell():
    methods = summarize(synthetic_records())
    methods["ngram"]["divergences"].append({"question_id": 2, "turn": 1, "position": 4, "top2_gap": None})
    lines = markdown(methods).splitlines()
    assert "| ngram | 8.0 | 4.00x | 2.00 | no (2 q, top-2 gap ≤ 0.3, 1 gap unknown) |" in lines
    assert "| vanilla | 3.0 | 1.50x | 1.00 | no (1 q, top-2 gap ≤ 0.01) |" in lines
    note = next(i for i, line in enumerate(lines) if line.startswith("*identical*"))
    assert note > max(i for i, line in enumerate(lines[:note]) if line.startswith("| vanilla |"))
    for part in ("transformers `generate` (hf)", "every other method with vanilla", "token for token",
                 "bf16/fp16", "near-tie"):
        assert part in lines[note]


def test_smoke_run_of_the_script(script, tmp_path, capsys):
    result = script.main(["--questions", "2", "--max-new-tokens", "8", "--methods", "hf,vanilla,ngram",
                          "--dtype", "fp32", "--out", str(tmp_path)])
    for name in ("mtbench_speedup.json", "mtbench_speedup.md", "mtbench_speedup.png", "mtbench_speedup.svg"):
        assert (tmp_path / name).is_file()
    err = capsys.readouterr().err
    assert "warming up hf" in err and "warming up ngram" in err
    caption = (tmp_path / "mtbench_speedup.md").read_text().splitlines()[0]
    assert "float32 on cpu; 2 MT-Bench questions, 1 turn(s), up to 8 new tokens" in caption
    data = json.loads((tmp_path / "mtbench_speedup.json").read_text())
    assert data["methods"].keys() == {"hf", "vanilla", "ngram"} == result["methods"].keys()
    cfg = data["config"]
    assert cfg["dtype"] == "float32" and cfg["question_ids"] == [81, 91] and cfg["flags"]["max_new_tokens"] == 8
    assert {"cpu", "threads", "torch"} <= cfg["machine"].keys() and cfg["backbone_path"]
    for name, m in data["methods"].items():
        assert {"tokens_per_s", "speedup", "tau", "identical", "divergences", "peak_mem_mb", "per_category",
                "per_question_speedup"} <= m.keys()
        assert m["tokens_per_s"] > 0 and m["peak_mem_mb"] > 0
        assert m["per_category"].keys() == {"writing", "roleplay"}
        assert all(d.keys() >= {"question_id", "position", "top2_gap"} for d in m["divergences"])
    assert data["methods"]["hf"]["identical"] is None and data["methods"]["hf"]["tau"] == pytest.approx(1.0)
    # fp32 is lossless: the n-gram drafter reproduces plain greedy decoding exactly
    assert data["methods"]["ngram"]["identical"] is True
    assert data["methods"]["vanilla"]["tau"] == pytest.approx(1.0)
