"""The regression gate: is a run slower than a baseline, beyond its threshold and its own noise?

By default a result is compared by its **per-round ratio** to its limit (a raw read or write of
as many bytes, taken in each round's child right after the operation): when the machine's speed
differs, as a whole or from one second to the next, both move together and the ratio moves less.
(Schema 2 files took the limit in the same pass, minutes away: it shared no second-to-second
noise; each result's own noise band covers what is left.) ``absolute=True`` compares the median
times. Before any result, the limits themselves are compared: a run whose limits moved more
than the gate accepts ran on a changed machine (another disk, a host under load), and neither its
ratios nor its times say anything about the code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ckpt_compat.bench.runs import Run, key, limit_figures
from ckpt_compat.bench.stats import Summary

TIMED = ("load", "save", "sweep")  # kinds whose rounds are seconds, compared by the gate


@dataclass(frozen=True)
class Change:
    """One result in both runs: how much slower the current one is, and how noisy both are.
    ``measure``: "ratio" (per-round ratios to the limit, higher is faster) or "time" (seconds)."""

    key: tuple[str, ...]
    baseline: Summary
    current: Summary
    measure: str = "time"

    @property
    def slowdown(self) -> float:
        if self.measure == "ratio":
            return self.baseline.median / self.current.median - 1
        return self.current.median / self.baseline.median - 1

    @property
    def noise(self) -> float:
        """How far either median may be off, relative: the larger half-width of the two medians'
        notches, 1.57·IQR/√n (McGill, Tukey and Larsen, "Variations of Box Plots", 1978: medians
        whose notches do not overlap differ at about 95% confidence). A shift inside it is not a
        change. More rounds narrow it; the spread of the rounds alone would not."""
        return max(_notch(self.baseline), _notch(self.current))

    def regressed(self, max_slowdown: float) -> bool:
        return self.slowdown > max_slowdown and self.slowdown > self.noise

    def label(self) -> str:
        kind, fmt, op, workload, dtype, cache, size, extra = self.key
        if kind == "sweep":
            return f"sweep {fmt}:{op} [{extra} tensors]"
        return f"{kind} {fmt}:{op} [{workload} {dtype} {cache}, {size} MiB]"

    def figures(self) -> str:
        if self.measure == "ratio":
            return f"{self.baseline.median:.1%} -> {self.current.median:.1%} of the limit"
        return f"{self.baseline.median * 1e3:.1f} -> {self.current.median * 1e3:.1f} ms"


def _notch(summary: Summary) -> float:
    return 1.57 * summary.spread / math.sqrt(summary.rounds)


def _summary(result: dict[str, object], measure: str) -> Summary:
    values = result["pass_ratios"] if measure == "ratio" else result["child_seconds"]
    return Summary.of(values)  # type: ignore[arg-type]


def compare(baseline: Run, current: Run, *, absolute: bool = False) -> tuple[list[Change], list[tuple[str, ...]]]:
    """Changes for every timed result in both runs, and the keys only one of them has. A result
    without limits in either run (a per-tensor sweep, a schema 1 file) is compared on
    its times even by ratio."""
    before = {key(r): r for r in baseline.results if r.get("kind") in TIMED}
    after = {key(r): r for r in current.results if r.get("kind") in TIMED}
    changes = []
    for k in sorted(before.keys() & after.keys()):
        by_ratio = not absolute and bool(before[k].get("pass_ratios")) and bool(after[k].get("pass_ratios"))
        measure = "ratio" if by_ratio else "time"
        changes.append(Change(k, _summary(before[k], measure), _summary(after[k], measure), measure))
    return changes, sorted(before.keys() ^ after.keys())


@dataclass(frozen=True)
class LimitShift:
    """One limit in both runs (median GB/s over its rounds)."""

    name: str
    baseline: Summary
    current: Summary

    @property
    def change(self) -> float:
        return self.current.median / self.baseline.median - 1

    def line(self) -> str:
        return f"{self.name}: {self.baseline.median:.2f} -> {self.current.median:.2f} GB/s ({self.change:+.1%})"


def limit_shifts(baseline: Run, current: Run) -> list[LimitShift]:
    """How each limit moved between the runs (none for runs without them)."""
    before, after = limit_figures(baseline), limit_figures(current)
    return [LimitShift(name, before[name], after[name]) for name in sorted(before.keys() & after.keys())]
