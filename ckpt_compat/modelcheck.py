"""A user's model through every format, device and load option: the verdict and its rendering.

Behind ``ckpt-compat check --model`` and the ``checkpoint_roundtrip`` pytest fixture. Every cell
is judged once, on typed data:

- ``ok``;
- a **limitation**: the format refuses this model or option by design (`Outcome.UNSUPPORTED`:
  safetensors and shared tensors, torch.export and a forward it cannot trace), with its reason;
- a **known issue**: explained by an entry of the known-issue list (built-in, plugins', the user's);
- an **incompatibility**: anything else. One of these fails the check (exit 1).
"""

from __future__ import annotations

import enum
import platform
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckpt_compat import __version__
from ckpt_compat.differences import render_path
from ckpt_compat.errorinfo import markdown as escape_markdown
from ckpt_compat.errorinfo import printable
from ckpt_compat.expectations import Expectations, Judgement, judge
from ckpt_compat.formats import Format
from ckpt_compat.results import Outcome
from ckpt_compat.usermodel import UserModel


class Verdict(str, enum.Enum):
    OK = "ok"
    LIMITATION = "limitation"
    KNOWN_ISSUE = "known issue"
    INCOMPATIBLE = "incompatible"

    def __str__(self) -> str:
        return self.value


def verdict_of(judgement: Judgement) -> Verdict:
    outcome = judgement.result.outcome
    if outcome is Outcome.OK:
        return Verdict.OK
    if outcome is Outcome.UNSUPPORTED:
        return Verdict.LIMITATION
    return Verdict.KNOWN_ISSUE if judgement.explained else Verdict.INCOMPATIBLE


@dataclass
class ModelCheck:
    """The judged cells of one model's round trip on the running torch."""

    model: UserModel
    judgements: Sequence[Judgement]
    seconds: float
    formats: Sequence[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(verdict_of(j) is not Verdict.INCOMPATIBLE for j in self.judgements)

    def by_verdict(self, verdict: Verdict) -> list[Judgement]:
        return [j for j in self.judgements if verdict_of(j) is verdict]

    def counts(self) -> dict[str, int]:
        return {str(v): n for v, n in Counter(verdict_of(j) for j in self.judgements).items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "ckpt-compat/model-check/1",
            "tool": {"name": "ckpt-compat", "version": __version__},
            "torch": torch.__version__,
            "python": platform.python_version(),
            "model": self.model.id,
            "seconds": round(self.seconds, 2),
            "passed": self.passed,
            "counts": self.counts(),
            "cells": [
                {**j.result.to_json(), "verdict": str(verdict_of(j)), "judgement": j.to_json()} for j in self.judgements
            ],
        }

    def failure_message(self) -> str:
        """Every incompatibility with every difference, for an assertion or a terminal."""
        return "\n".join(_describe(j) for j in self.by_verdict(Verdict.INCOMPATIBLE))

    def render(self, markdown: bool = False) -> str:
        counts = self.counts()
        head = (
            f"{self.model.id}: {'compatible' if self.passed else 'INCOMPATIBLE'} on torch {torch.__version__} "
            f"({len(self.judgements)} cells in {self.seconds:.1f}s: "
            + ", ".join(f"{counts.get(str(v), 0)} {v}" for v in Verdict)
            + ")"
        )
        lines = [f"# {head}" if markdown else head, ""]
        lines += _format_table(self.judgements, self.formats)
        for title, verdict in (
            ("Incompatibilities (fail the check)", Verdict.INCOMPATIBLE),
            ("Known issues", Verdict.KNOWN_ISSUE),
            ("Limitations (the format refuses this by design)", Verdict.LIMITATION),
        ):
            found = _distinct(self.by_verdict(verdict))
            if found:
                lines += ["", f"## {title}" if markdown else f"{title}:", ""]
                described = (_describe(j, verdict is Verdict.KNOWN_ISSUE) for j in found)  # messages: one line each
                lines += [f"- {escape_markdown(d, 2000)}" if markdown else f"  {printable(d)}" for d in described]
        return "\n".join(lines) + "\n"


def _format_table(judgements: Sequence[Judgement], formats: Sequence[str]) -> list[str]:
    rows = [["format", *(str(v) for v in Verdict)]]
    by_format: dict[str, Counter[Verdict]] = {name: Counter() for name in formats}
    for j in judgements:
        by_format.setdefault(j.result.cell.format, Counter())[verdict_of(j)] += 1
    for name, c in by_format.items():
        rows.append([name, *(str(c.get(v, "")) for v in Verdict)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    return [out[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *out[1:]]


def _distinct(judgements: Iterable[Judgement]) -> list[Judgement]:
    """One cell per (load variant, what went wrong): devices and map_location spellings that fail
    the same way are one line."""
    seen: dict[tuple[str, str], Judgement] = {}
    for j in judgements:
        seen.setdefault((j.result.cell.variant, _what(j)), j)
    return list(seen.values())


def _what(j: Judgement) -> str:
    r = j.result
    if r.differences:
        return "; ".join(f"{render_path(d.path)}: {d.kind}: {d.detail}" for d in r.differences)
    return str(r.error) if r.error else r.outcome.value


def _describe(j: Judgement, known: bool = False) -> str:
    cell = j.result.cell
    where = f"{cell.variant} -> {cell.consumer.device} (map_location {cell.options.get('map_location', '-')})"
    causes = f" [known issue: {', '.join(j.causes)}]" if known and j.causes else ""
    return f"{where}: {j.result.outcome.value}{causes}: {_what(j)}"


def check_model(
    model: UserModel,
    formats: Sequence[Format],
    expectations: Expectations,
    workdir: Path,
    *,
    producers: list[str] | None = None,
    consumers: list[str] | None = None,
) -> ModelCheck:
    """Round-trip ``model`` through ``formats`` on the running torch and judge every cell."""
    from ckpt_compat.roundtrip import check_spec

    started = time.perf_counter()
    model.check_forward(model.check_deterministic())
    results = check_spec(model, formats, workdir, producers=producers, consumers=consumers)
    return ModelCheck(model, judge(results, expectations), time.perf_counter() - started, [f.name for f in formats])
