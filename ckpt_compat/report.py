"""Reports: ``report.json`` (stable schema, see ``schemas/report.schema.json``) and ``report.md``."""

from __future__ import annotations

import json
import platform
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckpt_compat import __version__
from ckpt_compat.atomic import write_text
from ckpt_compat.expectations import Expectations
from ckpt_compat.formats import all_formats
from ckpt_compat.matrix import CellResult, Matrix, MatrixEntry, Outcome, counts, release, version_key
from ckpt_compat.specs import ModelSpec

SCHEMA = "ckpt-compat/report/1"
SCHEMA_FILE = Path(__file__).with_name("schemas") / "report.schema.json"
FAILING_SPEC = "failing-spec.json"


@dataclass
class Report:
    results: Sequence[CellResult]
    specs: Mapping[str, ModelSpec]
    expectations: Expectations
    run: dict[str, Any] = field(default_factory=dict)  # command, seed, examples, seconds
    failure: ModelSpec | None = None
    failure_detail: str = ""

    def unexpected(self) -> list[CellResult]:
        return [r for r in self.results if r.not_ok and self.expectations.explain(r) is None]

    @property
    def passed(self) -> bool:
        return not self.unexpected() and self.failure is None

    def summary(self) -> dict[str, Any]:
        known = [r for r in self.results if r.not_ok and self.expectations.explain(r) is not None]
        return {
            "cells": len(self.results),
            "specs": len(self.specs),
            "outcomes": dict(Counter(r.outcome.value for r in self.results)),
            "by_format": counts(self.results),
            "known_issues": len(known),
            "unexpected": len(self.unexpected()),
            "passed": self.passed,
        }

    def to_json(self) -> dict[str, Any]:
        cells = []
        for r in self.results:
            cell = r.to_json()
            known = self.expectations.explain(r) if r.not_ok else None
            cell["known_issue"] = known.to_json() if known else None
            cells.append(cell)
        return {
            "schema": SCHEMA,
            "tool": {"name": "ckpt-compat", "version": __version__},
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "run": self.run,
            "formats": {
                name: {
                    "available": (why := f.why_unavailable()) is None,
                    "reason": why or "",
                    "description": f.description,
                    "deprecated": f.deprecated,
                    "caveat": f.caveat,
                }
                for name, f in all_formats().items()
            },
            "specs": {sid: spec.to_json() for sid, spec in self.specs.items()},
            "cells": cells,
            "failure": self._failure_json(),
            "summary": self.summary(),
        }

    def _failure_json(self) -> dict[str, Any] | None:
        if self.failure is None:
            return None
        return {
            "spec_id": self.failure.id,
            "spec": self.failure.to_json(),
            "detail": self.failure_detail,
            "reproduce": reproduce_command(Path(self.run.get("out", ".")) / FAILING_SPEC),
        }

    def to_markdown(self) -> str:
        s = self.summary()
        verdict = "passed" if s["passed"] else "FAILED"
        lines = [
            f"# ckpt-compat report: {verdict}",
            "",
            f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}; "
            f"{s['specs']} spec(s), {s['cells']} cell(s), {s['unexpected']} unexpected, "
            f"{s['known_issues']} known issue(s).",
            "",
            table(self.results),
        ]
        caveats = {
            n: "; ".join(filter(None, [f"deprecated: {f.deprecated}" if f.deprecated else "", f.caveat or ""]))
            for n, f in all_formats().items()
            if f.deprecated or f.caveat
        }
        if caveats:
            lines += ["", "## Caveats", ""] + [f"- `{n}`: {why}" for n, why in caveats.items()]
        unavailable = {n: why for n, f in all_formats().items() if (why := f.why_unavailable())}
        if unavailable:
            lines += ["", "## Unavailable formats", ""] + [f"- `{n}`: {why}" for n, why in unavailable.items()]
        known: dict[str, list[CellResult]] = {}
        for r in self.results:
            if r.not_ok and (e := self.expectations.explain(r)) is not None:
                known.setdefault(e.id, []).append(r)
        if known:
            lines += ["", "## Known issues seen", ""]
            for e in self.expectations.entries:
                if e.id in known:
                    links = ", ".join(f"<{link}>" for link in e.links)
                    lines.append(f"- **{e.id}** ({len(known[e.id])} cells): {' '.join(e.reason.split())} {links}")
        # Reasons read "why — specifics"; group on the why.
        unsupported = Counter(r.detail.split(" — ")[0] for r in self.results if r.outcome is Outcome.UNSUPPORTED)
        if unsupported:
            lines += ["", "## Unsupported by design", ""]
            lines += [f"- {n} cell(s): {detail}" for detail, n in unsupported.most_common(12)]
        bad = self.unexpected()
        if bad:
            lines += ["", "## Unexpected outcomes", "", "| spec | cell | outcome | detail |", "|---|---|---|---|"]
            for r in bad[:50]:
                devices = f"{r.cell.producer.device}→{r.cell.consumer.device}"
                where = f"{r.cell.variant} {devices} {r.cell.options.get('map_location', '')}"
                lines.append(f"| `{r.cell.spec_id}` | {where} | {r.outcome.value} | {_md(r.detail)} |")
        if self.failure is not None:
            lines += [
                "",
                "## Minimal failing spec",
                "",
                f"{self.failure_detail}",
                "",
                "```json",
                self.failure.dumps(),
                "```",
                "",
                f"Reproduce: `{reproduce_command(Path(self.run.get('out', '.')) / FAILING_SPEC)}`",
            ]
        return "\n".join(lines) + "\n"

    def write_results(self, path: Path) -> None:
        """The JSON alone, to a file: what `verify` writes and `report` / `gate` read."""
        write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    def write(self, out: Path) -> list[Path]:
        """Write report.json, report.md (and failing-spec.json) atomically; return the paths."""
        out.mkdir(parents=True, exist_ok=True)
        written = [out / "report.json", out / "report.md"]
        write_text(written[0], json.dumps(self.to_json(), indent=1, sort_keys=False) + "\n")
        write_text(written[1], self.to_markdown())
        if self.failure is not None:
            written.append(out / FAILING_SPEC)
            write_text(written[-1], self.failure.dumps() + "\n")
        return written


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:300]


