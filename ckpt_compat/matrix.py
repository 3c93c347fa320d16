"""The cross-version matrix: per format, producer release x consumer release, and what in it
changes with versions.

Every cell is judged (`expectations.judge`) and then set against the same cell of a same-release
round trip: the consumer's own (its corpus loaded by itself) where there is one, else the
producer's. A cell whose outcome and explaining known issues are the same there is
version-independent: the issue is a limitation, listed once. Anything else is what a release
manager reads: a cross-version break (loud: an error), a silent change (the load works, values or
keys differ), an unsafe load, or a cell no known issue explains.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ckpt_compat import versions
from ckpt_compat.expectations import Expectation, Judgement
from ckpt_compat.results import DIFFERENCE_OUTCOMES, CellResult, Outcome


class Status(enum.IntEnum):
    """What a cell (and, worst first, a producer x consumer pair) shows. Ordered by severity."""

    SAME = 0  # as in a same-release round trip
    UNAVAILABLE = 1  # the consumer cannot read this format at all (no round trip of its own either)
    DIGESTS_ONLY = 2  # ok, but fewer checks than its own round trip: the consumer cannot rebuild the model
    BREAK = 3  # a cross-version break that raises, explained by a known issue
    SILENT = 4  # a cross-version change the load does not raise for, explained by a known issue
    UNSAFE = 5  # the load ran code although the options asked for a safe loader
    UNEXPLAINED = 6  # no known issue explains it

    @property
    def symbol(self) -> str:
        return _SYMBOLS[self]


_SYMBOLS = {
    Status.SAME: "✅",
    Status.UNAVAILABLE: "—",
    Status.DIGESTS_ONLY: "☑️",
    Status.BREAK: "❌",
    Status.SILENT: "‼️",
    Status.UNSAFE: "‼️",
    Status.UNEXPLAINED: "‼️",
}
# The error type `verify` gives a cell whose format the consumer cannot read at all.
UNAVAILABLE = "Unavailable"
SECURITY_SPEC = "security"  # the spec id of `ckpt-compat security` cells (security.SPEC_ID)


def finding_status(e: Expectation) -> Status:
    """What a known issue amounts to where it changes with versions: an unsafe load, a silent
    change (the load works, values or keys differ), or a break that raises."""
    if Outcome.UNSAFE in e.outcomes:
        return Status.UNSAFE
    return Status.SILENT if e.outcomes <= DIFFERENCE_OUTCOMES else Status.BREAK


def counts(results: Iterable[CellResult]) -> dict[str, dict[str, int]]:
    """Outcome counts per format variant, for tables and the report summary."""
    table: dict[str, Counter[str]] = {}
    for r in results:
        table.setdefault(r.cell.variant, Counter())[r.outcome.value] += 1
    return {variant: dict(c) for variant, c in sorted(table.items())}


def _key(r: CellResult) -> tuple[Any, ...]:
    """What makes two cells the same check, whichever releases ran it."""
    c = r.cell
    return (
        c.spec_id,
        c.format,
        tuple(sorted((k, str(v)) for k, v in c.options.items())),
        c.producer.device,
        c.consumer.device,
    )


def _signature(j: Judgement) -> tuple[str, tuple[str, ...]]:
    return (j.result.outcome.value, tuple(sorted(j.causes)))


@dataclass
class Pair:
    """All cells of one format from one producer release to one consumer release."""

    statuses: list[Status] = field(default_factory=list)
    judgements: list[Judgement] = field(default_factory=list)
    findings: Counter[str] = field(default_factory=Counter)  # known issues that change with versions here

    @property
    def status(self) -> Status:
        return max(self.statuses, default=Status.SAME)

    def causes(self) -> list[str]:
        """The known issues that make this pair differ from the releases' own round trips,
        most cells first."""
        return [i for i, _ in self.findings.most_common()]

    def count(self, status: Status) -> int:
        return sum(s is status for s in self.statuses)


@dataclass
class Use:
    """Where one known issue was seen: its cells, by (format variant) and by release pair."""

    expectation: Expectation
    cells: int = 0
    variants: set[str] = field(default_factory=set)
    pairs: set[tuple[str, str]] = field(default_factory=set)

    def add(self, cell: Any, pair: tuple[str, str]) -> None:
        self.cells += 1
        self.variants.add(cell.variant)
        self.pairs.add(pair)


@dataclass
class ReleaseView:
    grid: dict[str, dict[tuple[str, str], Pair]] = field(default_factory=dict)
    limitations: dict[str, Use] = field(default_factory=dict)  # known issues that hold in a release's own round trip
    findings: dict[str, Use] = field(default_factory=dict)  # cross-version breaks, silent changes, unsafe loads
    unexplained: list[Judgement] = field(default_factory=list)
    unsafe: list[Judgement] = field(default_factory=list)
    # `ckpt-compat security` cells: payload class -> release -> (status, judgement). A release
    # loads its own payloads, so these are a table of releases, not a producer x consumer grid.
    hostile: dict[str, dict[str, tuple[Status, Judgement]]] = field(default_factory=dict)

    def producers(self, fmt: str) -> list[str]:
        return sorted({p for p, _ in self.grid[fmt]}, key=versions.key)

    def consumers(self, fmt: str) -> list[str]:
        return sorted({c for _, c in self.grid[fmt]}, key=versions.key)

    def releases(self) -> list[str]:
        found = {r for g in self.grid.values() for pair in g for r in pair}
        found |= {r for by_release in self.hostile.values() for r in by_release}
        return sorted(found, key=versions.key)

    def worst(self, fmt: str) -> Status:
        return max((p.status for p in self.grid[fmt].values()), default=Status.SAME)


def release_view(judgements: Iterable[Judgement]) -> ReleaseView:
    # Each cell's release pair and check key, worked out once.
    judged = [
        (
            j,
            (versions.release(j.result.cell.producer.torch), versions.release(j.result.cell.consumer.torch)),
            _key(j.result),
        )
        for j in judgements
    ]
    own = {(pair[1], key): j for j, pair, key in judged if pair[0] == pair[1]}
    view = ReleaseView()
    for j, pair, key in judged:
        cell = j.result.cell
        baseline = None if pair[0] == pair[1] else (own.get((pair[1], key)) or own.get((pair[0], key)))
        status = _status(j, pair, baseline)
        if cell.spec_id == SECURITY_SPEC:
            view.hostile.setdefault(cell.format, {})[pair[1]] = (status, j)
            if status is Status.UNEXPLAINED:
                view.unexplained.append(j)
            elif status is Status.UNSAFE:
                view.unsafe.append(j)
            continue
        entry = view.grid.setdefault(cell.format, {}).setdefault(pair, Pair())
        entry.statuses.append(status)
        entry.judgements.append(j)
        if status is Status.UNEXPLAINED:
            view.unexplained.append(j)
            continue
        if status is Status.UNSAFE:
            view.unsafe.append(j)
        for e in {e.id: e for e in j.by if e is not None}.values():
            # A known issue its own round trip shows too holds in every release it is seen in: a
            # limitation, listed once. One that differs from it is what changes with versions.
            changes = finding_status(e) is Status.UNSAFE or (
                pair[0] != pair[1] and status >= Status.BREAK and (baseline is None or e.id not in baseline.causes)
            )
            (view.findings if changes else view.limitations).setdefault(e.id, Use(e)).add(cell, pair)
            if changes:
                entry.findings[e.id] += 1
    return view


def _status(j: Judgement, pair: tuple[str, str], baseline: Judgement | None) -> Status:
    r = j.result
    if not j.explained:
        return Status.UNEXPLAINED
    if j.unsafe:
        return Status.UNSAFE
    if r.error is not None and r.error.type == UNAVAILABLE:
        return Status.UNAVAILABLE
    if pair[0] == pair[1]:
        return Status.SAME
    if baseline is not None and not r.not_ok and set(baseline.result.checks) - set(r.checks):
        return Status.DIGESTS_ONLY  # ok, but on fewer checks than its own round trip ran
    if not r.not_ok or (baseline is not None and _signature(baseline) == _signature(j)):
        return Status.SAME
    if baseline is None and all(e is not None and e.direction == "any" for e in j.by):
        return Status.SAME  # nothing to set it against, and its known issues hold in every direction
    return Status.SILENT if r.outcome in DIFFERENCE_OUTCOMES else Status.BREAK
