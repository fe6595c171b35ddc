"""MT-Bench speedup script: question selection, method names, metrics aggregation, and one real smoke run. The
script's own functions run in one `python` in scripts/ (conftest.call_in_scripts), the script itself as a command."""
from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from conftest import SCRIPTS, call_in_scripts, run_script
from specdec.data import load_mtbench, stratified_subset
from specdec.metrics import TurnRecord, first_divergence, markdown, summarize


def args(*argv: str) -> str:
    """The expression parsing these flags."""
    return f"parse_args({list(argv)!r})"


BAD_WEIGHTS = [
    (["--methods", "ngram", "--weights", "medusa=x"], "--weights medusa: not among the methods (hf, vanilla, ngram)"),
    (["--methods", "ngram", "--weights", "ngram=x"], "--weights ngram: it takes no weights; ones that do: medusa,"),
    (["--weights", "hf=x"], "--weights hf: it takes no weights"),
    (["--methods", "medusa", "--weights", "medusa"], "expected METHOD=PATH_OR_SHIPPED_NAME"),
    (["--methods", "medusa", "--weights", "medusa="], "expected METHOD=PATH_OR_SHIPPED_NAME"),
    (["--methods", "medusa", "--weights", "medusa=a", "--weights", "medusa=b"], "--weights medusa: given twice"),
    (["--heads", "x"], "unrecognized arguments: --heads"),
]
SAMPLED = args("--temperature", "0.7", "--top-p", "0.9", "--top-k", "20", "--seed", "3")
TYPICAL = args("--temperature", "0.7", "--lossy-typical-acceptance")
OPTIONS = args("--methods", "ngram,eagle2", "--drafter-option", "depth=6", "--drafter-option", "verify_cost={}",
               "--drafter-option", "top_k=10")
WEIGHTS = args("--methods", "ngram,medusa,eagle2+lookup,eagle3",
               "--weights", "medusa=runs/x/heads, eagle2+lookup=eagle", "--weights", "eagle3=runs/e3")
CALLS = {
    "methods_ngram": 'resolve_methods("ngram")',
    "methods_mixed": 'resolve_methods("vanilla, hf-pld,hf,vanilla")',
    "unknown": 'resolve_methods("hf,nonsense")',
    "available": "available_methods()",
    "sampling": f"(lambda c: [c.temperature, c.top_p, c.top_k, c.seed, c.lossless])(sampling_config({SAMPLED}))",
    "label_ngram": f'method_label("ngram", {SAMPLED})',
    "labels_typical": f'[method_label(m, {TYPICAL}) for m in ("medusa", "hf", "vanilla")]',
    "bad_typical": args("--lossy-typical-acceptance"),
    "bad_temperature": args("--temperature", "-1"),
    "eagle4": args("--methods", "eagle4"),
    "methods_flag": args("--methods", "ngram") + ".methods",
    "default_methods": args() + ".methods",
    "options": OPTIONS + ".drafter_option",
    "options_eagle2": f'drafter_options("eagle2", {OPTIONS})',
    "options_ngram": f'drafter_options("ngram", {OPTIONS})',
    "bad_option_taker": args("--methods", "ngram", "--drafter-option", "depth=6"),
    "bad_option_form": args("--drafter-option", "depth"),
    "bad_option_own_flag": args("--methods", "eagle2", "--drafter-option", "weights=x"),
    "weights": WEIGHTS + ".weights",
    "weights_by_method": f'{{m: drafter_options(m, {WEIGHTS})'
                         ' for m in ("medusa", "eagle2+lookup", "eagle3", "ngram")}',
    "no_weights": args("--methods", "medusa") + ".weights",
    **{f"bad_weights_{i}": args(*argv) for i, (argv, _) in enumerate(BAD_WEIGHTS)},
    "out": args() + ".out",
    "threads_env": args() + ".threads",  # OMP_NUM_THREADS=3 in this run
    "threads_flag": args("--threads", "5") + ".threads",
    "bad_threads": args("--threads", "0"),
    "reported": f'[q.question_id for q in select_questions({args("--questions", "16")})]',
    "aside": "[[q.question_id, q.category] for q in select_questions("
             + args("--questions", "8", "--skip-questions", "16") + ")]",
    "first_24": f'[q.question_id for q in select_questions({args("--questions", "24")})]',
    "too_far": f'select_questions({args("--questions", "8", "--skip-questions", "76")})',
    "bad_skip": args("--skip-questions", "-1"),
    "flags_plain": f"vars({args('--questions', '2')})",
    "flags_caption": f"""vars({args("--questions", "2", "--methods", "ngram,medusa", "--weights", "medusa=runs/x/heads",
                                     "--drafter-option", "min_confidence=0.1", "--max-new-tokens", "64")})""",
    "flags_sampled": f"""vars({args("--questions", "2", "--prompts", "copy", "--temperature", "0.7", "--top-p", "0.9",
                                     "--top-k", "20", "--seed", "3")})""",
    # last: without OMP_NUM_THREADS, every core the process may use
    "threads_unset": f'(os.environ.pop("OMP_NUM_THREADS"), {args()}.threads, len(os.sched_getaffinity(0)))[1:]',
}


