"""The cross-version matrix as people and CI read it: ``matrix.md`` (the release view: one screen
of what changes with versions, fit for a GitHub step summary), ``matrix.json`` and ``junit.xml``
(one test case per format x producer x consumer)."""

from __future__ import annotations

import json
import string
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ckpt_compat import versions
from ckpt_compat.atomic import write_text
from ckpt_compat.errorinfo import markdown, printable, short
from ckpt_compat.expectations import Judgement, Verdict
from ckpt_compat.matrix import ReleaseView, Status, Use, finding_status, release_view

MATRIX_SCHEMA = "ckpt-compat/matrix/2"
DASH = "\u2013"  # en dash, for release ranges
LEGEND = (
    "✅ as in the releases' own round trips · — this torch cannot read the format at all · ☑️ ok, but on "
    "fewer checks than its own round trip (this torch cannot rebuild the model: digests only) · ❌ a "
    "cross-version break, with its cause · ‼️ unexplained (?), silent (loads, but values or keys change) "
    "or unsafe (code ran under a safe loader)"
)


def _letters(view: ReleaseView) -> dict[str, str]:
    """A short label per finding, most cells first, for the grids."""
    ordered = sorted(view.findings.values(), key=lambda u: (-u.cells, u.expectation.id))
    labels = string.ascii_uppercase + string.ascii_lowercase
    return {u.expectation.id: labels[i] if i < len(labels) else f"#{i}" for i, u in enumerate(ordered)}


def pairs_in_words(pairs: set[tuple[str, str]], releases: Sequence[str]) -> str:
    """``{(2.8, 2.4), (2.8, 2.6), (2.10, 2.4), (2.10, 2.6)}`` -> ``2.8.0, 2.10.0 → 2.4.1, 2.6.0``;
    runs of consecutive releases become ranges."""
    by_producer: dict[str, set[str]] = {}
    for p, c in pairs:
        by_producer.setdefault(p, set()).add(c)
    groups: dict[frozenset[str], list[str]] = {}
    for p, cs in by_producer.items():
        groups.setdefault(frozenset(cs), []).append(p)
    parts = [
        f"{_span(ps, releases)} → {_span(list(cs), releases)}"
        for cs, ps in sorted(groups.items(), key=lambda g: versions.key(min(g[1], key=versions.key)))
    ]
    return "; ".join(parts)


def _span(items: Sequence[str], releases: Sequence[str]) -> str:
    """Releases in order, three or more neighbours (in ``releases``) written as a range."""
    index = {r: i for i, r in enumerate(releases)}
    runs: list[list[str]] = []
    for r in sorted(items, key=versions.key):
        if runs and index[r] == index[runs[-1][-1]] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    return ", ".join(f"{run[0]}{DASH}{run[-1]}" if len(run) > 2 else ", ".join(run) for run in runs)


def matrix_markdown(view: ReleaseView, verdict: Verdict) -> str:
    letters = _letters(view)
    releases = view.releases()
    unexplained, unsafe = len(verdict.unexplained), len(verdict.unsafe)
    cells = len(verdict.judgements)
    head = "passed" if verdict.passed() else "FAILED"
    lines = [
        "# ckpt-compat: what changes with torch versions",
        "",
        f"**Gate {head}**: {cells} cells; {unexplained} unexplained, ‼️ {unsafe} unsafe; "
        f"{len(view.findings)} cross-version finding(s), {len(view.limitations)} limitation(s) of single releases. "
        f"Rows: the torch that wrote the file; columns: the torch that loaded it ({', '.join(releases)}).",
        "",
        LEGEND,
    ]
    steady = [f for f in sorted(view.grid) if view.worst(f) < Status.BREAK]
    tables: dict[tuple[str, ...], list[str]] = {}  # formats whose grids read the same share one table
    for fmt in sorted(view.grid):
        if fmt not in steady:
            tables.setdefault(tuple(_grid(view, fmt, letters)), []).append(fmt)
    for rows, formats in tables.items():
        lines += ["", "**" + ", ".join(formats) + "**", "", *rows]
    if steady:
        partial = [f for f in steady if view.worst(f) is not Status.SAME]
        lines += ["", "Every release pair as in its own round trip: " + ", ".join(f"`{f}`" for f in steady)]
        if partial:
            lines[-1] += f" (with ☑️ or — cells: {', '.join(f'`{f}`' for f in partial)})"
    lines += _limitations(view, releases)
    lines += _findings(view, letters, releases)
    lines += _hostile(view, releases)
    lines += _unexplained(verdict.unexplained)
    return "\n".join(lines) + "\n"


