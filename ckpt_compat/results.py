"""`Cell` (where a check ran) and `CellResult` (what happened there, typed), and the results files
every report is made of.

A result keeps its differences (`differences.Difference`), its error (`errorinfo.ErrorInfo`) and the
checks that ran, from the check that finds them to the report that renders them: nothing is judged
by parsing text. Results files are schema ``ckpt-compat/report/2``; files of schema 1 (stored
baselines) are read in `read_v1_cell`, the one place text is read back, as strictly as they allow.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from ckpt_compat import versions
from ckpt_compat.differences import KEY_KINDS, KINDS, VALUE_KINDS, Difference
from ckpt_compat.errorinfo import ErrorInfo

SCHEMA = "ckpt-compat/report/2"
SCHEMA_V1 = "ckpt-compat/report/1"


class Outcome(str, enum.Enum):
    OK = "ok"
    MISMATCH = "mismatch"  # a tensor's bytes, dtype, shape or strides differ, or the forward does
    KEYS = "keys"  # keys missing or unexpected, or non-strict loading reported wrong key sets
    ALIASING = "aliasing"  # a tie or shared storage was lost or invented
    LOAD_ERROR = "load_error"
    SAVE_ERROR = "save_error"
    UNSUPPORTED = "unsupported"  # the format refuses this model or option by design; the error says why
    CRASH = "crash"  # the loading process died (only for cells run in a subprocess)
    TIMEOUT = "timeout"
    # The load ran a loader that can execute code where the caller asked for one that cannot
    # (torch <= 2.5 hands a TorchScript archive to torch.jit.load under weights_only=True).
    UNSAFE = "unsafe"

    def __str__(self) -> str:
        return self.value


ERROR_OUTCOMES = frozenset(
    {Outcome.LOAD_ERROR, Outcome.SAVE_ERROR, Outcome.UNSUPPORTED, Outcome.CRASH, Outcome.TIMEOUT}
)
DIFFERENCE_OUTCOMES = frozenset({Outcome.MISMATCH, Outcome.KEYS, Outcome.ALIASING})

# The checks a cell can run, in the order they run. A cell lists the ones it ran, so an `ok` that
# rests on the producer's digests alone (the consumer cannot rebuild the spec) is told apart from
# an `ok` that also rebuilt, reloaded and ran the model.
CHECKS = (
    "load",  # the file loaded
    "manifest",  # every tensor against the producer's recorded dtype, shape and digest
    "state_dict",  # every tensor against the model rebuilt here, bit for bit (+ strides, aliasing)
    "buffers",  # non-persistent buffers, where the format keeps them
    "strict_load",  # load_state_dict(strict=True) into a fresh model
    "non_strict",  # exact missing / unexpected key sets of non-strict loads; shape mismatches raise
    "assign",  # load_state_dict(assign=True) onto a meta-device model
    "forward",  # every block's output against the original model's
    "program",  # the loaded program's outputs (torch.export, ONNX Runtime)
    "values",  # plain values of a multi-object file
    "resume",  # a training checkpoint resumed and trained on, against the producer's own run
)


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


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    outcome: Outcome
    differences: tuple[Difference, ...] = ()
    error: ErrorInfo | None = None
    checks: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    # Set only for results read from a schema-1 file whose text was cut short: what is missing
    # cannot be explained, so the judge counts such a cell as unexplained.
    truncated: bool = False

    @property
    def not_ok(self) -> bool:
        return self.outcome is not Outcome.OK

    @property
    def detail(self) -> str:
        """Everything in words, for people: the error, every difference, the notes."""
        parts = [str(self.error)] if self.error is not None else []
        parts += [str(d) for d in self.differences]
        return "; ".join(parts + list(self.notes))

    @classmethod
    def failed(cls, cell: Cell, outcome: Outcome, exc: BaseException, *, prefix: str = "") -> CellResult:
        """A cell ended by an exception (load_error, save_error, unsupported)."""
        error = ErrorInfo.of(exc)
        if prefix:
            error = ErrorInfo(error.type, f"{prefix}{error.message}", error.refused_global, error.cause)
        return cls(cell, outcome, error=error)

    @classmethod
    def of(
        cls,
        cell: Cell,
        differences: Sequence[Difference],
        *,
        checks: Sequence[str] = (),
        notes: Sequence[str] = (),
        unsafe: bool = False,
    ) -> CellResult:
        """A cell whose load succeeded: its outcome follows from the differences found."""
        outcome = Outcome.UNSAFE if unsafe else outcome_of(differences)
        return cls(cell, outcome, tuple(differences), checks=_ordered_checks(checks), notes=tuple(notes))

    def to_json(self) -> dict[str, Any]:
        return {
            "spec_id": self.cell.spec_id,
            "format": self.cell.format,
            "producer": self.cell.producer.to_json(),
            "consumer": self.cell.consumer.to_json(),
            "options": dict(self.cell.options),
            "outcome": self.outcome.value,
            "differences": [d.to_json() for d in self.differences],
            "error": self.error.to_json() if self.error is not None else None,
            "checks": list(self.checks),
            "notes": list(self.notes),
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CellResult:
        """A schema-2 cell. Raises KeyError / TypeError / ValueError on a malformed one."""
        checks = tuple(data["checks"])
        unknown = [c for c in checks if c not in CHECKS]
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}")
        notes = data.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ValueError(f"notes must be a list of strings, got {notes!r}")
        return cls(
            _cell(data),
            Outcome(data["outcome"]),
            tuple(Difference.from_json(d) for d in data["differences"]),
            ErrorInfo.from_json(data["error"]) if data["error"] is not None else None,
            checks,
            tuple(notes),
        )


def _ordered_checks(checks: Iterable[str]) -> tuple[str, ...]:
    ran = set(checks)
    unknown = ran - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown check(s) {sorted(unknown)}; known: {', '.join(CHECKS)}")
    return tuple(c for c in CHECKS if c in ran)


# What a name read from a file (a spec, a format, a device, an option) may hold: printable text,
# without a Markdown table's cell boundary, a code span's backtick or HTML's brackets. Reports and
# matrices print names as they are, and results files and manifests come from other machines.
_NOT_IN_NAMES = frozenset("|`<>")
NAME_LIMIT = 200


def is_name(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a name as above."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= NAME_LIMIT
        and value.isprintable()
        and not _NOT_IN_NAMES.intersection(value)
    )


def check_name(what: str, value: object) -> str:
    """``value``, if it is a name as above; else ValueError naming ``what`` and the value."""
    if not is_name(value):
        raise ValueError(
            f"{what} must be a name of 1 to {NAME_LIMIT} printable characters, none of "
            f"{''.join(sorted(_NOT_IN_NAMES))}, got {value!r:.100}"
        )
    return value


def check_endpoint(what: str, value: object) -> Endpoint:
    """An `Endpoint` from ``{"torch": "2.13.0+cpu", "device": "cpu"}``; ValueError naming ``what``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be {{torch, device}}, got {value!r:.100}")
    torch, device = check_name(f"{what} torch", value.get("torch")), check_name(f"{what} device", value.get("device"))
    versions.parse(torch)  # a release every bound can be compared with
    return Endpoint(torch, device)


