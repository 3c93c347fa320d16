"""The known-issue file: TOML ``[[expect]]`` tables, checked key by key into `Expectation` s.

Every key is required but ``error`` / ``difference`` (one goes with the outcome) and the device
lists; an unknown key, a pattern where a format name belongs, a bytes difference without a bound on
its size, or a model-output difference without its block class is refused, naming the file, the
entry and the key. See `ckpt_compat.expectations` for what each key means.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckpt_compat import versions
from ckpt_compat.differences import KINDS, Difference
from ckpt_compat.errorinfo import printable
from ckpt_compat.expectations import (
    DIRECTIONS,
    DifferencePattern,
    ErrorPattern,
    Expectation,
    ExpectationsError,
)
from ckpt_compat.results import DIFFERENCE_OUTCOMES, ERROR_OUTCOMES, Outcome, check_name, check_options, outcome_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

_KEYS = {
    "id",
    "title",
    "formats",
    "producer_torch",
    "consumer_torch",
    "direction",
    "options",
    "outcome",
    "error",
    "difference",
    "producer_device",
    "consumer_device",
    "reason",
    "links",
}
_REQUIRED = ("id", "title", "formats", "producer_torch", "consumer_torch", "direction", "options", "outcome")
_ERROR_KEYS = {"type", "message", "refused_global", "cause"}
_DIFFERENCE_KEYS = {
    "kind",
    "root",
    "block",
    "max_elements",
    "max_fraction",
    "max_abs",
    "max_ulp",
    "expected",
    "actual",
    "error",
}
_FORMAT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DEVICE_KEYS = ("producer_device", "consumer_device")


def parse(path: Path) -> list[Expectation]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExpectationsError(f"{path}: cannot read expectations ({exc.strerror})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:  # arrays nested past the limit
        raise ExpectationsError(f"{path}: not valid TOML ({type(exc).__name__}: {exc})") from exc
    other = sorted(set(data) - {"expect"})
    if other:
        raise ExpectationsError(f"{path}: unknown top-level key(s) {other}; known issues go in [[expect]] tables")
    tables = data.get("expect", [])
    if not isinstance(tables, list):
        raise ExpectationsError(f"{path}: 'expect' must be an array of tables ([[expect]])")
    out = []
    for i, raw in enumerate(tables):
        named = isinstance(raw, dict) and "id" in raw
        where = f"{path}: expect[{i}]" + (f" ({printable(str(raw['id']))[:100]})" if named else "")
        try:
            out.append(_expectation(raw, str(path)))
        except (KeyError, ValueError, TypeError, re.error) as exc:
            message = f"missing required key {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            raise ExpectationsError(f"{where}: {message}") from exc
    return out


def _expectation(raw: Any, source: str) -> Expectation:
    if not isinstance(raw, dict):
        raise TypeError("each [[expect]] must be a table")
    _known_keys(raw, _KEYS, "")
    for key in (*_REQUIRED, "reason", "links"):
        raw[key]
    outcomes = frozenset(Outcome(o) for o in _strings(raw, "outcome", allow_one=True))
    if Outcome.OK in outcomes:
        raise ValueError("outcome 'ok' needs no explanation")
    if len({_family(o) for o in outcomes}) > 1:
        raise ValueError("outcomes must all be errors, or all differences")
    formats = _strings(raw, "formats")
    bad = [f for f in formats if not _FORMAT_NAME.match(f)]
    if bad or not formats:
        raise ValueError(f"formats must name formats exactly (no patterns), got {formats!r}")
    direction = _string(raw, "direction")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    options = raw["options"]
    if not isinstance(options, dict):
        raise TypeError(f"options must be a table, got {options!r}")
    for key, value in options.items():  # what a cell's option can be (a list: one of): anything else matches nothing
        if value == []:
            raise ValueError(f"options[{key!r}] is an empty list: it matches no cell")
        for one in value if isinstance(value, list) else [value]:
            check_options("options", {key: one})
    links = _strings(raw, "links")
    if not links:
        raise ValueError("links must cite at least one upstream issue, PR or document")
    errors: tuple[ErrorPattern, ...] = ()
    difference = None
    if outcomes <= ERROR_OUTCOMES:
        spec = raw.get("error")
        if spec is None:
            raise ValueError("an error outcome needs error = { type = ..., message = ... }")
        errors = tuple(_error(e) for e in (spec if isinstance(spec, list) else [spec]))
    elif outcomes == {Outcome.UNSAFE} and "error" in raw:  # what the unsafe load said, where it says
        spec = raw["error"]
        errors = tuple(_error(e) for e in (spec if isinstance(spec, list) else [spec]))
    elif outcomes <= DIFFERENCE_OUTCOMES:
        if "difference" not in raw:
            raise ValueError("a difference outcome needs difference = { kind = ..., root = ..., ... }")
        difference = _difference(raw["difference"])
        if outcome_of([Difference(difference.kind, ())]) not in outcomes:  # type: ignore[arg-type]
            raise ValueError(f"a {difference.kind!r} difference never makes a {sorted(o.value for o in outcomes)} cell")
    for key, allowed in (("error", bool(errors)), ("difference", difference is not None)):
        if key in raw and not allowed:
            raise ValueError(f"{key!r} does not go with outcome {sorted(o.value for o in outcomes)}")
    devices = {key: frozenset(check_name(key, d) for d in _strings(raw, key)) for key in _DEVICE_KEYS if key in raw}
    return Expectation(
        # The id and title reach matrix.md, the gate's lines and the judgement of every cell.
        id=check_name("id", _string(raw, "id")),
        title=_line(raw, "title"),
        formats=frozenset(formats),
        producer_torch=versions.Bounds.parse(_string(raw, "producer_torch")),
        consumer_torch=versions.Bounds.parse(_string(raw, "consumer_torch")),
        direction=direction,
        options=dict(options),
        outcomes=outcomes,
        reason=" ".join(_string(raw, "reason").split()),
        links=tuple(links),
        errors=errors,
        difference=difference,
        producer_device=devices.get("producer_device"),
        consumer_device=devices.get("consumer_device"),
        source=source,
    )


def _family(outcome: Outcome) -> str:
    if outcome in ERROR_OUTCOMES:
        return "error"
    return "difference" if outcome in DIFFERENCE_OUTCOMES else outcome.value


def _string(raw: Mapping[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{key} must be a non-empty string, got {value!r}")
    return value


def _line(raw: Mapping[str, Any], key: str) -> str:
    value = _string(raw, key)
    if not value.isprintable():
        raise ValueError(f"{key} must be one line of printable text, got {value!r:.100}")
    return value


def _strings(raw: Mapping[str, Any], key: str, *, allow_one: bool = False) -> list[str]:
    value = raw[key]
    if allow_one and isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TypeError(f"{key} must be a list of non-empty strings, got {value!r}")
    return value


def _known_keys(table: dict[str, Any], keys: Any, what: str) -> None:
    """Refuse any key of ``table`` not in ``keys``: a typo must not silently widen an entry."""
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise ValueError(f"unknown {what}key(s) {unknown}; known: {', '.join(sorted(keys))}")


def _error(spec: Any) -> ErrorPattern:
    if not isinstance(spec, dict):
        raise TypeError(f"error must be a table, got {spec!r}")
    _known_keys(spec, _ERROR_KEYS, "error ")
    if "type" not in spec or "message" not in spec:
        raise ValueError("an error names its exception type and a message pattern")
    return ErrorPattern(
        _string(spec, "type"),
        re.compile(_string(spec, "message")),
        re.compile(_string(spec, "refused_global")) if "refused_global" in spec else None,
        _error(spec["cause"]) if "cause" in spec else None,
    )


def _difference(spec: Any) -> DifferencePattern:
    if not isinstance(spec, dict):
        raise TypeError(f"difference must be a table, got {spec!r}")
    _known_keys(spec, _DIFFERENCE_KEYS, "difference ")
    kind = _string(spec, "kind")
    roots = frozenset(_strings(spec, "root", allow_one=True))
    if kind not in KINDS:
        raise ValueError(f"difference kind {kind!r} is not one of {', '.join(KINDS)}")
    bounds = {k: spec[k] for k in ("max_elements", "max_fraction", "max_abs", "max_ulp") if k in spec}
    for name, value in bounds.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise TypeError(f"{name} must be a number >= 0, got {value!r}")
    if kind == "bytes" and not (
        {"max_elements", "max_fraction"} & set(bounds) and {"max_abs", "max_ulp"} & set(bounds)
    ):
        raise ValueError("a bytes difference bounds how many elements differ and by how much")
    if roots & {"forward", "program"} and "block" not in spec and kind != "raised":
        raise ValueError("a difference in a model's outputs names the block class")
    if kind == "raised" and "error" not in spec:
        raise ValueError("a 'raised' difference names the exception type and message")
    return DifferencePattern(
        kind,
        roots,
        block=_string(spec, "block") if "block" in spec else None,
        max_elements=int(bounds["max_elements"]) if "max_elements" in bounds else None,
        max_fraction=float(bounds["max_fraction"]) if "max_fraction" in bounds else None,
        max_abs=float(bounds["max_abs"]) if "max_abs" in bounds else None,
        max_ulp=float(bounds["max_ulp"]) if "max_ulp" in bounds else None,
        expected=re.compile(_string(spec, "expected")) if "expected" in spec else None,
        actual=re.compile(_string(spec, "actual")) if "actual" in spec else None,
        error=_error(spec["error"]) if "error" in spec else None,
    )
