"""Known, explained incompatibilities, and the one judge that decides which of them explains what.

A known issue is precise: it names its formats, both version bounds (``any`` written out), the
direction between producer and consumer release, the load options, the outcome, and for an error
the exception type and a message pattern, for a difference its kind, key-path root, block class
and how large it may be. One ``[[expect]]`` table each::

    [[expect]]
    id = "torchscript-mha-math-2.4"            # unique, stable: reports cite it
    title = "TorchScript archives carry the producer's MultiheadAttention math"
    formats = ["torchscript_script", "torchscript_trace"]
    producer_torch = "<2.4"                    # PEP 440 specifiers, or "any"
    consumer_torch = ">=2.4"
    direction = "older-to-newer"               # same | older-to-newer | newer-to-older | across | any
    options = {}                               # these options must match exactly (a list: one of); {} = any
    outcome = "mismatch"
    difference = { kind = "bytes", root = "forward", block = "MultiheadAttention",
                   max_fraction = 0.25, max_ulp = 16 }
    reason = "why it happens and what to do"
    links = ["https://github.com/pytorch/pytorch/pull/..."]

Error outcomes take ``error = { type = "RuntimeError", message = "regex" }`` (or a list of such
tables, one per way the same issue is raised), optionally with ``refused_global`` and ``cause``;
the file format is checked in `ckpt_compat.expectations_file`.
`judge` matches every difference of a cell on its own, and the cell's error as a whole: a cell is
explained only when each part is. The built-in file ships inside the package.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_compat import versions
from ckpt_compat.differences import Difference
from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.results import ERROR_OUTCOMES, CellResult, Outcome, outcome_of

BUILTIN = Path(__file__).with_name("expectations.toml")
# What changes across releases, from the evidence of the committed corpora (shipped with them).
CROSS_VERSION = Path(__file__).with_name("fixtures") / "expectations.toml"
PLUGIN_GROUP = "ckpt_compat.expectations"


def shipped() -> tuple[Path, ...]:
    """Every known-issue list ckpt-compat ships, and those plugins ship through the
    ``ckpt_compat.expectations`` entry point (a zero-argument callable returning a TOML path):
    loaded by every command."""
    import importlib.metadata

    from ckpt_compat.errorinfo import does_not_load, entry_point

    plugins = []
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            path = ep.load()()
        except Exception as exc:  # its known issues are unknown: no cell of its formats could be judged
            raise ExpectationsError(does_not_load(ep, exc)) from exc
        if not isinstance(path, Path) or not path.is_file():
            raise ExpectationsError(f"{entry_point(ep)} gave {path!r:.100}, not a TOML file")
        plugins.append(path)
    return (BUILTIN, CROSS_VERSION, *plugins)


DIRECTIONS = ("any", "same", "older-to-newer", "newer-to-older", "across")


class ExpectationsError(ValueError):
    pass


@dataclass(frozen=True)
class ErrorPattern:
    """An exception as a known issue names it: its exact type and a pattern searched in its message."""

    type: str
    message: re.Pattern[str]
    refused_global: re.Pattern[str] | None = None
    cause: ErrorPattern | None = None

    def matches(self, error: ErrorInfo | None) -> bool:
        return (
            error is not None
            and error.type == self.type
            and self.message.search(error.message) is not None
            and (self.refused_global is None or _full(self.refused_global, error.refused_global))
            and (self.cause is None or self.cause.matches(error.cause))
        )


def _full(pattern: re.Pattern[str], text: str | None) -> bool:
    return text is not None and pattern.fullmatch(text) is not None


@dataclass(frozen=True)
class DifferencePattern:
    """A difference as a known issue names it, with a bound on its size."""

    kind: str
    roots: frozenset[str]
    block: str | None = None
    max_elements: int | None = None
    max_fraction: float | None = None  # of the elements compared
    max_abs: float | None = None
    max_ulp: float | None = None
    expected: re.Pattern[str] | None = None
    actual: re.Pattern[str] | None = None
    error: ErrorPattern | None = None  # for kind "raised"

    def matches(self, d: Difference) -> bool:
        return (
            d.kind == self.kind
            and d.root in self.roots
            and (self.block is None or d.block == self.block)
            and _at_most(d.elements, self.max_elements)
            and _at_most(None if d.elements is None or not d.total else d.elements / d.total, self.max_fraction)
            and _at_most(d.max_abs, self.max_abs)
            and _at_most(d.max_ulp, self.max_ulp)
            and (self.expected is None or _full(self.expected, d.expected))
            and (self.actual is None or _full(self.actual, d.actual))
            and (self.error is None or self.error.matches(d.error))
        )


def _at_most(value: float | None, bound: float | None) -> bool:
    """Within the bound; a bound on something not measured (a digest, a schema-1 file) is not met."""
    return bound is None or (value is not None and not math.isnan(value) and value <= bound)


@dataclass(frozen=True)
class Expectation:
    id: str
    title: str
    formats: frozenset[str]
    producer_torch: versions.Bounds
    consumer_torch: versions.Bounds
    direction: str
    options: Mapping[str, Any]
    outcomes: frozenset[Outcome]
    reason: str
    links: tuple[str, ...]
    errors: tuple[ErrorPattern, ...] = ()
    difference: DifferencePattern | None = None
    producer_device: frozenset[str] | None = None
    consumer_device: frozenset[str] | None = None
    source: str = ""  # the file it came from

    def applies_to(self, result: CellResult) -> bool:
        """Format, releases, direction, devices and options: where the issue is said to occur."""
        cell = result.cell
        producer, consumer = cell.producer.torch, cell.consumer.torch
        return (
            cell.format in self.formats
            and _within(self.producer_torch, producer)
            and _within(self.consumer_torch, consumer)
            and _direction(producer, consumer) in _ALLOWED[self.direction]
            and (self.producer_device is None or cell.producer.device in self.producer_device)
            and (self.consumer_device is None or cell.consumer.device in self.consumer_device)
            and all(k in cell.options and _option_matches(cell.options[k], v) for k, v in self.options.items())
        )

    def explains(self, part: Part) -> bool:
        if part.outcome not in self.outcomes:
            return False
        if part.difference is not None:
            return self.difference is not None and self.difference.matches(part.difference)
        if part.outcome is Outcome.UNSAFE and not self.errors:
            return True  # an unsafe load with no error of its own: matched by formats, versions, options
        return part.error is not None and any(e.matches(part.error) for e in self.errors)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "reason": self.reason, "links": list(self.links)}


def _option_matches(value: Any, wanted: Any) -> bool:
    """An option matches its value exactly, or one of a list of values."""
    return value in wanted if isinstance(wanted, list) else value == wanted


_ALLOWED = {
    "any": {"same", "older-to-newer", "newer-to-older"},
    "same": {"same"},
    "older-to-newer": {"older-to-newer"},
    "newer-to-older": {"newer-to-older"},
    "across": {"older-to-newer", "newer-to-older"},
}


@functools.cache
def _within(bounds: versions.Bounds, version: str) -> bool:
    return version in bounds


@functools.cache
def _direction(producer: str, consumer: str) -> str:
    p, c = versions.parse(producer), versions.parse(consumer)
    return "same" if p == c else ("older-to-newer" if p < c else "newer-to-older")


# --------------------------------------------------------------------------- the judge


@dataclass(frozen=True)
class Part:
    """One thing in a cell that needs explaining: its error, one difference, or an unsafe load."""

    outcome: Outcome
    difference: Difference | None = None
    error: ErrorInfo | None = None

    def __str__(self) -> str:
        if self.difference is not None:
            return str(self.difference)
        return str(self.error) if self.error is not None else self.outcome.value


def parts(result: CellResult) -> tuple[Part, ...]:
    """What must be explained for ``result`` to pass: nothing for ok; otherwise every part."""
    if result.outcome is Outcome.OK:
        return ()
    found = [Part(outcome_of([d]), difference=d) for d in result.differences]
    if result.outcome is Outcome.UNSAFE:
        return (Part(Outcome.UNSAFE, error=result.error), *found)
    if result.outcome in ERROR_OUTCOMES:  # and what else was found (a file changed since it was written)
        return (Part(result.outcome, error=result.error), *found)
    return tuple(found)


@dataclass(frozen=True)
class Judgement:
    """A cell and, for each of its parts, the known issue that explains it (None: unexplained)."""

    result: CellResult
    parts: tuple[Part, ...]
    by: tuple[Expectation | None, ...]

    @property
    def explained(self) -> bool:
        if self.result.outcome is Outcome.OK:
            return True
        # A not-ok cell with nothing to show for it (or a schema-1 cell cut short) explains nothing.
        return bool(self.parts) and not self.result.truncated and all(e is not None for e in self.by)

    @property
    def unsafe(self) -> bool:
        return self.result.outcome is Outcome.UNSAFE

    @property
    def causes(self) -> tuple[str, ...]:
        """Ids of the known issues that explain parts of this cell, each once, in order."""
        return tuple(dict.fromkeys(e.id for e in self.by if e is not None))

    def unexplained_parts(self) -> list[Part]:
        return [p for p, e in zip(self.parts, self.by, strict=True) if e is None]

    def to_json(self) -> dict[str, Any]:
        return {"explained": self.explained, "by": [e.id if e else None for e in self.by]}


@dataclass(frozen=True)
class Expectations:
    entries: tuple[Expectation, ...] = ()
    by_id: Mapping[str, Expectation] = field(default_factory=dict, compare=False)

    @classmethod
    def load(cls, paths: Iterable[Path] | None = None) -> Expectations:
        from ckpt_compat.expectations_file import parse

        entries: list[Expectation] = []
        seen: set[bytes] = set()
        for path in shipped() if paths is None else paths:
            # The same list named twice counts once: a shipped file passed again, or a checkout's
            # copy of it next to the installed package's.
            try:
                digest = hashlib.sha256(Path(path).read_bytes()).digest()
            except OSError:
                digest = str(Path(path).resolve()).encode()  # parse() reports the unreadable file
            if digest in seen:
                continue
            seen.add(digest)
            entries += parse(Path(path))
        ids = [e.id for e in entries]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ExpectationsError(f"expectation ids defined twice: {', '.join(duplicates)}")
        return cls(tuple(entries), {e.id: e for e in entries})

    def judge_one(self, result: CellResult) -> Judgement:
        found = parts(result)
        if not found:
            return Judgement(result, (), ())
        candidates = [e for e in self.entries if e.applies_to(result)]
        by = tuple(next((e for e in candidates if e.explains(p)), None) for p in found)
        return Judgement(result, found, by)


def judge(results: Iterable[CellResult], expectations: Expectations) -> list[Judgement]:
    """The one judge: report, matrix, property runner and gate all ask it."""
    return [expectations.judge_one(r) for r in results]


@dataclass(frozen=True)
class Verdict:
    """The gate's verdict over a set of results: it passes when every not-ok cell is explained, and
    there is a cell: results that hold none checked nothing (a corpus emptied, a selection that
    matched nothing), and passing them would be a release gate's false pass."""

    judgements: Sequence[Judgement]
    stale: Sequence[Expectation]
    # A format's by-design refusal (`unsupported`) passes unexplained: for users' own models,
    # whose refusals no known-issue list can name in advance (gate --limitations-pass).
    limitations_pass: bool = False

    @property
    def unexplained(self) -> list[Judgement]:
        return [
            j
            for j in self.judgements
            if not j.explained and not (self.limitations_pass and j.result.outcome is Outcome.UNSUPPORTED)
        ]

    @property
    def unsafe(self) -> list[Judgement]:
        return [j for j in self.judgements if j.unsafe]

    @property
    def explained_not_ok(self) -> int:
        return sum(j.result.not_ok and j.explained for j in self.judgements)

    def passed(self, *, fail_on_unsafe: bool = False) -> bool:
        return bool(self.judgements) and not self.unexplained and not (fail_on_unsafe and self.unsafe)


def gate(
    results: Iterable[CellResult],
    expectations: Expectations,
    *,
    stale_if: Callable[[Expectation], bool],
    limitations_pass: bool = False,
) -> Verdict:
    """Judge ``results``; entries for which ``stale_if`` holds and that explain nothing are stale."""
    judgements = judge(results, expectations)
    used = {i for j in judgements for i in j.causes}
    stale = [e for e in expectations.entries if e.id not in used and stale_if(e)]
    return Verdict(judgements, stale, limitations_pass)
