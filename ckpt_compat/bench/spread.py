"""Where a spread result's time went: its slowest round next to its fastest, by what the kernel
counted during each (`child._kernel_counters`). A cold read that waits on the disk shows voluntary
switches and pages read in; one that lost the CPU shows run-queue wait or steal; reclaim shows
pages scanned; a fault storm shows faults and system time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ckpt_compat.bench.runs import Run, short

SPREAD = 0.10  # the inter-quartile range over the median from which a result is listed
COLUMNS = (
    ("seconds", "ms", 1e3),
    ("user_s", "user ms", 1e3),
    ("system_s", "system ms", 1e3),
    ("runqueue_wait_s", "run-queue wait ms", 1e3),
    ("steal_s", "steal ms (all CPUs)", 1e3),
    ("voluntary_switches", "blocking waits", 1),
    ("involuntary_switches", "preempted", 1),
    ("minor_faults", "minor faults", 1),
    ("major_faults", "major faults", 1),
    ("pgpgin", "MiB read in (system)", 1 / 1024),
    ("pgscan", "pages scanned (system)", 1),
)


def _counters(r: dict[str, Any], kernel: dict[str, float]) -> dict[str, float]:
    out = {"seconds": r["seconds"], **kernel}
    out["pgscan"] = kernel.get("pgscan_kswapd", 0) + kernel.get("pgscan_direct", 0)
    return out


def spread_rounds(result: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]] | None:
    """(fastest, slowest) round's counters of a result whose times spread, or None."""
    seconds = result.get("child_seconds") or []
    kernels = result.get("kernel") or []
    if len(seconds) < 3 or len(kernels) != len(seconds) or not all(kernels):
        return None
    if (result["q3_s"] - result["q1_s"]) / result["median_s"] < SPREAD:
        return None
    rounds = sorted(zip(seconds, kernels, strict=True), key=lambda pair: pair[0])
    (fast, fast_kernel), (slow, slow_kernel) = rounds[0], rounds[-1]
    return _counters({"seconds": fast}, fast_kernel), _counters({"seconds": slow}, slow_kernel)


HEADER = ["result", "round", *(title for _, title, _ in COLUMNS)]
EXPLAINED = (
    f"Load results whose inter-quartile range is {SPREAD:.0%} of their median or more: their fastest "
    "and slowest rounds, with what the kernel counted during each (the child's own CPU, faults and "
    "switches; the system's steal time, pages read in and pages scanned for reclaim)."
)


def spread_rows(runs: Sequence[Run]) -> list[list[str]]:
    """Two rows (fastest, slowest round) per spread load result, `HEADER`'s columns."""
    rows = []
    for run in runs:
        for r in run.results:
            if r.get("kind") != "load" or (found := spread_rounds(r)) is None:
                continue
            label = f"{short(run.torch)} {r['format']}:{r['op']} {r['workload']} {r['dtype']} {r['cache']}"
            for name, counters in zip(("fastest", "slowest"), found, strict=True):
                cells = [f"{counters.get(key, float('nan')) * scale:,.0f}" for key, _, scale in COLUMNS]
                rows.append([label if name == "fastest" else "", name, *cells])
    return rows