@pytest.fixture(scope="module")
def script() -> dict[str, dict]:
    """mtbench_speedup's functions on CALLS: {key: {"value": ...} or {"raised", "message", "stderr"}}."""
    return call_in_scripts("mtbench_speedup", CALLS, env={**os.environ, "OMP_NUM_THREADS": "3"})


def value(script: dict, key: str):
    assert "value" in script[key], script[key]
    return script[key]["value"]


def refused(script: dict, key: str) -> str:
    """The argparse error of a call that must be refused."""
    assert script[key].get("raised") == "SystemExit", script[key]
    return script[key]["stderr"]


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
    qs = call_in_scripts("copy_prompts", {"qs": "[[q.category, q.turns] for q in copy_prompts()]"})["qs"]["value"]
    assert len(qs) == 8 and {c for c, _ in qs} == {"summarise", "fix-grammar", "rewrite", "extract"}
    assert all(150 <= len(turns[0].split()) <= 320 and len(turns) == 2 for _, turns in qs)


def test_methods_always_include_baseline_and_reference(script):
    assert value(script, "methods_ngram") == ["hf", "vanilla", "ngram"]
    assert value(script, "methods_mixed") == ["vanilla", "hf-pld", "hf"]


def test_unknown_method_lists_available(script):
    assert script["unknown"]["raised"] == "ValueError"
    msg = script["unknown"]["message"]
    assert "unknown" in msg and "available: " + ", ".join(value(script, "available")) in msg


def test_sampling_flags(script):
    assert value(script, "sampling") == [0.7, 0.9, 20, 3, True]
    assert value(script, "label_ngram") == "ngram"
    assert value(script, "labels_typical") == ["medusa (typical, LOSSY)", "hf", "vanilla"]
    assert "needs --temperature > 0" in refused(script, "bad_typical")
    assert "temperature >= 0" in refused(script, "bad_temperature")


def test_summarize_sampled_records_marks_identity_na():
    m = summarize(synthetic_records(), identity=False)
    assert m["hf"]["identical"] is None and m["ngram"]["identical"] == "n/a" and m["ngram"]["divergences"] == []
    assert "| ngram |" in markdown(m) and "n/a (sampled)" in markdown(m)


def test_flags_reject_unavailable_methods(script):
    assert "'eagle4' is unknown; available: hf, hf-pld, vanilla, ngram, lookahead" in refused(script, "eagle4")
    assert value(script, "methods_flag") == ["hf", "vanilla", "ngram"]


def test_default_methods_end_with_eagle3(script):
    assert value(script, "default_methods")[-4:] == ["eagle2", "eagle2+lookup", "eagle3", "eagle3+lookup"]


def test_drafter_options_reach_the_drafters_that_take_them(script):
    assert value(script, "options") == {"depth": 6, "verify_cost": {}, "top_k": 10}
    assert value(script, "options_eagle2") == {"depth": 6, "verify_cost": {}, "top_k": 10}
    assert "depth" not in value(script, "options_ngram")
    assert "none of the drafters" in refused(script, "bad_option_taker")
    assert "expected KEY=VALUE" in refused(script, "bad_option_form")
    assert "set by --weights" in refused(script, "bad_option_own_flag")