def table(results: Sequence[CellResult]) -> str:
    """Format variant by outcome counts as a Markdown table (also readable on a terminal)."""
    by_format = counts(results)
    outcomes = [o.value for o in Outcome if any(o.value in c for c in by_format.values())]
    header = "| format [load options] | " + " | ".join(outcomes) + " |"
    rows = [header, "|" + "---|" * (len(outcomes) + 1)]
    for variant, c in by_format.items():
        rows.append(f"| {variant} | " + " | ".join(str(c.get(o, "")) for o in outcomes) + " |")
    return "\n".join(rows)


def reproduce_command(spec_path: Path) -> str:
    return f"ckpt-compat check --spec {spec_path}"


# --------------------------------------------------------------------------- cross-version matrix


def load_results(paths: Sequence[Path]) -> list[CellResult]:
    """Cells from report.json / results.json files; raises ValueError naming a bad file."""
    results: list[CellResult] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("schema") != SCHEMA:
                raise ValueError(f"not a {SCHEMA} file")
            results += [CellResult.from_json(c) for c in data["cells"]]
        except OSError as exc:
            raise ValueError(f"{path}: cannot read it ({exc.strerror})") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a results file written by ckpt-compat ({exc})") from exc
    return results


def _verdict(entry: MatrixEntry, expectations: Expectations) -> tuple[str, int, set[str]]:
    """(symbol, unexplained count, known issue ids) for one matrix entry."""
    bad = [r for r in entry.results if r.not_ok]
    known = {e.id for r in bad if (e := expectations.explain(r)) is not None}
    unexplained = sum(expectations.explain(r) is None for r in bad)
    symbol = "❌" if unexplained else ("⚠️" if bad else "✅")
    return symbol, unexplained, known


