"""Machine kinds and the verify-cost table that every drafter's defaults key on."""
from __future__ import annotations

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