def test_weights_go_to_each_methods_heads_or_draft(script):
    assert value(script, "weights") == {"medusa": "runs/x/heads", "eagle2+lookup": "eagle", "eagle3": "runs/e3"}
    assert value(script, "weights_by_method") == {"medusa": {"weights": "runs/x/heads"},
                                                  "eagle2+lookup": {"weights": "eagle"},
                                                  "eagle3": {"weights": "runs/e3"}, "ngram": {}}
    assert value(script, "no_weights") == {}


@pytest.mark.parametrize("case", range(len(BAD_WEIGHTS)))
def test_bad_weights_are_errors(script, case):
    assert BAD_WEIGHTS[case][1] in refused(script, f"bad_weights_{case}")


def test_out_defaults_under_the_ignored_results_tmp(script):
    assert value(script, "out") == "results/tmp/mtbench"


def test_threads_default_to_omp_num_threads(script):
    assert value(script, "threads_env") == 3 and value(script, "threads_flag") == 5
    unset, cores = value(script, "threads_unset")
    assert unset == cores
    assert "--threads must be at least 1" in refused(script, "bad_threads")


def test_skip_questions_picks_the_held_aside_ones(script):
    reported, aside = value(script, "reported"), value(script, "aside")
    assert value(script, "first_24") == reported + [q for q, _ in aside]
    assert len({c for _, c in aside}) == 8
    assert script["too_far"]["raised"] == "ValueError" and "cannot pick" in script["too_far"]["message"]
    assert "--skip-questions must be at least 0" in refused(script, "bad_skip")


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


def synthetic_config(script, flags: str) -> dict:
    """mtbench_speedup's config for a 2-question run with the flags of CALLS[flags], on a made-up machine."""
    return {"flags": value(script, flags), "question_ids": [81, 91],
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


def test_markdown_of_synthetic_records(script):
    methods = summarize(synthetic_records())
    table = markdown(methods)
    assert "| ngram | 8.0 | 4.00x | 2.00 | no (1 q, top-2 gap ≤ 0.3) |" in table and "| hf-pld |" in table
    assert "peak MB" not in table, "the process-wide peak is the same in every row"
    assert markdown(methods, synthetic_config(script, "flags_plain")).startswith(
        "Settings: backbone `smollm2-135m-instruct`")


def test_caption_names_every_setting(script):
    methods = summarize(synthetic_records())
    greedy = markdown(methods, synthetic_config(script, "flags_caption"))
    caption = greedy.splitlines()[0]
    for part in ("backbone `smollm2-135m-instruct`", "bfloat16 on cpu", "2 MT-Bench questions", "1 turn(s)",
                 "up to 64 new tokens", "greedy", "weights medusa=runs/x/heads", "min_confidence=0.1",
                 "Test CPU 9000", "3 torch thread(s)", "torch 2.9.0"):
        assert part in caption
    assert greedy.splitlines()[2].startswith("| method |")
    sampled = markdown(methods, synthetic_config(script, "flags_sampled"))
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


def test_smoke_run_of_the_script(tmp_path):
    proc = run_script(SCRIPTS / "mtbench_speedup.py", "--questions", "2", "--max-new-tokens", "8", "--methods", "ngram",
                      "--dtype", "fp32", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warming up hf" in proc.stderr and "warming up ngram" in proc.stderr
    caption = (tmp_path / "mtbench_speedup.md").read_text().splitlines()[0]
    assert "float32 on cpu; 2 MT-Bench questions, 1 turn(s), up to 8 new tokens" in caption
    png, svg = (tmp_path / "mtbench_speedup.png"), (tmp_path / "mtbench_speedup.svg")
    assert png.read_bytes()[:4] == b"\x89PNG" and b"<svg" in svg.read_bytes()[:1000]
    from PIL import Image

    assert Image.open(png).info["dpi"] == pytest.approx((300, 300), abs=0.01)
    data = json.loads((tmp_path / "mtbench_speedup.json").read_text())
    assert data["methods"].keys() == {"hf", "vanilla", "ngram"}  # the baseline and the reference are always run
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
