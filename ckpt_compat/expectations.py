"""Known, explained incompatibilities: a non-ok cell that matches one is a finding, not a failure.

The file is TOML, one ``[[expect]]`` table per known issue::

    [[expect]]
    id = "legacy-format-new-dtypes"          # unique, stable: reports cite it
    format = ["torch_legacy"]                # fnmatch patterns on the format name
    outcome = ["load_error"]
    detail = "has no attribute 'dtype'"      # optional regex searched in the cell's detail
    consumer_torch = ">=2.1"                 # optional PEP 440 specifiers (local part ignored)
    producer_torch = ">=2.1"
    options = { mmap = true }                # optional: these options must match exactly
    cross_version = true                     # optional: only producer release != consumer release
    reason = "why it happens and what to do"
    links = ["https://github.com/pytorch/pytorch/issues/..."]

The built-in file ships inside the package, so an installed ``ckpt-compat`` knows them too.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from ckpt_compat.compare import KEY_KINDS, VALUE_KINDS, Difference
from ckpt_compat.matrix import CellResult, Outcome, outcome_of
from ckpt_compat.matrix import release as matrix_release

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

BUILTIN = Path(__file__).with_name("expectations.toml")


class ExpectationsError(ValueError):
    pass


def release(version: str) -> Version:
    """``2.13.0+cpu`` -> ``Version("2.13.0")``: CPU and CUDA builds of a release behave alike here."""
    return Version(matrix_release(version))


@dataclass(frozen=True)
class Expectation:
    id: str
    formats: tuple[str, ...]
    outcomes: frozenset[Outcome]
    reason: str
    links: tuple[str, ...] = ()
    detail: re.Pattern[str] | None = None
    producer_torch: SpecifierSet | None = None
    consumer_torch: SpecifierSet | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    cross_version: bool = False  # only where producer and consumer are different releases
    source: str = ""  # the file it came from

    def matches(self, result: CellResult) -> bool:
        cell = result.cell
        return (
            result.outcome in self.outcomes
            and any(fnmatch.fnmatchcase(cell.format, p) for p in self.formats)
            and (self.detail is None or self.detail.search(result.detail) is not None)
            and (self.producer_torch is None or release(cell.producer.torch) in self.producer_torch)
            and (self.consumer_torch is None or release(cell.consumer.torch) in self.consumer_torch)
            and all(cell.options.get(k) == v for k, v in self.options.items())
            and (not self.cross_version or release(cell.producer.torch) != release(cell.consumer.torch))
        )

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "reason": self.reason, "links": list(self.links)}


@dataclass(frozen=True)
class Expectations:
    entries: tuple[Expectation, ...] = ()

    @classmethod
    def load(cls, paths: Iterable[Path] = (BUILTIN,)) -> Expectations:
        entries: list[Expectation] = []
        for path in paths:
            entries += _parse(path)
        ids = [e.id for e in entries]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ExpectationsError(f"expectation ids defined twice: {', '.join(duplicates)}")
        return cls(tuple(entries))

    def explain(self, result: CellResult) -> Expectation | None:
        """The expectation that explains a non-ok ``result``, if any.

        A cell that lists several differences is explained only when every one of them is: each
        difference is matched on its own (with the outcome its kind stands for), so one known
        issue cannot hide an unknown one in the same cell.
        """
        if result.outcome is Outcome.OK:
            return None
        parts = _differences(result.detail)
        if len(parts) < 2:  # an error, or one difference: match the cell as a whole
            return next((e for e in self.entries if e.matches(result)), None)
        found = []
        for kind, text in parts:
            part = CellResult(result.cell, outcome_of([Difference(kind, "", "")]), text)  # type: ignore[arg-type]
            match = next((e for e in self.entries if e.matches(part)), None)
            if match is None:
                return None
            found.append(match)
        return found[0]

    def unused(self, results: Iterable[CellResult]) -> list[Expectation]:
        """Expectations that explain none of ``results``: stale once the matrix covers them."""
        used = {e.id for r in results if (e := self.explain(r)) is not None}
        return [e for e in self.entries if e.id not in used]


_DIFFERENCE = re.compile(r"^\S.*?: (" + "|".join(sorted(KEY_KINDS | VALUE_KINDS | {"aliasing"})) + r"): ")


def _differences(detail: str) -> list[tuple[str, str]]:
    """(kind, text) of each difference in a cell's detail; notes are left out."""
    out = []
    for part in detail.split("; "):
        m = _DIFFERENCE.match(part)
        if m:
            out.append((m.group(1), part))
    return out


def _parse(path: Path) -> list[Expectation]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExpectationsError(f"{path}: cannot read expectations ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ExpectationsError(f"{path}: not valid TOML ({exc})") from exc
    out = []
    for i, raw in enumerate(data.get("expect", [])):
        where = f"{path}: expect[{i}]"
        try:
            outcomes = frozenset(Outcome(o) for o in raw["outcome"])
            out.append(
                Expectation(
                    id=str(raw["id"]),
                    formats=tuple(raw["format"]),
                    outcomes=outcomes,
                    reason=str(raw["reason"]).strip(),
                    links=tuple(raw.get("links", ())),
                    detail=re.compile(raw["detail"]) if "detail" in raw else None,
                    producer_torch=SpecifierSet(raw["producer_torch"]) if "producer_torch" in raw else None,
                    consumer_torch=SpecifierSet(raw["consumer_torch"]) if "consumer_torch" in raw else None,
                    options=dict(raw.get("options", {})),
                    cross_version=bool(raw.get("cross_version", False)),
                    source=str(path),
                )
            )
        except KeyError as exc:
            raise ExpectationsError(f"{where}: missing required key {exc.args[0]!r}") from exc
        except (ValueError, re.error, InvalidSpecifier) as exc:
            raise ExpectationsError(f"{where}: {exc}") from exc
    return out
