"""One benchmark result as it is stored (pytest-benchmark's ``extra_info``): the schema lives here.

Schema 2 adds the limits: every round of a load or save carries the limit round it is judged
against (``limit_rounds``), and the result its per-round ratios (``pass_ratios``: throughput / the
limit's throughput) with their median and quartiles. In schema 2 the limit round was taken in a
child of its own in the same pass of the schedule; in schema 3 it is taken in the round's own
child, right after the operation (``limit_taken``). Schema 1 files (no limits) are still read; the
gate compares them on absolute times only.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ckpt_compat.bench.child import allocator_settings
from ckpt_compat.bench.limits import Limits, limit_for
from ckpt_compat.bench.ops import Op
from ckpt_compat.bench.stats import GB, Summary, throughput_ratio

SCHEMA = "ckpt-compat/bench/3"
READABLE = ("ckpt-compat/bench/1", "ckpt-compat/bench/2", SCHEMA)
LIMIT_TAKEN = "in the round's child, right after the operation"  # schema 2: "in the same pass"
RENAMED_FORMATS = {"safetensors": "safetensors_file", "torchscript": "torchscript_script"}  # schema 1: own names


def upgrade(info: dict[str, Any]) -> dict[str, Any]:
    """A stored result in the current vocabulary (schema 1's format names are the registry's now)."""
    if info.get("format") in RENAMED_FORMATS:
        info = {**info, "format": RENAMED_FORMATS[info["format"]]}
    return info


def pass_ratios(rounds: Sequence[Mapping[str, Any]], limit_rounds: Sequence[Mapping[str, Any]]) -> list[float]:
    return [
        throughput_ratio(r["bytes"], r["seconds"], limit["bytes"], limit["seconds"])
        for r, limit in zip(rounds, limit_rounds, strict=True)
    ]


def result_info(
    op: Op,
    rounds: list[dict[str, Any]],
    *,
    workload: str,
    dtype: str,
    cache: str,
    limits: Limits,
    size_mib: int,
    limit_rounds: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything about one benchmark result: the rounds as the child measured them, each with its
    limit round, so ``ckpt-compat bench-report`` can recompute any figure."""
    summary = Summary.of(r["seconds"] for r in rounds)
    ratios = pass_ratios(rounds, limit_rounds)
    ratio = Summary.of(ratios)
    size = rounds[0]["bytes"]
    gbps = size / GB / summary.median
    limit_name, limit = limits.for_op(op, cache == "cold")
    limit_op, limit_cache = limit_for(op, cache)
    peak = max(r["peak_rss_kib"] - r["rss_before_kib"] for r in rounds)
    return {
        "schema": SCHEMA,
        "kind": "save" if op.saves else "load",
        "format": op.format,
        "op": op.name,
        "description": op.description,
        "complete": op.complete,
        "workload": workload,
        "dtype": dtype,
        "cache": cache,
        "size_mib": size_mib,
        "bytes": size,
        "tensors": rounds[0]["tensors"],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "child_seconds": [r["seconds"] for r in rounds],
        "median_s": summary.median,
        "q1_s": summary.q1,
        "q3_s": summary.q3,
        "gbps": gbps,
        "limit": limit_name,
        "ratio_to_limit": gbps / limit,
        "limit_op": limit_op,
        "limit_cache": limit_cache,
        "limit_taken": LIMIT_TAKEN,
        "limit_rounds": [{"seconds": r["seconds"], "bytes": r["bytes"]} for r in limit_rounds],
        "pass_ratios": ratios,
        "ratio_median": ratio.median,
        "ratio_q1": ratio.q1,
        "ratio_q3": ratio.q3,
        "peak_over_op_mib": peak / 1024,
        "peak_rss_mib": max(r["peak_rss_kib"] for r in rounds) / 1024,
        "resident_before": [r.get("resident_before") for r in rounds],
        "kernel": [r.get("kernel", {}) for r in rounds],
        "limit_kernel": [r.get("kernel", {}) for r in limit_rounds],
        "limits_gbps": limits.to_json(),
        **allocator_settings(),
    }