def matrix_markdown(results: Sequence[CellResult], expectations: Expectations) -> str:
    matrix = Matrix.of(results)
    lines = [
        "# ckpt-compat cross-version matrix",
        "",
        "Rows: the torch release that wrote the file. Columns: the torch release that loaded it.",
        "✅ every cell ok · ⚠️ non-ok cells, all explained by known issues · ❌ unexplained non-ok cells.",
    ]
    findings: dict[tuple[str, str, str], set[str]] = {}
    for fmt in sorted(matrix.grid):
        consumers = matrix.consumers(fmt)
        lines += [
            "",
            f"## {fmt}",
            "",
            "| producer \\ consumer | " + " | ".join(consumers) + " |",
            "|---|" + "---|" * len(consumers),
        ]
        for producer in matrix.producers(fmt):
            row = []
            for consumer in consumers:
                entry = matrix.grid[fmt].get((producer, consumer))
                if entry is None:
                    row.append("")
                    continue
                symbol, _, _ = _verdict(entry, expectations)
                ok = entry.outcomes().get("ok", 0)
                row.append(f"{symbol} {ok}/{len(entry.results)}")
                for r in entry.results:
                    if r.not_ok:
                        e = expectations.explain(r)
                        key = (f"{r.cell.variant}", r.outcome.value, e.id if e else "UNEXPLAINED")
                        findings.setdefault(key, set()).add(f"{producer}→{consumer}")
            lines.append(f"| **{producer}** | " + " | ".join(row) + " |")
    if findings:
        lines += [
            "",
            "## Non-ok cells",
            "",
            "| format [load options] | outcome | known issue | producer→consumer |",
            "|---|---|---|---|",
        ]
        for (variant, outcome, known), pairs in sorted(findings.items()):
            shown = ", ".join(sorted(pairs, key=lambda p: [version_key(v) for v in p.split("→")])[:12])
            more = f" (+{len(pairs) - 12})" if len(pairs) > 12 else ""
            lines.append(f"| {variant} | {outcome} | {known} | {shown}{more} |")
    used = {k for _, _, k in findings}
    cited = [e for e in expectations.entries if e.id in used]
    if cited:
        lines += ["", "## Known issues", ""]
        lines += [f"- **{e.id}**: {' '.join(e.reason.split())} " + " ".join(f"<{u}>" for u in e.links) for e in cited]
    return "\n".join(lines) + "\n"


def matrix_json(results: Sequence[CellResult], expectations: Expectations) -> dict[str, Any]:
    matrix = Matrix.of(results)
    formats: dict[str, Any] = {}
    for fmt, grid in sorted(matrix.grid.items()):
        cells = []
        for (producer, consumer), entry in sorted(grid.items()):
            _, unexplained, known = _verdict(entry, expectations)
            cells.append(
                {
                    "producer": producer,
                    "consumer": consumer,
                    "outcomes": entry.outcomes(),
                    "unexplained": unexplained,
                    "known_issues": sorted(known),
                }
            )
        formats[fmt] = {"producers": matrix.producers(fmt), "consumers": matrix.consumers(fmt), "cells": cells}
    return {"schema": "ckpt-compat/matrix/1", "formats": formats}


def matrix_junit(results: Sequence[CellResult], expectations: Expectations) -> str:
    """One testsuite per format, one testcase per producer→consumer pair and load variant."""
    root = ET.Element("testsuites", name="ckpt-compat")
    groups: dict[str, dict[str, list[CellResult]]] = {}
    for r in results:
        name = f"{release(r.cell.producer.torch)} -> {release(r.cell.consumer.torch)} {r.cell.variant}"
        groups.setdefault(r.cell.format, {}).setdefault(name, []).append(r)
    for fmt, cases in sorted(groups.items()):
        failures = 0
        suite = ET.SubElement(root, "testsuite", name=fmt, tests=str(len(cases)))
        for name, cells in sorted(cases.items()):
            case = ET.SubElement(suite, "testcase", classname=f"ckpt_compat.{fmt}", name=name)
            unexplained = [r for r in cells if r.not_ok and expectations.explain(r) is None]
            if unexplained:
                failures += 1
                failure = ET.SubElement(case, "failure", message=f"{len(unexplained)} unexplained non-ok cell(s)")
                failure.text = "\n".join(f"{r.cell.spec_id} {r.outcome.value}: {r.detail}" for r in unexplained[:20])
            elif any(r.not_ok for r in cells):
                ids = sorted({e.id for r in cells if (e := expectations.explain(r)) is not None})
                ET.SubElement(case, "skipped", message="known issues: " + ", ".join(ids))
        suite.set("failures", str(failures))
    return ET.tostring(root, encoding="unicode") + "\n"


def write_matrix(results: Sequence[CellResult], expectations: Expectations, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "matrix.md", out / "matrix.json", out / "junit.xml"]
    write_text(paths[0], matrix_markdown(results, expectations))
    write_text(paths[1], json.dumps(matrix_json(results, expectations), indent=1) + "\n")
    write_text(paths[2], matrix_junit(results, expectations))
    return paths
