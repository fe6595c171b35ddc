"""scripts/throughput.py end to end on the real model (a few prompts and tokens): the JSON the issue specifies, the
table, the plot, and identity of our batched rows with our plain decoding in fp32."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.real


def test_throughput_script_writes_its_results(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts/throughput.py"), "--questions", "3", "--max-new-tokens", "10",
           "--batch-sizes", "1,2", "--methods", "ngram,eagle2+lookup", "--dtype", "fp32", "--threads", "2",
           "--out", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "throughput.json").read_text())
    assert list(result["methods"]) == ["hf", "vanilla", "ngram", "eagle2+lookup"]
    for name, rows in result["methods"].items():
        assert set(rows) == {"1", "2"}, name
        for row in rows.values():
            assert {"tokens_per_s", "latency_mean_s", "latency_p90_s", "tau", "identical"} <= set(row)
            assert row["tokens_per_s"] > 0 and row["latency_p90_s"] >= row["latency_mean_s"] * 0.5
            if name != "hf":  # fp32: every batched row equals our plain decoding, token for token
                assert row["identical"]["identical"] == row["identical"]["of"] == 3, (name, row["identical"])
                assert row["tau"] >= 1.0
    assert set(result["stops_paying"]) == {"ngram", "eagle2+lookup"}
    table = (tmp_path / "throughput.md").read_text()
    assert "3 MT-Bench first turns, 10 new tokens" in table and "| eagle2+lookup |" in table
    assert (tmp_path / "throughput.png").stat().st_size > 10_000 and (tmp_path / "throughput.svg").is_file()


def test_throughput_flags_are_checked():
    run = subprocess.run([sys.executable, str(ROOT / "scripts/throughput.py"), "--batch-sizes", "0,2"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "--batch-sizes must be positive" in run.stderr
    run = subprocess.run([sys.executable, str(ROOT / "scripts/throughput.py"), "--methods", "nope"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "method 'nope' is unknown" in run.stderr
