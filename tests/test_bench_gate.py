"""The gate's judgement on summaries (the real runs are in test_benchreport and benchmarks/test_gate)."""

from __future__ import annotations

import pytest

from ckpt_compat.bench.gate import Change
from ckpt_compat.bench.stats import Summary

KEY = ("load", "torch_zip", "load", "transformer", "float32", "warm", "256", "4")


def test_the_noise_band_is_the_medians_notch_and_narrows_with_rounds() -> None:
    few = Summary(1.0, 0.9, 1.1, 4)  # IQR 20% of the median
    many = Summary(1.0, 0.9, 1.1, 16)
    assert Change(KEY, few, few).noise == pytest.approx(1.57 * 0.2 / 2)
    assert Change(KEY, many, many).noise == pytest.approx(1.57 * 0.2 / 4)
    slower = Summary(1.2, 1.08, 1.32, 16)  # 20% slower, the same relative spread
    assert Change(KEY, many, slower).slowdown == pytest.approx(0.2)
    assert Change(KEY, many, slower).regressed(0.10)  # 20% against a notch of 7.9%
    assert not Change(KEY, Summary(1.0, 0.5, 1.5, 4), slower).regressed(0.10)  # against one of 79%
    assert not Change(KEY, many, slower).regressed(0.25)  # within the threshold


def test_by_ratio_a_lower_ratio_is_the_slowdown() -> None:
    before, after = Summary(0.5, 0.49, 0.51, 9), Summary(0.4, 0.39, 0.41, 9)
    change = Change(KEY, before, after, "ratio")
    assert change.slowdown == pytest.approx(0.25) and change.regressed(0.10)
    assert "50.0% -> 40.0% of the limit" in change.figures()
