"""The GPU benchmark's smoke test on CPU (--quick): every part runs end to end and writes a coherent report; and
scripts/gpu_run.sh's dry run: every stage of the one-command GPU window on CPU, leaving every file it must."""
from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import CONTEXT, SCRIPTS, call_in_scripts, run_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = SCRIPTS / "gpu_bench.py"
RUN = SCRIPTS / "gpu_run.sh"
STAGES = ["machine", "bench-fixed", "backbone", "bench-backbone", "distill-heldout", "distill-train", "train", "eval"]


@pytest.mark.real
def test_quick_run_writes_every_part(tmp_path):
    proc = run_script(SCRIPT, "--quick", "--device", "cpu", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = result = json.loads((tmp_path / "cpu.json").read_text())
    assert saved["device"] == "cpu" and saved["parts"] == ["machine", "kernels", "curve", "bandwidth", "mtbench"]
    assert saved["machine"]["copy"]["GBps_read_plus_write"] > 0 and saved["machine"]["torch"]
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert "skipped" in saved["kernels"]  # CPU without the interpreter: nothing to compile the kernels for
    methods = result["mtbench"]["methods"]
    assert set(methods) == {"hf", "vanilla", "ngram"} and all(m["tokens_per_s"] > 0 for m in methods.values())
    assert result["mtbench"]["config"]["questions_done"] == 2
    b = saved["bandwidth"]
    assert b["verify"] == "eager" and b["steps"] > 0 and b["card_peak_GBps"] is None
    assert b["achieved_GBps"] == pytest.approx(b["weight_bytes"] * b["steps_per_s"] / 1e9)
    per_param = {"float32": 4, "bfloat16": 2}[b["dtype"]]  # auto: bf16 on CPUs with native bf16, else fp32
    assert 125e6 * per_param < b["weight_bytes"] < 150e6 * per_param, "SmolLM2-135M reads ~134.5M weights per step"
    for kind in ("fp32", "int8"):
        curve = saved["curve"]["tiny"][kind]
        rows = curve["rows"]
        assert [r["nodes"] for r in rows] == [1, 4, 16] and rows[0]["ratio_vs_k1"] == 1.0
        assert all(r["ms"] > 0 for r in rows)
        assert curve["k1_GBps"] == pytest.approx(curve["weight_bytes"] / rows[0]["ms"] / 1e6)
    report = (tmp_path / "cpu.md").read_text()
    assert "| vanilla |" in report and "GB/s" in report and "| 16 |" in report


def test_card_bandwidth_and_weight_bytes(tiny_models):
    cards = ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200", "Radeon 9000")
    tiny = tiny_models["llama"]  # untied: the embedding table is not read in full per step
    setup = (f"from specdec.backbone import load_transformer\nmodel = load_transformer({str(tiny.path)!r})\n"
             f"model.setup_cache({CONTEXT})")
    got = call_in_scripts("gpu_bench", {"cards": f"[card_bandwidth(c) for c in {cards!r}]",
                                        "bytes": "weight_bytes(model)"}, setup)
    assert got["cards"]["value"] == [3.35e12, 2.0e12, 4.8e12, None]
    model = tiny.load()
    everything = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    table = model.tok_embeddings.weight
    assert got["bytes"]["value"] == everything - table.numel() * table.element_size()


def test_default_methods_follow_the_shipped_eagle3_draft(tmp_path):
    draft = tmp_path / "smollm2-135m-instruct" / "eagle3"
    got = call_in_scripts("gpu_bench", {"without": "[default_methods(), METHODS]",
                                        "ship": f"Path({str(draft)!r}).mkdir(parents=True)",
                                        "draft": f"Path({str(draft / 'config.json')!r}).write_text('{{}}')",
                                        "with": "default_methods()"},
                          setup=f"SHIPPED = Path({str(tmp_path)!r})")
    without, methods = got["without"]["value"]
    assert without == methods and "eagle3" not in without
    assert got["with"]["value"].endswith(",eagle3,eagle3+lookup")


def run_gpu_run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}  # $OUT would become the bundle
    return subprocess.run(["bash", str(RUN), *args], env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.real
def test_gpu_run_dry_run_leaves_every_result(tmp_path):
    """--prepare, then --dry-run: every stage ok on CPU, their files in the results folder, and a bundle the device
    tool would return whole (at most 8 files of at most 16 MiB) that holds the whole results folder."""
    carry, res, bundle = tmp_path / "carry", tmp_path / "results", tmp_path / "bundle"
    prep = run_gpu_run("--prepare", "--carry", str(carry), "--train-prompts", "8", "--heldout-prompts", "2",
                       timeout=300)
    assert prep.returncode == 0, prep.stdout[-2000:] + prep.stderr[-2000:]
    assert (carry / "site" / "mtbench_evaluator" / "__init__.py").is_file() and (carry / "site" / "gguf").is_dir()
    prompts = json.loads((carry / "sharegpt.json").read_text())
    assert len(prompts) == 10 and all(len(p["conversations"]) == 1 for p in prompts)

    run = run_gpu_run("--dry-run", "--carry", str(carry), "--out", str(res), "--bundle", str(bundle), "--work",
                     str(tmp_path / "work"), timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    stages = [line.split("\t") for line in (res / "stages.tsv").read_text().splitlines()]
    assert [s[0] for s in stages] == STAGES and all(s[1] == "ok" for s in stages), stages

    machine = json.loads((res / "machine.json").read_text())["machine"]
    assert machine["copy"]["GBps_read_plus_write"] > 0 and machine["torch"] and machine["transformers"]
    assert machine["specdec"] == str(tmp_path / "work" / "pyshim" / "specdec")  # the link tree a GPU machine needs
    bench = json.loads((res / "bench.json").read_text())
    assert bench["parts"] == ["kernels", "curve", "bandwidth", "mtbench"]
    assert bench["kernels"]["interpreted"] and bench["kernels"]["all_equal"]
    assert set(bench["mtbench"]["methods"]) == {"hf", "vanilla", "ngram"}
    assert "## MT-Bench" in (res / "bench.md").read_text()

    draft = res / "eagle3"
    assert json.loads((draft / "config.json").read_text())["kind"] == "eagle3"
    assert (draft / "model.safetensors").stat().st_size > 1e6
    accuracy = json.loads((res / "draft_accuracy.json").read_text())["drafts"]
    shipped = (ROOT / "specdec" / "weights" / "smollm2-135m-instruct" / "eagle3" / "config.json").is_file()
    assert set(accuracy) == {"eagle", str(draft)} | ({"eagle3"} if shipped else set())
    assert all(len(a["top1"]) == 3 for a in accuracy.values())

    files = sorted(bundle.iterdir())
    assert len(files) <= 8 and all(f.is_file() and f.stat().st_size <= 16 * 2**20 for f in files), files
    assert (bundle / "summary.md").read_text() == (res / "summary.md").read_text()
    parts = b"".join(f.read_bytes() for f in files if f.name.startswith("results.tar."))
    with tarfile.open(fileobj=io.BytesIO(parts)) as tar:
        names = set(tar.getnames())
    assert {"./machine.json", "./bench.json", "./eagle3/model.safetensors", "./draft_accuracy.json",
            "./mtbench/mtbench_speedup.json", "./logs/train.log"} <= names


def test_gpu_run_skips_what_the_budget_cannot_hold(tmp_path):
    """A budget too short for any stage: each is skipped with its reason, and the summary still lands."""
    run = run_gpu_run("--dry-run", "--minutes", "0.2", "--out", str(tmp_path / "r"), "--work", str(tmp_path / "w"),
                     timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    stages = [line.split("\t") for line in (tmp_path / "r" / "stages.tsv").read_text().splitlines()]
    assert [s[0] for s in stages] == STAGES and all(s[1].startswith("skipped") for s in stages), stages
    assert "| machine | skipped: no time left" in (tmp_path / "r" / "summary.md").read_text()


def test_gpu_run_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    run = run_gpu_run("--dry-run", "--out", str(tmp_path), "--work", str(tmp_path / "w"), timeout=60)
    assert run.returncode == 2 and "not an earlier gpu_run results folder" in run.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me"
