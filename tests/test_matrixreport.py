"""matrix.md (the release view), matrix.json, junit.xml and the gate's lines, from judged cells."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from ckpt_compat.differences import Difference
from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.expectations import Expectations, gate
from ckpt_compat.matrixreport import gate_lines, pairs_in_words, write_matrix
from ckpt_compat.results import Outcome
from tests.test_matrix import KNOWN, _r, sample

RELEASES = ["2.0.1", "2.2.2", "2.4.1", "2.6.0", "2.8.0"]


def test_release_pairs_in_words() -> None:
    pairs = {("2.8.0", "2.0.1"), ("2.8.0", "2.2.2"), ("2.8.0", "2.4.1"), ("2.6.0", "2.0.1"), ("2.6.0", "2.2.2")}
    assert pairs_in_words(pairs, RELEASES) == "2.6.0 → 2.0.1, 2.2.2; 2.8.0 → 2.0.1\u20132.4.1"
    assert pairs_in_words({("2.4.1", "2.0.1"), ("2.6.0", "2.0.1"), ("2.8.0", "2.0.1")}, RELEASES) == (
        "2.4.1\u20132.8.0 → 2.0.1"
    )


def _results() -> list:
    wrong = Difference("bytes", ("state_dict", "w"), "", elements=1, total=4, max_abs=1.0, max_ulp=1)
    return [
        *sample(unsafe_on="2.2.2"),
        _r("safetensors_file", "2.2.2", "2.13.0"),
        _r("safetensors_file", "2.13.0", "2.13.0", Outcome.MISMATCH, differences=(wrong,), spec="bad"),
    ]


def test_the_release_view_and_its_siblings_say_the_same(tmp_path: Path) -> None:
    path = tmp_path / "known.toml"
    path.write_text(KNOWN)
    verdict = gate(_results(), Expectations.load([path]), stale_if=lambda e: False)
    md, js, junit = write_matrix(verdict, tmp_path / "out")
    text = md.read_text()
    assert text.startswith("# ckpt-compat: what changes with torch versions\n")
    assert "**Gate FAILED**: 10 cells; 1 unexplained, ‼️ 1 unsafe" in text
    findings = text.split("## Cross-version findings")[1]
    assert "❌ **a dtype the consumer lacks**: 2.13.0 → 2.2.2" in findings
    assert "‼️ silent **a block's math changed**: 2.2.2 → 2.13.0" in findings
    assert "‼️ unsafe **runs code**: 2.2.2 → 2.2.2" in findings
    assert "## ‼️ Unexplained (1 cells)" in text and "| 2.13.0 → 2.13.0 | safetensors_file `bad`" in text
    data = json.loads(js.read_text())
    assert (data["passed"], data["unexplained"], data["unsafe"]) == (False, 1, 1)
    pairs = {(p["producer"], p["consumer"]): p for p in data["formats"]["torch_zip"]["pairs"]}
    assert pairs["2.13.0", "2.2.2"]["status"] == "break" and pairs["2.13.0", "2.2.2"]["causes"] == ["new-dtype"]
    assert {f["id"] for f in data["findings"]} == {"new-dtype", "math-changed", "runs-code"}
    suites = {s.get("name"): s for s in ET.parse(junit).getroot().iter("testsuite")}
    cases = {c.get("name"): c for c in suites["torchscript_script"].iter("testcase")}
    assert set(cases) == {"2.2.2 -> 2.2.2", "2.13.0 -> 2.13.0", "2.2.2 -> 2.13.0"}  # one per producer x consumer
    assert cases["2.2.2 -> 2.2.2"].find("failure").get("type") == "unsafe"  # type: ignore[union-attr]
    assert cases["2.2.2 -> 2.13.0"].find("skipped") is not None
    assert suites["safetensors_file"].get("failures") == "1"


def test_gate_lines_name_each_unexplained_part_and_each_unsafe_load(tmp_path: Path) -> None:
    path = tmp_path / "known.toml"
    path.write_text(KNOWN)
    verdict = gate(_results(), Expectations.load([path]), stale_if=lambda e: e.id == "old-consumer-bug")
    lines = gate_lines(verdict)
    assert lines[0].startswith(
        "UNEXPLAINED safetensors_file 2.13.0→2.13.0 mismatch (1 cell(s)): state_dict['w']: bytes"
    )
    assert "‼️ UNSAFE torchscript_script[weights_only] loaded by torch 2.2.2 (1 cell(s); runs-code)" in lines
    assert any(line.startswith("stale expectation old-consumer-bug") for line in lines)
    assert lines[-1] == "gate FAILED: 10 cells, 3 non-ok explained, 1 unexplained, 1 unsafe"


def test_hostile_file_cells_are_one_table_of_releases_not_grids(tmp_path: Path) -> None:
    from ckpt_compat.errorinfo import ErrorInfo
    from ckpt_compat.expectations import BUILTIN
    from ckpt_compat.matrix import SECURITY_SPEC

    ran = ErrorInfo("PayloadRan", "the payload's code ran (its canary fired)")
    dcp_ran = ErrorInfo(
        "PayloadRan",
        "the payload's code ran (its canary fired); then: CheckpointException: rank 0 failed: "
        "AttributeError: '_io.TextIOWrapper' object has no attribute 'storage_data'",
    )
    results = [
        _r("torchscript_dispatch", "2.4.1", "2.4.1", Outcome.UNSAFE, spec=SECURITY_SPEC, error=ran,
           options={"loader": "torch.load", "weights_only": True}),
        _r("torchscript_dispatch", "2.6.0", "2.6.0", spec=SECURITY_SPEC,
           options={"loader": "torch.load", "weights_only": True}),
        _r("dcp_metadata", "2.6.0", "2.6.0", Outcome.UNSAFE, spec=SECURITY_SPEC, error=dcp_ran,
           options={"loader": "dcp"}),
    ]  # fmt: skip
    verdict = gate(results, Expectations.load([BUILTIN]), stale_if=lambda _: False)
    assert verdict.passed() and len(verdict.unsafe) == 2
    write_matrix(verdict, tmp_path)
    page = (tmp_path / "matrix.md").read_text()
    assert "**torchscript_dispatch**" not in page  # no producer x consumer grid for them
    row = next(line for line in page.splitlines() if line.startswith("| `torchscript_dispatch`"))
    assert row == "| `torchscript_dispatch` | ‼️ ran | ✅ |"
    assert "(torch 2.4.1; `security-torchscript-dispatch`)" in page
    # The same unsafe load without the error the known issue names is not explained.
    bare = [*results[:1], _r("dcp_metadata", "2.6.0", "2.6.0", Outcome.UNSAFE, spec=SECURITY_SPEC,
                             error=ErrorInfo("PayloadRan", "something else"), options={"loader": "dcp"})]  # fmt: skip
    assert not gate(bare, Expectations.load([BUILTIN]), stale_if=lambda _: False).passed()


# What a hostile file (or a results file from elsewhere) can put in an error message: a line of
# its own, a table row, a heading saying the gate passed, and an HTML comment hiding the rest.
SPOOF = "boom |x|\n\n# ✅ Gate passed: every cell ok\n\n<!-- \\| `"


def test_a_message_cannot_add_a_line_a_cell_or_html_to_the_matrix_or_the_gate(tmp_path: Path) -> None:
    path = tmp_path / "known.toml"
    path.write_text(KNOWN)
    spoofed = _r("torch_zip", "2.13.0", "2.13.0", Outcome.LOAD_ERROR, error=ErrorInfo("RuntimeError", SPOOF))
    verdict = gate([*_results(), spoofed], Expectations.load([path]), stale_if=lambda e: False)
    text = write_matrix(verdict, tmp_path / "out")[0].read_text()
    assert "<!--" not in text and "Gate passed" not in text.split("\n## ‼️ Unexplained")[0]
    assert not any(line.startswith("# ✅") for line in text.splitlines())
    row = next(line for line in text.splitlines() if "boom" in line)
    assert row.startswith("| 2.13.0 → 2.13.0 | torch_zip `s` cpu") and row.count(" | ") == 3  # four cells, one row
    assert "boom \\|x\\| # ✅ Gate passed: every cell ok &lt;!-- \\\\\\| \\`" in row
    lines = gate_lines(verdict)
    assert all("\n" not in line for line in lines) and lines[-1].startswith("gate FAILED")
    assert any("boom |x| # ✅ Gate passed: every cell ok <!-- \\| `" in line for line in lines)


def test_results_that_hold_no_cell_fail_the_gate() -> None:
    verdict = gate([], Expectations(), stale_if=lambda e: False)
    assert not verdict.passed()
    assert gate_lines(verdict)[-2:] == [
        "NO CELLS: these results checked nothing; the gate fails (verify a corpus that lists files)",
        "gate FAILED: 0 cells, 0 non-ok explained, 0 unexplained, 0 unsafe",
    ]