_HOSTILE_SYMBOL = {Status.SAME: "✅", Status.UNSAFE: "‼️ ran", Status.UNAVAILABLE: "—", Status.UNEXPLAINED: "‼️ ?"}


def _hostile(view: ReleaseView, releases: Sequence[str]) -> list[str]:
    """`ckpt-compat security`: which release's own loader runs which payload class."""
    if not view.hostile:
        return []
    shown = [r for r in releases if any(r in by_release for by_release in view.hostile.values())]
    lines = [
        "",
        "## Hostile files: does this release's safest loader run them? (`ckpt-compat security`)",
        "",
        "✅ blocked (or, for a bomb, loaded in time) · ‼️ ran: the payload's code ran · — this torch "
        "cannot write or read the class",
        "",
        "| payload \\ torch | " + " | ".join(shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    causes: dict[str, Any] = {}
    for payload, by_release in sorted(view.hostile.items()):
        cells = []
        for release in shown:
            if release not in by_release:
                cells.append("")
                continue
            status, j = by_release[release]
            cells.append(_HOSTILE_SYMBOL.get(status, f"❌ {j.result.outcome.value}"))
            for e in j.by if status is Status.UNSAFE else ():
                if e is not None:
                    causes.setdefault(e.id, (e, set()))[1].add(release)
        lines.append(f"| `{payload}` | " + " | ".join(cells) + " |")
    lines.append("")
    for e, where in causes.values():
        links = " ".join(f"<{u}>" for u in e.links)
        lines.append(f"- **{e.title}** (torch {_span(sorted(where, key=versions.key), releases)}; `{e.id}`). {links}")
    return lines


def _grid(view: ReleaseView, fmt: str, letters: dict[str, str]) -> list[str]:
    consumers = view.consumers(fmt)
    rows = ["| wrote \\ loaded | " + " | ".join(consumers) + " |", "|---|" + "---|" * len(consumers)]
    for producer in view.producers(fmt):
        pairs = [view.grid[fmt].get((producer, consumer)) for consumer in consumers]
        cells = ["" if p is None else _grid_cell(p.status, p.causes(), letters) for p in pairs]
        rows.append(f"| **{producer}** | " + " | ".join(cells) + " |")
    return rows


def _grid_cell(status: Status, causes: list[str], letters: dict[str, str]) -> str:
    shown = ",".join(sorted(letters[c] for c in causes[:3] if c in letters))
    if status is Status.UNEXPLAINED:
        return "‼️ ?" + (f",{shown}" if shown else "")
    return f"{status.symbol} {shown}" if shown and status >= Status.BREAK else status.symbol


def _findings(view: ReleaseView, letters: dict[str, str], releases: Sequence[str]) -> list[str]:
    if not view.findings:
        return ["", "No cross-version break, silent change or unsafe load: every pair behaves as its own round trip."]
    lines = ["", "## Cross-version findings", ""]
    for use in sorted(view.findings.values(), key=lambda u: letters[u.expectation.id]):
        e = use.expectation
        kind = {Status.UNSAFE: "‼️ unsafe", Status.SILENT: "‼️ silent"}.get(finding_status(e), "❌")
        formats = ", ".join(sorted({v.split("[")[0] for v in use.variants}))
        links = " ".join(f"<{u}>" for u in e.links)
        lines.append(
            f"- **{letters[e.id]}** {kind} **{e.title}**: {pairs_in_words(use.pairs, releases)} "
            f"({formats}; {use.cells} cells; `{e.id}`). {links}"
        )
    return lines


def _limitations(view: ReleaseView, releases: Sequence[str]) -> list[str]:
    if not view.limitations:
        return []
    lines = ["", "## Limitations a release shows in its own round trip too (each listed once)", ""]
    for use in sorted(view.limitations.values(), key=lambda u: u.expectation.id):
        e = use.expectation
        consumers = sorted({c for _, c in use.pairs}, key=versions.key)
        where = "every release" if len(consumers) == len(releases) else f"consumers {_span(consumers, releases)}"
        variants = ", ".join(f"`{v}`" for v in sorted(use.variants)[:4]) + (" ..." if len(use.variants) > 4 else "")
        lines.append(f"- `{e.id}`: {e.title} ({where}; {variants}; {use.cells} cells). <{e.links[0]}>")
    return lines


def _unexplained(unexplained: Sequence[Judgement]) -> list[str]:
    if not unexplained:
        return []
    lines = [
        "",
        f"## ‼️ Unexplained ({len(unexplained)} cells)",
        "",
        "| wrote → loaded | cell | outcome | unexplained |",
        "|---|---|---|---|",
    ]
    for j in unexplained[:40]:
        c = j.result.cell
        what = "; ".join(str(p) for p in j.unexplained_parts()) or j.result.detail or "(no detail)"
        if j.result.truncated:
            what = "cut short in a schema-1 file: " + what
        located = markdown(f"{c.consumer.device} {c.options.get('map_location', '')}")
        where = f"{markdown(c.variant)} `{markdown(c.spec_id)}` {located}"
        pair = f"{versions.release(c.producer.torch)} → {versions.release(c.consumer.torch)}"
        lines.append(f"| {pair} | {where} | {j.result.outcome.value} | {markdown(what)} |")
    if len(unexplained) > 40:
        lines.append(f"| ... | {len(unexplained) - 40} more | | |")
    return lines


def matrix_json(view: ReleaseView, verdict: Verdict) -> dict[str, Any]:
    formats: dict[str, Any] = {}
    for fmt, grid in sorted(view.grid.items()):
        formats[fmt] = {
            "producers": view.producers(fmt),
            "consumers": view.consumers(fmt),
            "pairs": [
                {
                    "producer": p,
                    "consumer": c,
                    "status": pair.status.name.lower(),
                    "cells": len(pair.statuses),
                    "by_status": {s.name.lower(): pair.count(s) for s in Status if pair.count(s)},
                    "causes": pair.causes(),
                }
                for (p, c), pair in sorted(
                    grid.items(), key=lambda kv: (versions.key(kv[0][0]), versions.key(kv[0][1]))
                )
            ],
        }

    def uses(table: dict[str, Use]) -> list[dict[str, Any]]:
        return [
            {
                **u.expectation.to_json(),
                "cells": u.cells,
                "variants": sorted(u.variants),
                "pairs": sorted([list(p) for p in u.pairs], key=lambda p: [versions.key(v) for v in p]),
            }
            for u in sorted(table.values(), key=lambda u: u.expectation.id)
        ]

    return {
        "schema": MATRIX_SCHEMA,
        "passed": verdict.passed(),
        "cells": len(verdict.judgements),
        "unexplained": len(verdict.unexplained),
        "unsafe": len(verdict.unsafe),
        "formats": formats,
        "findings": uses(view.findings),
        "limitations": uses(view.limitations),
    }


def matrix_junit(view: ReleaseView) -> str:
    """One testsuite per format, one testcase per producer → consumer pair: a failure where a cell
    is unexplained or unsafe; skipped (with the causes) where a known issue breaks the pair."""
    root = ET.Element("testsuites", name="ckpt-compat")
    for fmt, grid in sorted(view.grid.items()):
        suite = ET.SubElement(root, "testsuite", name=fmt, tests=str(len(grid)))
        failures = 0
        for (p, c), pair in sorted(grid.items(), key=lambda kv: (versions.key(kv[0][0]), versions.key(kv[0][1]))):
            case = ET.SubElement(suite, "testcase", classname=f"ckpt_compat.{fmt}", name=f"{p} -> {c}")
            bad = [(j, s) for j, s in zip(pair.judgements, pair.statuses, strict=True) if s >= Status.UNSAFE]
            if bad:
                failures += 1
                kind = "unexplained" if any(s is Status.UNEXPLAINED for _, s in bad) else "unsafe"
                failure = ET.SubElement(case, "failure", type=kind, message=f"{len(bad)} {kind} cell(s)")
                failure.text = "\n".join(
                    f"{j.result.cell.variant} {j.result.cell.spec_id} {s.name.lower()}: {short(j.result.detail, 300)}"
                    for j, s in bad[:20]
                )
            elif pair.status >= Status.BREAK:
                ET.SubElement(case, "skipped", message="known cross-version issue(s): " + ", ".join(pair.causes()))
        suite.set("failures", str(failures))
    return ET.tostring(root, encoding="unicode") + "\n"


def gate_lines(verdict: Verdict) -> list[str]:
    """What ``ckpt-compat gate`` prints: each unexplained part (grouped by format variant, release
    pair and outcome), each unsafe load, stale known issues, and the verdict."""
    lines = []
    groups: dict[tuple[str, str, str], list[Judgement]] = {}
    for j in verdict.unexplained:
        c = j.result.cell
        pair = f"{versions.release(c.producer.torch)}→{versions.release(c.consumer.torch)}"
        groups.setdefault((c.variant, pair, j.result.outcome.value), []).append(j)
    for (variant, pair, outcome), group in sorted(groups.items()):
        first = group[0]
        what = "; ".join(str(p) for p in first.unexplained_parts()) or first.result.detail
        if first.result.truncated:
            what = f"cut short in a schema-1 file, so it cannot be explained: {what}"
        lines.append(
            f"UNEXPLAINED {printable(variant)} {pair} {outcome} ({len(group)} cell(s)): {short(printable(what), 300)}"
        )
    unsafe: dict[tuple[str, str], list[Judgement]] = {}
    for j in verdict.unsafe:
        c = j.result.cell
        unsafe.setdefault((c.variant, versions.release(c.consumer.torch)), []).append(j)
    for (variant, consumer), group in sorted(unsafe.items()):
        known = ", ".join(group[0].causes) or "no known issue"
        lines.append(f"‼️ UNSAFE {printable(variant)} loaded by torch {consumer} ({len(group)} cell(s); {known})")
    for e in verdict.stale:
        lines.append(f"stale expectation {e.id} ({e.source}): matches no cell in these results")
    if not verdict.judgements:
        lines.append("NO CELLS: these results checked nothing; the gate fails (verify a corpus that lists files)")
    head = "passed" if verdict.passed() else "FAILED"
    lines.append(
        f"gate {head}: {len(verdict.judgements)} cells, {verdict.explained_not_ok} non-ok explained, "
        f"{len(verdict.unexplained)} unexplained, {len(verdict.unsafe)} unsafe"
    )
    return lines


def write_matrix(verdict: Verdict, out: Path) -> list[Path]:
    view = release_view(verdict.judgements)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "matrix.md", out / "matrix.json", out / "junit.xml"]
    write_text(paths[0], matrix_markdown(view, verdict))
    write_text(paths[1], json.dumps(matrix_json(view, verdict), indent=1) + "\n")
    write_text(paths[2], matrix_junit(view))
    return paths
