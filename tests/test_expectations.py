from __future__ import annotations

from pathlib import Path

import pytest

from ckpt_compat.expectations import BUILTIN, Expectations, ExpectationsError
from ckpt_compat.matrix import Cell, CellResult, Endpoint, Outcome


def _result(fmt: str, outcome: Outcome, detail: str, producer: str = "2.13.0+cpu", **options: object) -> CellResult:
    cell = Cell("s", fmt, Endpoint(producer, "cpu"), Endpoint("2.13.0+cpu", "cpu"), options)
    return CellResult(cell, outcome, detail)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "e.toml"
    path.write_text(text)
    return path


def test_matching_on_format_outcome_detail_versions_and_options(tmp_path: Path) -> None:
    e = Expectations.load(
        [
            _write(
                tmp_path,
                """
[[expect]]
id = "x"
format = ["torch_*"]
outcome = ["load_error"]
detail = "boom"
producer_torch = "<2.6"
options = { mmap = true }
reason = "because"
links = ["https://example.invalid/1"]
""",
            )
        ]
    )
    hit = _result("torch_zip", Outcome.LOAD_ERROR, "RuntimeError: boom", "2.4.1+cu121", mmap=True)
    assert e.explain(hit) is not None and e.explain(hit).id == "x"  # type: ignore[union-attr]
    for miss in [
        _result("safetensors_file", Outcome.LOAD_ERROR, "boom", "2.4.1", mmap=True),
        _result("torch_zip", Outcome.MISMATCH, "boom", "2.4.1", mmap=True),
        _result("torch_zip", Outcome.LOAD_ERROR, "bang", "2.4.1", mmap=True),
        _result("torch_zip", Outcome.LOAD_ERROR, "boom", "2.6.0", mmap=True),
        _result("torch_zip", Outcome.LOAD_ERROR, "boom", "2.4.1"),
    ]:
        assert e.explain(miss) is None, miss
    assert e.unused([hit]) == [] and [x.id for x in e.unused([])] == ["x"]


def test_builtin_file_loads_and_every_entry_has_a_reason() -> None:
    entries = Expectations.load([BUILTIN]).entries
    assert entries and all(e.reason and e.links for e in entries)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[expect]\n", "not valid TOML"),
        ('[[expect]]\nid = "a"\nformat = ["x"]\noutcome = ["ok"]\n', "missing required key 'reason'"),
        ('[[expect]]\nid = "a"\nformat = ["x"]\noutcome = ["nope"]\nreason = "r"\n', "'nope' is not a valid Outcome"),
    ],
)
def test_bad_files_name_the_file_and_entry(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ExpectationsError, match=message):
        Expectations.load([_write(tmp_path, text)])


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ExpectationsError, match="defined twice"):
        Expectations.load([BUILTIN, BUILTIN])


def test_each_difference_must_be_explained(tmp_path: Path) -> None:
    e = Expectations.load(
        [
            _write(
                tmp_path,
                """
[[expect]]
id = "a"
format = ["f"]
outcome = ["keys"]
detail = "^state_dict\\\\['x'\\\\]: unexpected: known$"
reason = "r"

[[expect]]
id = "b"
format = ["f"]
outcome = ["mismatch"]
detail = "^forward\\\\['y'\\\\]: bytes: known$"
reason = "r"
""",
            )
        ]
    )
    both = "state_dict['x']: unexpected: known; forward['y']: bytes: known; forward of 'z' not checked: a note"
    assert e.explain(_result("f", Outcome.KEYS, both)) is not None
    extra = both + "; state_dict['w']: bytes: something else"
    assert e.explain(_result("f", Outcome.KEYS, extra)) is None
    assert e.explain(_result("g", Outcome.KEYS, both)) is None


def test_cross_version_entries_never_explain_a_same_release_failure(tmp_path: Path) -> None:
    e = Expectations.load(
        [
            _write(
                tmp_path,
                """
[[expect]]
id = "x"
format = ["torch_export"]
outcome = ["load_error"]
cross_version = true
detail = "KeyError"
reason = "r"
""",
            )
        ]
    )
    across = _result("torch_export", Outcome.LOAD_ERROR, "KeyError: 33", producer="2.4.1")
    same = _result("torch_export", Outcome.LOAD_ERROR, "KeyError: 33", producer="2.13.0+cu130")
    assert e.explain(across) is not None and e.explain(same) is None
