"""Reports: ``report.json`` (stable schema, see ``schemas/report.schema.json``) and ``report.md``."""

from __future__ import annotations

import functools
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
from ckpt_compat.errorinfo import markdown
from ckpt_compat.expectations import Expectations, Judgement, judge
from ckpt_compat.formats import all_formats, availability
from ckpt_compat.matrix import counts
from ckpt_compat.results import SCHEMA, CellResult, Outcome
from ckpt_compat.specs import ModelSpec

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
    # check --model: a format refusing a user's model by design (`unsupported`) is a limitation of
    # that format, reported but not failed; generated specs keep a known issue for each refusal.
    limitations_pass: bool = False

    @functools.cached_property
    def judgements(self) -> list[Judgement]:
        return judge(self.results, self.expectations)

    def unexpected(self) -> list[Judgement]:
        return [
            j
            for j in self.judgements
            if not j.explained and not (self.limitations_pass and j.result.outcome is Outcome.UNSUPPORTED)
        ]

    @property
    def passed(self) -> bool:
        return not self.unexpected() and self.failure is None

    def summary(self) -> dict[str, Any]:
        return {
            "cells": len(self.results),
            "specs": len(self.specs),
            "outcomes": dict(Counter(r.outcome.value for r in self.results)),
            "by_format": counts(self.results),
            "known_issues": sum(j.result.not_ok and j.explained for j in self.judgements),
            "unexpected": len(self.unexpected()),
            "unsafe": sum(j.unsafe for j in self.judgements),
            "passed": self.passed,
        }

    def to_json(self) -> dict[str, Any]:
        cells = [{**j.result.to_json(), "judgement": j.to_json()} for j in self.judgements]
        used = {i for j in self.judgements for i in j.causes}
        return {
            "schema": SCHEMA,
            "tool": {"name": "ckpt-compat", "version": __version__},
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "run": self.run,
            "formats": {
                name: {
                    "available": (why := availability(f)[0]) is None,
                    "reason": why or "",
                    "description": f.description,
                    "deprecated": f.deprecated,
                    "caveat": f.caveat,
                }
                for name, f in all_formats().items()
            },
            "specs": {sid: spec.to_json() for sid, spec in self.specs.items()},
            "known_issues": {e.id: e.to_json() for e in self.expectations.entries if e.id in used},
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
            lines += ["", "## Caveats", ""] + [f"- `{n}`: {markdown(why, 1000)}" for n, why in caveats.items()]
        unavailable = {n: why for n, f in all_formats().items() if (why := availability(f)[0])}
        if unavailable:
            lines += ["", "## Unavailable formats", ""] + [
                f"- `{n}`: {markdown(why, 1000)}" for n, why in unavailable.items()
            ]
        unsafe = [j for j in self.judgements if j.unsafe]
        if unsafe:
            lines += ["", "## ‼️ Unsafe loads", ""]
            by_variant: dict[str, list[Judgement]] = {}
            for j in unsafe:
                by_variant.setdefault(j.result.cell.variant, []).append(j)
            for variant, group in by_variant.items():
                why = next((n for n in group[0].result.notes if n.startswith("UNSAFE")), "")
                lines.append(f"- ‼️ {markdown(variant)}: {len(group)} cell(s): {markdown(why)}")
        known: Counter[str] = Counter(i for j in self.judgements if j.result.not_ok and j.explained for i in j.causes)
        if known:
            lines += ["", "## Known issues seen", ""]
            for e in self.expectations.entries:
                if e.id in known:
                    links = ", ".join(f"<{link}>" for link in e.links)
                    lines.append(f"- **{e.id}** ({known[e.id]} cells): {e.title}. {e.reason} {links}")
        bad = self.unexpected()
        if bad:
            lines += ["", "## Unexpected outcomes", "", "| spec | cell | outcome | unexplained |", "|---|---|---|---|"]
            for j in bad[:50]:
                r = j.result
                devices = f"{r.cell.producer.device}→{r.cell.consumer.device}"
                where = f"{r.cell.variant} {devices} {r.cell.options.get('map_location', '')}"
                what = "; ".join(str(p) for p in j.unexplained_parts()) or r.detail
                lines.append(
                    f"| `{markdown(r.cell.spec_id)}` | {markdown(where)} | {r.outcome.value} | {markdown(what)} |"
                )
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
        write_text(path, dumps(self.to_json()))

    def write(self, out: Path) -> list[Path]:
        """Write report.json, report.md (and failing-spec.json) atomically; return the paths."""
        out.mkdir(parents=True, exist_ok=True)
        written = [out / "report.json", out / "report.md"]
        write_text(written[0], dumps(self.to_json()))
        write_text(written[1], self.to_markdown())
        if self.failure is not None:
            written.append(out / FAILING_SPEC)
            write_text(written[-1], self.failure.dumps() + "\n")
        return written


def dumps(data: dict[str, Any]) -> str:
    """A report as JSON, a line per top-level key and per cell: readable and diffable, and written
    by the C encoder (``indent=`` falls back to pure Python: seconds for a run's 17,000 cells)."""

    def value(v: Any) -> str:
        if isinstance(v, list) and v:
            return "[\n  " + ",\n  ".join(json.dumps(x) for x in v) + "\n ]"
        return json.dumps(v)

    return "{\n " + ",\n ".join(f"{json.dumps(k)}: {value(v)}" for k, v in data.items()) + "\n}\n"


def table(results: Sequence[CellResult]) -> str:
    """Format variant by outcome counts as a Markdown table (also readable on a terminal)."""
    by_format = counts(results)
    outcomes = [o.value for o in Outcome if any(o.value in c for c in by_format.values())]
    header = "| format [load options] | " + " | ".join(outcomes) + " |"
    rows = [header, "|" + "---|" * (len(outcomes) + 1)]
    for variant, c in by_format.items():
        rows.append(f"| {markdown(variant)} | " + " | ".join(str(c.get(o, "")) for o in outcomes) + " |")
    return "\n".join(rows)


def reproduce_command(spec_path: Path) -> str:
    return f"ckpt-compat check --spec {spec_path}"
