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
    known = [c for c in data["cells"] if c["known_issue"]]
    assert known and all(c["outcome"] != "ok" for c in known)
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


def test_matrix_outputs_agree(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    from ckpt_compat.matrix import Cell, CellResult, Endpoint, Outcome
    from ckpt_compat.report import write_matrix

    def cell(producer: str, consumer: str, outcome: Outcome, detail: str = "") -> CellResult:
        c = Cell("s", "torch_zip", Endpoint(producer, "cpu"), Endpoint(consumer, "cpu"), {"weights_only": True})
        return CellResult(c, outcome, detail)

    results = [
        cell("2.0.1", "2.13.0+cpu", Outcome.OK),
        cell("2.13.0+cpu", "2.0.1", Outcome.LOAD_ERROR, "AttributeError: Can't get attribute '_rebuild_tensor_v3'"),
        cell("2.13.0+cpu", "2.13.0+cpu", Outcome.MISMATCH, "state_dict['w']: bytes"),
    ]
    expectations = Expectations.load([Path(__file__).parents[1] / "fixtures" / "expectations.toml"])
    md, js, junit = write_matrix(results, expectations, tmp_path)
    data = json.loads(js.read_text())["formats"]["torch_zip"]
    assert data["producers"] == data["consumers"] == ["2.0.1", "2.13.0"]
    by_pair = {(c["producer"], c["consumer"]): c for c in data["cells"]}
    assert by_pair[("2.13.0", "2.0.1")]["known_issues"] == ["dtype-newer-than-consumer"]
    assert by_pair[("2.13.0", "2.13.0")]["unexplained"] == 1
    text = md.read_text()
    assert "| **2.0.1** | ✅ 1/1 |" in text.replace("|  |", "|") or "✅ 1/1" in text
    assert "❌ 0/1" in text and "⚠️ 0/1" in text
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    failed = [t for t in suite.iter("testcase") if t.find("failure") is not None]
    assert [t.get("name") for t in failed] == ["2.13.0 -> 2.13.0 torch_zip[weights_only]"]
