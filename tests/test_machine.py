"""Machine kinds and the verify-cost table that every drafter's defaults key on."""
from __future__ import annotations

import json

import pytest
import torch

from specdec.drafters.lookahead import LookaheadConfig
from specdec.drafters.ngram import NgramConfig
from specdec.machine import DRAFTER_DEFAULTS, KINDS, VERIFY_COST, cost_curve, machine_kind, verify_cost_curve


def test_kind_follows_device_and_dtype():
    assert machine_kind(torch.zeros(2)) == "cpu-fp32"
    assert machine_kind(torch.zeros(2, dtype=torch.bfloat16)) == "cpu-bf16"
    assert machine_kind(torch.zeros(2, dtype=torch.float16)) == "cpu-fp32"  # no native fp16 GEMM path on x86 CPUs


def test_every_kind_has_drafter_defaults():
    assert set(DRAFTER_DEFAULTS) == set(KINDS)
    assert set(VERIFY_COST) == set(KINDS) - {"cuda"}  # GPU verification is flat: nothing cut
    assert LookaheadConfig.for_machine("cuda").ngram == 5
    assert LookaheadConfig.for_machine("cpu-fp32") == LookaheadConfig.for_machine("cpu-bf16")  # packed: alike
    assert NgramConfig.for_machine("cpu-fp32") == NgramConfig() and NgramConfig.for_machine("cpu-bf16").min_ngram == 1


def test_cost_curve_interpolates_and_extends_the_last_slope():
    assert cost_curve({1: 1.0, 4: 1.6, 8: 2.0}, 10).tolist() == pytest.approx(
        [1.0, 1.2, 1.4, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2])
    # two rows verified together: k nodes each cost what 2k nodes cost, relative to 2 nodes
    assert cost_curve({1: 1.0, 4: 1.6, 8: 2.0}, 4, rows=2).tolist() == pytest.approx(
        [1.0, 1.6 / 1.2, 1.8 / 1.2, 2.0 / 1.2])
    for points in VERIFY_COST.values():
        assert points[1] == 1.0 and cost_curve(points, 64).shape == (64,)
    assert torch.equal(verify_cost_curve("cpu-bf16", 20, "cpu"), cost_curve(VERIFY_COST["cpu-bf16"], 20))
    assert torch.equal(verify_cost_curve("cuda", 5, "cpu", {1: 1.0, 4: 2.0}), cost_curve({1: 1.0, 4: 2.0}, 5))
    assert verify_cost_curve("cuda", 20, "cpu") is None and verify_cost_curve("cpu-fp32", 20, "cpu", {}) is None


def test_ngram_drafter_takes_the_machine_kinds_defaults_unless_given_a_config(tiny_models):
    from specdec.decode import decode
    from specdec.drafters import NgramDrafter

    model = tiny_models["qwen2"].load()
    default, given = NgramDrafter(), NgramDrafter(NgramConfig(min_ngram=3))
    for drafter in (default, given):
        decode(model, [5, 6, 7, 5, 6], drafter, max_new_tokens=3)
    assert default.config == NgramConfig.for_machine("cpu-fp32") and given.config.min_ngram == 3


@pytest.mark.parametrize("bad", [dict(min_ngram=0), dict(min_ngram=4), dict(draft_len=0), dict(max_nodes=0)])
def test_ngram_config_validation(bad):
    with pytest.raises(ValueError):
        NgramConfig(**bad)


def test_calibrate_measures_once_caches_per_machine_and_feeds_the_drafters(tiny_models, tmp_path, monkeypatch):
    from specdec import machine
    from specdec.backbone import load_transformer
    from specdec.drafters import eagle2
    from test_eagle import random_draft

    model = tiny_models["llama"].load()
    points = machine.calibrate(model, cache_dir=tmp_path)
    assert sorted(points) == list(machine.CALIBRATION_NODES) and points[1] == 1.0
    assert all(v > 0 for v in points.values()) and model.length == 0
    assert machine.verify_points(model) == points and len(list(tmp_path.iterdir())) == 1
    drafter = eagle2(model, random_draft(model), depth=3, top_k=3, total_tokens=8)
    assert torch.equal(drafter.cost, cost_curve(points, 8))

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured although a curve for this machine was cached")

    fresh = tiny_models["llama"].load()
    with monkeypatch.context() as m:
        m.setattr(machine, "measure_verify_cost", no_measuring)
        assert machine.calibrate(fresh, cache_dir=tmp_path) == points
    remeasured = {k: 1.0 + k for k in machine.CALIBRATION_NODES}
    monkeypatch.setattr(machine, "measure_verify_cost", lambda step, model: remeasured)
    assert machine.calibrate(fresh, cache_dir=tmp_path, refresh=True) == remeasured
    assert machine.calibrate(fresh, cache_dir=tmp_path) == remeasured  # the refresh replaced the cached curve
    # another CPU, another thread count or another dtype never reads this one's curve
    here = machine.calibration_key(model, "eager")
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert machine.calibration_key(model, "eager") != here
    finally:
        torch.set_num_threads(threads)
    assert machine.calibration_key(load_transformer(tiny_models["llama"].path, torch.bfloat16), "eager") != here
    assert machine.calibration_key(model, "compile") != here
    monkeypatch.setattr(machine, "cpu_identity", lambda: {"cpu": "Another CPU", "flags": "0" * 16})
    assert machine.calibration_key(model, "eager") != here
    monkeypatch.setattr(machine, "measure_verify_cost", lambda step, model: points)
    assert machine.calibrate(fresh, cache_dir=tmp_path) == points and len(list(tmp_path.iterdir())) == 2


def test_calibrate_measures_over_a_corrupt_cache_file(tiny_models, tmp_path):
    from specdec import machine

    model = tiny_models["qwen2"].load()
    machine.calibrate(model, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_text("{not json")
    assert sorted(machine.calibrate(model, cache_dir=tmp_path)) == list(machine.CALIBRATION_NODES)
    assert json.loads(path.read_text())["key"] == machine.calibration_key(model, "eager")
