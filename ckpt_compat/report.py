"""Reports: ``report.json`` (stable schema, see ``schemas/report.schema.json``) and ``report.md``."""

from __future__ import annotations

import json
import platform
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
from ckpt_compat.matrix import CellResult, Outcome, counts
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
