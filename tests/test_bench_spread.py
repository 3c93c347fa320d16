"""The spread table: a spread result's fastest and slowest rounds, with their kernel counters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckpt_compat.bench import spread
from ckpt_compat.bench.runs import Run


def _result(seconds: list[float], waits: list[int]) -> dict[str, Any]:
    ordered = sorted(seconds)
    return {
        "kind": "load",
        "format": "torch_zip",
        "op": "load",
        "workload": "transformer",
        "dtype": "float32",
        "cache": "cold",
        "child_seconds": seconds,
        "median_s": ordered[len(ordered) // 2],
        "q1_s": ordered[1],
        "q3_s": ordered[-2],
        "kernel": [{"voluntary_switches": w, "system_s": 0.01, "pgscan_kswapd": 5, "pgscan_direct": 2} for w in waits],
    }


def test_a_spread_result_shows_its_fastest_and_slowest_round() -> None:
    spread_out = _result([0.2, 0.9, 0.25, 0.3, 0.22], [10, 400, 12, 15, 11])
    steady = _result([0.2, 0.2, 0.2, 0.2, 0.2], [10] * 5)
    rows = spread.spread_rows([Run(Path("x.json"), "2.13.0", "m", "", [spread_out, steady])])
    assert len(rows) == 2  # the steady result is not listed
    fastest, slowest = rows
    column = spread.HEADER.index("blocking waits")
    assert fastest[:3] == ["2.13.0 torch_zip:load transformer float32 cold", "fastest", "200"]
    assert slowest[1:3] == ["slowest", "900"] and slowest[column] == "400" and fastest[column] == "10"
    assert slowest[spread.HEADER.index("pages scanned (system)")] == "7"


def test_results_without_counters_or_rounds_are_left_out() -> None:
    no_counters = {**_result([0.2, 0.9, 0.3], [1, 2, 3]), "kernel": []}
    two_rounds = _result([0.2, 0.9], [1, 2])
    assert spread.spread_rows([Run(Path("x.json"), "2.13.0", "m", "", [no_counters, two_rounds])]) == []
