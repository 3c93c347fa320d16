"""The known-issue file: every entry precise, every mistake refused with the file, entry and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt_compat.expectations import BUILTIN, Expectations, ExpectationsError
from tests.test_expectations import ERROR, HEAD, MISMATCH, _write


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[expect]\n", "not valid TOML"),
        (ERROR.replace('title = "t"\n', ""), "missing required key 'title'"),
        (ERROR.replace('consumer_torch = "any"\n', ""), "missing required key 'consumer_torch'"),
        (ERROR.replace('consumer_torch = "any"', 'consumer_torch = ""'), "must be a non-empty string"),
        (ERROR.replace("options = { mmap = true }\n", ""), "missing required key 'options'"),
        (ERROR.replace('formats = ["torch_zip"]', 'formats = ["torch_*"]'), "no patterns"),
        (ERROR.replace('direction = "any"', 'direction = "sideways"'), "not one of"),
        (ERROR.replace('producer_torch = "<2.6"', 'producer_torch = "two"'), "not a version bound"),
        (ERROR.replace('links = ["https://example.invalid/1"]', "links = []"), "cite at least one"),
        (ERROR + 'detail = "x"\n', "unknown key"),
        (ERROR.replace('outcome = "load_error"', 'outcome = "nope"'), "'nope' is not a valid Outcome"),
        (ERROR.replace('outcome = "load_error"', 'outcome = "ok"'), "needs no explanation"),
        (ERROR.replace(', message = "boom"', ""), "type and a message pattern"),
        (HEAD + 'outcome = "load_error"\n', "needs error ="),
        (MISMATCH.replace(", max_ulp = 8", ""), "bounds how many elements differ and by how much"),
        (MISMATCH.replace(", max_fraction = 0.25", ""), "bounds how many elements differ and by how much"),
        (MISMATCH.replace(', block = "MultiheadAttention"', ""), "names the block class"),
        (MISMATCH.replace('kind = "bytes"', 'kind = "missing"'), "never makes a"),
        (MISMATCH.replace("max_ulp = 8", "max_ulp = -1"), "must be a number >= 0"),
        (HEAD + 'outcome = ["load_error", "mismatch"]\n', "all be errors, or all differences"),
        # What reaches matrix.md and the gate's lines is one line of text, with no Markdown of its own.
        (ERROR.replace('id = "x"', 'id = "x|\\n# Gate passed"'), r"id must be a name .* got 'x\|\\n# Gate passed'"),
        (ERROR.replace('title = "t"', 'title = "t\\n# Gate passed <!--"'), "title must be one line of printable text"),
        (ERROR.replace("{ mmap = true }", "{ mmap = { a = 1 } }"), r"options\['mmap'\] must be a name, a number"),
        (ERROR.replace("{ mmap = true }", "{ mmap = [] }"), "empty list: it matches no cell"),
        (ERROR + 'consumer_device = ["cuda|0"]\n', "consumer_device must be a name"),
        ("x = " + "[" * 5000 + "]" * 5000 + "\n", "not valid TOML .RecursionError"),
    ],
)
def test_bad_files_name_the_file_and_entry(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ExpectationsError, match=message) as info:
        Expectations.load([path])
    assert str(path) in str(info.value)


def test_duplicate_ids_are_refused_and_one_file_named_twice_counts_once(tmp_path: Path) -> None:
    edited = tmp_path / "edited.toml"
    edited.write_text(BUILTIN.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    with pytest.raises(ExpectationsError, match="defined twice"):
        Expectations.load([BUILTIN, edited])
    copy = tmp_path / "copy.toml"  # a checkout's copy of the installed package's list
    copy.write_text(BUILTIN.read_text(encoding="utf-8"), encoding="utf-8")
    once = Expectations.load([BUILTIN]).entries
    assert Expectations.load([BUILTIN, BUILTIN]).entries == once == Expectations.load([BUILTIN, copy]).entries
