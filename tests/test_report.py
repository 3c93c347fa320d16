from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from ckpt_compat.expectations import Expectations
from ckpt_compat.formats import available_formats
from ckpt_compat.report import SCHEMA_FILE, Report
from ckpt_compat.roundtrip import check_spec
from tests.samples import load


def test_report_json_follows_the_published_schema(tmp_path: Path) -> None:
    spec = load("rich")
    results = check_spec(spec, available_formats(), tmp_path)
    report = Report(results, {spec.id: spec}, Expectations.load(), run={"command": "test", "out": str(tmp_path)})
    written = report.write(tmp_path / "out")
    data = json.loads(written[0].read_text())
    jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text()))
    assert data["summary"]["cells"] == len(results) == len(data["cells"])
    assert data["specs"][spec.id]["root"] == spec.root
    known = [c for c in data["cells"] if any(c["judgement"]["by"])]
    assert known and all(c["outcome"] != "ok" and c["judgement"]["explained"] for c in known)
    assert {i for c in known for i in c["judgement"]["by"]} <= set(data["known_issues"])
    assert all(c["checks"][0] == "load" for c in data["cells"] if c["outcome"] == "ok")
    markdown = written[1].read_text()
    assert "| format [load options] |" in markdown and "# ckpt-compat report: passed" in markdown


def test_failure_section_has_spec_and_reproduce_command(tmp_path: Path) -> None:
    spec = load("plain")
    report = Report(
        [],
        {spec.id: spec},
        Expectations(),
        run={"out": str(tmp_path)},
        failure=spec,
        failure_detail="torch_zip: mismatch",
    )
    paths = report.write(tmp_path)
    assert not report.passed
    assert (tmp_path / "failing-spec.json").read_text().strip() == spec.dumps()
    data = json.loads(paths[0].read_text())
    assert data["failure"]["reproduce"] == f"ckpt-compat check --spec {tmp_path / 'failing-spec.json'}"
    jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text()))
    assert "## Minimal failing spec" in paths[1].read_text()