def check_options(what: str, value: object) -> dict[str, Any]:
    """Load options: names to JSON scalars (a string one a name); ValueError naming ``what``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a mapping, got {value!r:.100}")
    for k, v in value.items():
        check_name(f"{what} key", k)
        if isinstance(v, str):
            check_name(f"{what}[{k!r}]", v)
        elif not (v is None or isinstance(v, (bool, int, float))):
            raise ValueError(f"{what}[{k!r}] must be a name, a number, true, false or null, got {v!r:.100}")
    return dict(value)


def _cell(data: Mapping[str, Any]) -> Cell:
    return Cell(
        check_name("spec_id", data["spec_id"]),
        check_name("format", data["format"]),
        check_endpoint("producer", data["producer"]),
        check_endpoint("consumer", data["consumer"]),
        check_options("options", data["options"]),
    )


# --------------------------------------------------------------------------- schema 1, read only

# Schema 1 kept a cell's differences and error as one line of text. These patterns read it back;
# nothing else in ckpt-compat reads text, and whatever they cannot read counts as unexplained.
_V1_DIFFERENCE = re.compile(r"^(?P<where>\S.*?): (?P<kind>" + "|".join(KINDS) + r"): (?P<rest>.*)$")
_V1_BLOCK = re.compile(r"^\[(?P<block>\w+)\] (?P<rest>.*)$")
_V1_ELEMENTS = re.compile(r"^(?P<n>\d+) of (?P<total>\d+) element\(s\) (differ|beyond)")
_V1_ERROR = re.compile(r"^(?P<type>[A-Za-z_][\w.]*): (?P<message>.*)$")
_V1_CUT = re.compile(r"(\.\.\.|; \.\.\. and \d+ more)$")
_V1_PATH = re.compile(r"\[('(?:[^'\\]|\\.)*'|\d+)\]")


def read_v1_cell(data: Mapping[str, Any]) -> CellResult:
    """A schema-1 cell, with its ``detail`` text read back into typed parts where it can be.

    Distances (largest absolute and ULP difference) were never written in schema 1, so a known
    issue that bounds them cannot explain a schema-1 difference: such files are judged strictly.
    """
    cell = _cell(data)
    outcome = Outcome(data["outcome"])
    detail = data["detail"]
    if not isinstance(detail, str):
        raise ValueError(f"detail must be text, got {detail!r}")
    truncated = bool(_V1_CUT.search(detail))
    if outcome in ERROR_OUTCOMES:
        return CellResult(cell, outcome, error=_v1_error(outcome, detail), truncated=truncated)
    differences, notes = [], []
    for part in detail.split("; ") if detail else []:
        found = _V1_DIFFERENCE.match(part)
        if found is None:
            notes.append(part)
            continue
        rest, block = found["rest"], None
        if (tagged := _V1_BLOCK.match(rest)) is not None:
            block, rest = tagged["block"], tagged["rest"]
        counted = _V1_ELEMENTS.match(rest)
        differences.append(
            Difference(
                found["kind"],  # type: ignore[arg-type]
                _v1_path(found["where"]),
                rest,
                block=block,
                elements=int(counted["n"]) if counted else None,
                total=int(counted["total"]) if counted else None,
            )
        )
    return CellResult(cell, outcome, tuple(differences), notes=tuple(notes), truncated=truncated)


def _v1_error(outcome: Outcome, detail: str) -> ErrorInfo:
    """Schema 1 wrote an error as "Type: message", and ckpt-compat's own refusals without a type."""
    if outcome is Outcome.UNSUPPORTED:
        refusal = "Untrusted" if detail.endswith("pass --trust if you trust where it came from") else "Unsupported"
        return ErrorInfo(refusal, detail)
    if outcome in (Outcome.CRASH, Outcome.TIMEOUT):
        return ErrorInfo("ProcessDied" if outcome is Outcome.CRASH else "Timeout", detail)
    found = _V1_ERROR.match(detail)
    return ErrorInfo(found["type"], found["message"]) if found else ErrorInfo("", detail)


