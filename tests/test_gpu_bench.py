"""The GPU benchmark's smoke test on CPU (--quick): every part runs end to end and writes a coherent report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import specdec  # noqa: F401  (first: from the repo root, transformers imported before it trips on kernels/)
from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bench.py"


@pytest.mark.real
def test_quick_run_writes_every_part(tmp_path):
    bench = load_script(SCRIPT)
    result = bench.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "cpu.json").read_text())
    assert saved["device"] == "cpu" and set(saved) >= {"mtbench", "bandwidth", "curve"}
    methods = result["mtbench"]["methods"]
    assert set(methods) == {"hf", "vanilla", "ngram"} and all(m["tokens_per_s"] > 0 for m in methods.values())
    b = saved["bandwidth"]
    assert b["verify"] == "eager" and b["steps"] > 0 and b["card_peak_GBps"] is None
    assert b["achieved_GBps"] == pytest.approx(b["weight_bytes"] * b["steps_per_s"] / 1e9)
    per_param = {"float32": 4, "bfloat16": 2}[b["dtype"]]  # auto: bf16 on CPUs with native bf16, else fp32
    assert 125e6 * per_param < b["weight_bytes"] < 150e6 * per_param, "SmolLM2-135M reads ~134.5M weights per step"
    for kind in ("fp32", "int8"):
        rows = saved["curve"][kind]
        assert [r["nodes"] for r in rows] == [1, 4, 16] and rows[0]["ratio_vs_k1"] == 1.0
        assert all(r["ms"] > 0 for r in rows)
    report = (tmp_path / "cpu.md").read_text()
    assert "| vanilla |" in report and "GB/s" in report and "| 16 |" in report


def test_card_bandwidth_and_weight_bytes(tiny_models):
    bench = load_script(SCRIPT)
    assert bench.card_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert bench.card_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert bench.card_bandwidth("NVIDIA H200") == 4.8e12
    assert bench.card_bandwidth("Radeon 9000") is None
    model = tiny_models["llama"].load()  # untied: the embedding table is not read in full per step
    everything = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    table = model.tok_embeddings.weight
    assert bench.weight_bytes(model) == everything - table.numel() * table.element_size()
