"""A real llama.cpp (llama-cpp-python built by scripts/setup_llamacpp.sh in .venv-llamacpp) as peer rows of
mtbench_speedup.py: both rows land in the JSON next to ours with tokens/s and a speedup over hf, plain llama.cpp makes
one forward per token, its prompt lookup accepts drafts, and the build is the one the setup script chose for this CPU
(native off, AMX off, AVX-512 where the CPU has it). Skipped, with the reason, where .venv-llamacpp does not exist
(CI); about a minute on 2 cores where it does (deselect: -m "not llamacpp")."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT, SCRIPTS, call_in_scripts, run_script

LLAMACPP_PYTHON = ROOT / ".venv-llamacpp" / "bin" / "python"
SKIP = f"no llama.cpp environment at {LLAMACPP_PYTHON.parents[1]}: bash scripts/setup_llamacpp.sh makes one"
pytestmark = [pytest.mark.llamacpp, pytest.mark.real, pytest.mark.skipif(not LLAMACPP_PYTHON.is_file(), reason=SKIP)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """mtbench_speedup.py with llama.cpp peers: 4 questions, 32 new tokens, our plain decoding beside them."""
    out = tmp_path_factory.mktemp("peers")
    proc = run_script(SCRIPTS / "mtbench_speedup.py", "--methods", "vanilla", "--questions", "4", "--max-new-tokens",
                      "32", "--peers", "llamacpp", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "mtbench_speedup.json").read_text()) | {"md": (out / "mtbench_speedup.md").read_text()}


def test_llamacpp_rows_sit_in_the_same_table(run):
    assert list(run["methods"]) == ["hf", "vanilla", "llamacpp", "llamacpp-lookup"]
    hf = run["methods"]["hf"]["tokens_per_s"]
    for name in ("llamacpp", "llamacpp-lookup"):
        m = run["methods"][name]
        assert m["tokens_per_s"] > 0 and m["speedup"] == pytest.approx(m["tokens_per_s"] / hf)
        assert [q["question_id"] for q in m["per_question_speedup"]] == run["config"]["question_ids"]
        assert m["peak_mem_mb"] > 0
        assert f"| {name} |" in run["md"]
    assert "*Peers*" in run["md"]


def test_plain_llamacpp_makes_one_forward_a_token_and_lookup_accepts_drafts(run):
    assert run["methods"]["llamacpp"]["tau"] == pytest.approx(1.0)
    assert run["methods"]["llamacpp-lookup"]["tau"] > 1.0


def test_the_build_is_the_one_chosen_for_this_cpu(run):
    info = run["config"]["peers"]["llamacpp"]
    here = call_in_scripts("llamacpp_flags", {"args": "' '.join(cmake_args(cpu_flags(open('/proc/cpuinfo').read())))",
                                              "avx512": "'-DGGML_AVX512=ON' in cmake_args(cpu_flags("
                                                        "open('/proc/cpuinfo').read()))"})
    assert here["args"]["value"] in info["build"] and "-DGGML_AMX_TILE=OFF" in info["build"]
    assert ("AVX512 = 1" in info["system_info"]) == here["avx512"]["value"], info["system_info"]
    assert info["model"].startswith("SmolLM2-135M-Instruct.Q4_1.gguf")
