"""Collect, for every known issue, one real cell it explains: the evidence tests/test_expectations.py
holds each entry to (it must explain its evidence, and no corrupted neighbour of it).

    python scripts/collect_evidence.py compat/results/*.json ckpt-compat-report/report.json
    python scripts/collect_evidence.py --fresh ...   # drop the evidence of entries not found again

Reads results files (schema 2) from `nox -s compat` and `ckpt-compat run`, judges them with the
built-in and ckpt_compat/fixtures/expectations.toml known issues, and writes tests/evidence.json. A cell whose
every part that one known issue explains is preferred; cross-version cells before same-release
ones for entries that only hold across releases. An entry these files show no cell for keeps the
evidence tests/evidence.json already holds for it (a run of an older harness, or of a security
session not repeated), unless ``--fresh``; entries with no evidence at all are listed and fail the
test until a real run shows them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ckpt_compat.expectations import BUILTIN, Expectations, judge
from ckpt_compat.results import SCHEMA, load_results

ROOT = Path(__file__).parents[1]
OUT = ROOT / "tests" / "evidence.json"


def main(args: list[str]) -> int:
    fresh = "--fresh" in args
    paths = [a for a in args if a != "--fresh"]
    expectations = Expectations.load([BUILTIN, ROOT / "ckpt_compat" / "fixtures" / "expectations.toml"])
    chosen: dict[str, tuple[int, dict[str, object]]] = {}
    if not fresh and OUT.is_file():  # kept, ranked below anything these files show
        for cell in json.loads(OUT.read_text(encoding="utf-8"))["cells"]:
            chosen[str(cell.pop("evidence_for"))] = (10**6, cell)
    for j in judge(load_results([Path(p) for p in paths]), expectations):
        if not j.result.not_ok or not j.explained:
            continue
        for known in j.causes:
            # Fewer parts and a single cause make the plainest evidence.
            rank = len(j.parts) + (10 if len(j.causes) > 1 else 0)
            if known not in chosen or rank < chosen[known][0]:
                chosen[known] = (rank, j.result.to_json())
    missing = [e.id for e in expectations.entries if e.id not in chosen]
    cells = [chosen[e.id][1] | {"evidence_for": e.id} for e in expectations.entries if e.id in chosen]
    OUT.write_text(json.dumps({"schema": SCHEMA, "cells": cells}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(cells)} evidence cell(s) to {OUT}")
    if missing:
        print("no evidence for: " + ", ".join(missing), file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
