"""`Cell` (where a check ran) and `Outcome` (what happened): the unit every report is made of."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ckpt_compat.compare import KEY_KINDS, VALUE_KINDS, Difference


class Outcome(str, enum.Enum):
    OK = "ok"
    MISMATCH = "mismatch"  # a tensor's bytes, dtype, shape or strides differ, or the forward does
    KEYS = "keys"  # keys missing or unexpected, or non-strict loading reported wrong key sets
    ALIASING = "aliasing"  # a tie or shared storage was lost or invented
    LOAD_ERROR = "load_error"
    SAVE_ERROR = "save_error"
    UNSUPPORTED = "unsupported"  # the format refuses this model or option by design; detail says why
    CRASH = "crash"  # the loading process died (only for cells run in a subprocess)
    TIMEOUT = "timeout"

    def __str__(self) -> str:
        return self.value


# Only `ok` needs no explanation: every other outcome, `unsupported` included, must match a known
# issue (expectations.py) with its reason, or the run and the gate fail.
EXPECTED_OUTCOMES = frozenset({Outcome.OK})


@dataclass(frozen=True)
class Endpoint:
    """One side of a round trip: which torch, on which device."""

    torch: str
    device: str

    def to_json(self) -> dict[str, str]:
        return {"torch": self.torch, "device": self.device}


# Options that vary within a table row rather than defining one.
_NOT_IN_VARIANT = frozenset({"map_location", "optimizer"})


@dataclass(frozen=True)
class Cell:
    """(spec, format, producer, consumer, load options): one checked combination."""

    spec_id: str
    format: str
    producer: Endpoint
    consumer: Endpoint
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        """The format plus its load options, as shown in tables: ``torch_zip[mmap,weights_only]``."""
        shown = ((k, v) for k, v in sorted(self.options.items()) if k not in _NOT_IN_VARIANT)
        flags = [k if v is True else f"{k}={v}" for k, v in shown]
        return f"{self.format}[{','.join(flags)}]" if flags else self.format


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    outcome: Outcome
    detail: str = ""

    @property
    def not_ok(self) -> bool:
        return self.outcome not in EXPECTED_OUTCOMES

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CellResult:
        cell = Cell(
            data["spec_id"],
            data["format"],
            Endpoint(**data["producer"]),
            Endpoint(**data["consumer"]),
            dict(data["options"]),
        )
        return cls(cell, Outcome(data["outcome"]), data["detail"])

    def to_json(self) -> dict[str, Any]:
        return {
            "spec_id": self.cell.spec_id,
            "format": self.cell.format,
            "producer": self.cell.producer.to_json(),
            "consumer": self.cell.consumer.to_json(),
            "options": dict(self.cell.options),
            "outcome": self.outcome.value,
            "detail": self.detail,
        }


def outcome_of(differences: Iterable[Difference]) -> Outcome:
    """The outcome a list of differences amounts to: keys, then values, then aliasing."""
    found = {d.kind for d in differences}
    if found & KEY_KINDS:
        return Outcome.KEYS
    if found & VALUE_KINDS:
        return Outcome.MISMATCH
    if found:
        return Outcome.ALIASING
    return Outcome.OK


def describe(differences: list[Difference], limit: int = 8) -> str:
    shown = "; ".join(str(d) for d in differences[:limit])
    more = len(differences) - limit
    return shown + (f"; ... and {more} more" if more > 0 else "")


def counts(results: Iterable[CellResult]) -> dict[str, dict[str, int]]:
    """Outcome counts per format variant, for tables and the report summary."""
    table: dict[str, Counter[str]] = {}
    for r in results:
        table.setdefault(r.cell.variant, Counter())[r.outcome.value] += 1
    return {variant: dict(c) for variant, c in sorted(table.items())}


def release(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: the matrix axes are releases, not builds."""
    return version.split("+", 1)[0]


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in release(version).split("."))


@dataclass
class MatrixEntry:
    """All cells of one format from one producer release to one consumer release."""

    results: list[CellResult] = field(default_factory=list)

    def outcomes(self) -> dict[str, int]:
        return dict(Counter(r.outcome.value for r in self.results))


@dataclass
class Matrix:
    """Per format, a producer-release x consumer-release grid of cell results."""

    grid: dict[str, dict[tuple[str, str], MatrixEntry]] = field(default_factory=dict)

    @classmethod
    def of(cls, results: Iterable[CellResult]) -> Matrix:
        matrix = cls()
        for r in results:
            key = (release(r.cell.producer.torch), release(r.cell.consumer.torch))
            matrix.grid.setdefault(r.cell.format, {}).setdefault(key, MatrixEntry()).results.append(r)
        return matrix

    def producers(self, fmt: str) -> list[str]:
        return sorted({p for p, _ in self.grid[fmt]}, key=version_key)

    def consumers(self, fmt: str) -> list[str]:
        return sorted({c for _, c in self.grid[fmt]}, key=version_key)
