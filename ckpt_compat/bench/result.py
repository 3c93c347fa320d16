"""One benchmark result as it is stored (pytest-benchmark's ``extra_info``): the schema lives here.

Schema 2 adds the limits: every round of a load or save carries the limit round it is judged
against (``limit_rounds``), and the result its per-round ratios (``pass_ratios``: throughput / the
limit's throughput) with their median and quartiles. In schema 2 the limit round was taken in a
child of its own in the same pass of the schedule; in schema 3 it is taken in the round's own
child, right after the operation (``limit_taken``). Schema 1 files (no limits) are still read; the
gate compares them on absolute times only.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ckpt_compat import versions
from ckpt_compat.bench.child import allocator_settings
from ckpt_compat.bench.limits import Limits, limit_for
from ckpt_compat.bench.ops import Op
from ckpt_compat.bench.stats import GB, Summary, throughput_ratio
from ckpt_compat.results import check_name, is_name

SCHEMA = "ckpt-compat/bench/3"
READABLE = ("ckpt-compat/bench/1", "ckpt-compat/bench/2", SCHEMA)
LIMIT_TAKEN = "in the round's child, right after the operation"  # schema 2: "in the same pass"
RENAMED_FORMATS = {"safetensors": "safetensors_file", "torchscript": "torchscript_script"}  # schema 1: own names


def upgrade(info: dict[str, Any]) -> dict[str, Any]:
    """A stored result in the current vocabulary (schema 1's format names are the registry's now)."""
    if isinstance(info.get("format"), str) and info["format"] in RENAMED_FORMATS:
        info = {**info, "format": RENAMED_FORMATS[info["format"]]}
    return info


# The fields `bench-report` and `bench-gate` read, per kind, as `check` holds them to: a stored run
# may come from another machine (a CI artifact), and a field of another type was an internal error.
_NAMES = ("format", "op", "workload")
_TIMED = {
    **dict.fromkeys((*_NAMES, "dtype", "cache", "limit"), "name"),
    **dict.fromkeys(("size_mib", "bytes", "tensors"), "count"),
    "child_seconds": "seconds",
    "complete": "flag",
    **dict.fromkeys(("median_s", "q1_s", "q3_s", "gbps", "ratio_to_limit"), "positive"),
    **dict.fromkeys(("peak_over_op_mib", "peak_rss_mib"), "number"),
    "limits_gbps": "figures",
}
FIELDS: dict[str, dict[str, str]] = {
    "harness": {"bytes": "count", "gbps_by_step": "figures", "limits_gbps": "figures"},
    "fresh_check": {
        **dict.fromkeys(_NAMES, "name"),
        "bytes": "count",
        **dict.fromkeys(("fresh_seconds", "same_process_seconds"), "seconds"),
        **dict.fromkeys(("fresh_gbps", "same_process_gbps"), "positive"),
    },
    "sweep": {**dict.fromkeys(_NAMES, "name"), "tensors": "count", "bytes": "count", "child_seconds": "seconds"},
    "load": _TIMED,
    "save": _TIMED,
}
# Present from schema 2 on (or only in some runs): checked where present.
OPTIONAL = {
    **dict.fromkeys(("limit_op", "limit_cache"), "name"),
    **dict.fromkeys(("pass_ratios", "resident_before"), "numbers"),
    **dict.fromkeys(("ratio_median", "ratio_q1", "ratio_q3"), "number"),
    "limit_rounds": "rounds",
    **dict.fromkeys(("kernel", "limit_kernel"), "counters"),
    "schedule": "figures",
}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


def _numbers(v: Any, holds: Callable[[Any], bool] = _number) -> bool:
    return isinstance(v, list) and all(holds(x) for x in v)


def _figures(v: Any) -> bool:
    return isinstance(v, dict) and all(_number(x) for x in v.values())


def _round(v: Any) -> bool:
    return isinstance(v, dict) and _positive(v.get("seconds")) and _number(v.get("bytes"))


_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "name": ("a name (printable, none of |`<>)", is_name),
    "count": ("a whole number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "flag": ("true or false", lambda v: isinstance(v, bool)),
    "number": ("a finite number", _number),
    "positive": ("a number > 0", _positive),
    "seconds": ("a non-empty list of seconds > 0", lambda v: bool(v) and _numbers(v, _positive)),
    "numbers": ("a list of numbers or nulls", lambda v: _numbers(v, lambda x: x is None or _number(x))),
    "figures": ("an object of numbers", _figures),
    "counters": ("a list of objects of numbers", lambda v: _numbers(v, _figures)),
    "rounds": ("a list of {seconds > 0, bytes}", lambda v: _numbers(v, _round)),
}


def check(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` (a stored result) if every field the reports read is of its type; else ValueError
    naming the field and what it must be."""
    kind = info.get("kind")
    if not isinstance(kind, str) or kind not in FIELDS:
        raise ValueError(f"kind must be one of {', '.join(FIELDS)}, got {kind!r:.60}")
    versions.parse(check_name("torch", info.get("torch")))
    expected = {**FIELDS[kind], **{k: t for k, t in OPTIONAL.items() if k in info}}
    for name, type_name in expected.items():
        what, holds = _TYPES[type_name]
        if name not in info or not holds(info[name]):
            got = f"{info[name]!r:.60}" if name in info else "nothing"
            raise ValueError(f"{kind} result's {name} must be {what}, got {got}")
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