def _v1_path(where: str) -> tuple[str | int, ...]:
    root = where.split("[", 1)[0]
    parts: list[str | int] = [root]
    for token in _V1_PATH.findall(where[len(root) :]):
        parts.append(int(token) if token.isdigit() else token[1:-1])
    return tuple(parts)


class ResultsError(ValueError):
    """A results file that cannot be read; the message names the file."""


def load_results(paths: Sequence[Path]) -> list[CellResult]:
    """Cells from report.json / results.json files of schema 2 or 1; a file named twice (a shell
    glob and a name, a link to it) is read once: its cells would count twice."""
    results: list[CellResult] = []
    read_already: set[Path] = set()
    for path in paths:
        try:
            if (resolved := Path(path).resolve()) in read_already:
                continue
            read_already.add(resolved)
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            schema = data.get("schema") if isinstance(data, dict) else None
            if schema not in (SCHEMA, SCHEMA_V1):
                raise ValueError(f"not a {SCHEMA} (or {SCHEMA_V1}) file")
            read = CellResult.from_json if schema == SCHEMA else read_v1_cell
            if not isinstance(data["cells"], list):
                raise ValueError("cells must be a list")
            results += [read(c) for c in data["cells"]]
        except OSError as exc:
            raise ResultsError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise ResultsError(f"{path}: not a results file written by ckpt-compat ({exc!s:.300})") from exc
        except RuntimeError as exc:  # resolve() of a link that leads to itself, before Python 3.13
            raise ResultsError(f"{path}: cannot read it ({exc})") from exc
    return results
