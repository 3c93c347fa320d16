from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from ckpt_compat.differences import Difference
from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.matrix import counts
from ckpt_compat.report import SCHEMA_FILE
from ckpt_compat.results import (
    SCHEMA,
    SCHEMA_V1,
    Cell,
    CellResult,
    Endpoint,
    Outcome,
    ResultsError,
    load_results,
    outcome_of,
)

CPU = Endpoint("2.13.0", "cpu")


def test_outcome_priority_keys_then_values_then_aliasing() -> None:
    assert outcome_of([]) is Outcome.OK
    assert outcome_of([Difference("aliasing", ("p",))]) is Outcome.ALIASING
    assert outcome_of([Difference("aliasing", ("p",)), Difference("bytes", ("p",))]) is Outcome.MISMATCH
    assert outcome_of([Difference("bytes", ("p",)), Difference("missing", ("p",))]) is Outcome.KEYS
    assert outcome_of([Difference("load_state_dict", ("p",))]) is Outcome.KEYS
    assert outcome_of([Difference("persisted", ("p",))]) is Outcome.KEYS
    assert outcome_of([Difference("raised", ("forward", "x"))]) is Outcome.MISMATCH


def test_variant_label_and_counts() -> None:
    cell = Cell("s", "torch_zip", CPU, CPU, {"weights_only": True, "mmap": True, "map_location": "str:cpu"})
    assert cell.variant == "torch_zip[mmap,weights_only]"
    results = [CellResult(cell, Outcome.OK), CellResult.of(cell, [Difference("bytes", ("state_dict", "w"))])]
    assert counts(results) == {"torch_zip[mmap,weights_only]": {"ok": 1, "mismatch": 1}}
    assert [r.not_ok for r in results] == [False, True]
    assert CellResult(cell, Outcome.UNSUPPORTED).not_ok is True


def test_an_unsafe_load_is_its_own_outcome_whatever_the_values() -> None:
    cell = Cell("s", "torchscript_script", CPU, CPU, {"loader": "torch.load", "weights_only": True})
    assert CellResult.of(cell, [], checks=["load"], unsafe=True).outcome is Outcome.UNSAFE
    assert CellResult.of(cell, [Difference("bytes", ("state_dict", "w"))], unsafe=True).outcome is Outcome.UNSAFE


def test_checks_are_kept_in_order_and_unknown_ones_refused() -> None:
    cell = Cell("s", "torch_zip", CPU, CPU)
    r = CellResult.of(cell, [], checks=["forward", "load", "manifest"])
    assert r.checks == ("load", "manifest", "forward")
    assert CellResult.from_json(r.to_json()).checks == r.checks
    with pytest.raises(ValueError, match="unknown check"):
        CellResult.of(cell, [], checks=["vibes"])


def test_a_cell_survives_json_with_its_typed_parts() -> None:
    cell = Cell("s", "dcp", Endpoint("2.6.0", "cpu"), CPU, {"loader": "dcp.load", "map_location": "str:cpu"})
    error = ErrorInfo("CheckpointException", "rank 0 failed: KeyError: 'x'", cause=ErrorInfo("KeyError", "'x'"))
    failed = CellResult(cell, Outcome.LOAD_ERROR, error=error)
    d = Difference("bytes", ("forward", "mha", 0), "2 of 24 differ", block="MultiheadAttention", elements=2, total=24)
    differs = CellResult.of(cell, [d], checks=["load", "forward"], notes=["a note"])
    for r in (failed, differs):
        again = CellResult.from_json(json.loads(json.dumps(r.to_json())))
        assert again == r
    assert "KeyError" in failed.detail and "[MultiheadAttention] 2 of 24 differ" in differs.detail


def _write(tmp_path: Path, schema: str, cells: list[dict[str, object]]) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema": schema, "cells": cells}))
    return path


def _v1_cell(outcome: str, detail: str) -> dict[str, object]:
    return {
        "spec_id": "s",
        "format": "torchscript_script",
        "producer": {"torch": "2.2.2", "device": "cpu"},
        "consumer": {"torch": "2.13.0+cpu", "device": "cpu"},
        "options": {"loader": "jit.load", "map_location": "str:cpu"},
        "outcome": outcome,
        "detail": detail,
        "known_issue": None,
    }


def test_schema_1_cells_are_read_into_typed_parts(tmp_path: Path) -> None:
    detail = (
        "forward['mha'][0]: bytes: [MultiheadAttention] 2 of 24 element(s) differ, first at flat index 3 "
        "(expected bytes [1, 2, 3, 4], got [1, 2, 3, 5]); state_dict['w']: unexpected: key not expected; "
        "forward of 'x' not checked: a note"
    )
    [mismatch, error] = load_results(
        [_write(tmp_path, SCHEMA_V1, [_v1_cell("mismatch", detail), _v1_cell("load_error", "KeyError: 33")])]
    )
    first, second = mismatch.differences
    assert (first.kind, first.path, first.block, first.elements, first.total) == (
        "bytes",
        ("forward", "mha", 0),
        "MultiheadAttention",
        2,
        24,
    )
    assert first.max_abs is None and first.max_ulp is None  # never written in schema 1
    assert (second.kind, second.path) == ("unexpected", ("state_dict", "w"))
    assert mismatch.notes == ("forward of 'x' not checked: a note",) and not mismatch.truncated
    assert error.error == ErrorInfo("KeyError", "33")


@pytest.mark.parametrize("detail", ["state_dict['a']: bytes: x; ... and 3 more", "RuntimeError: " + "y" * 393 + "..."])
def test_schema_1_cells_cut_short_are_marked(tmp_path: Path, detail: str) -> None:
    outcome = "mismatch" if "bytes" in detail else "load_error"
    [r] = load_results([_write(tmp_path, SCHEMA_V1, [_v1_cell(outcome, detail)])])
    assert r.truncated


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not a results file"),
        (json.dumps({"schema": "other"}), "not a ckpt-compat/report/2"),
        (json.dumps({"schema": SCHEMA, "cells": [{"spec_id": 5}]}), "not a results file"),
        (json.dumps({"schema": SCHEMA_V1, "cells": [{**_v1_cell("ok", ""), "detail": 5}]}), "detail must be text"),
        (json.dumps({"schema": SCHEMA, "cells": "x"}), "cells must be a list"),
    ],
)
def test_bad_results_files_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ResultsError, match=message) as info:
        load_results([path])
    assert str(path) in str(info.value)


def _cell_json(**changed: object) -> str:
    cell = CellResult(Cell("s", "torch_zip", CPU, CPU, {"mmap": True}), Outcome.OK).to_json()
    for path, value in changed.items():
        at = cell
        *parents, last = path.split("__")
        for p in parents:
            at = at[p]
        at[last] = value
    return json.dumps({"schema": SCHEMA, "cells": [cell]})


BAD_NAMES = [
    ({"spec_id": "a\n# Gate passed"}, r"spec_id must be a name .* got 'a\\n# Gate passed'"),
    ({"format": "torch_zip|x"}, "format must be a name"),
    ({"consumer__device": "cpu<!--"}, "consumer device must be a name"),
    ({"options__map_location": "`x`"}, r"options\['map_location'\] must be a name"),
    ({"options__mmap": [1]}, r"options\['mmap'\] must be a name, a number, true, false or null"),
    ({"spec_id": "x" * 201}, "spec_id must be a name"),
    ({"format": ""}, "format must be a name"),
]


@pytest.mark.parametrize(
    ("changed", "message"), [*BAD_NAMES, ({"producer__torch": "banana"}, "'banana' is not a torch version")]
)
def test_a_results_file_holds_names_and_releases_only(tmp_path: Path, changed: dict[str, object], message: str) -> None:
    """Names reach matrix.md and the gate's lines as they are: a results file from another machine
    cannot hold one that starts a line, a cell, a code span or HTML there."""
    path = tmp_path / "r.json"
    path.write_text(_cell_json())
    assert len(load_results([path])) == 1
    path.write_text(_cell_json(**changed))
    with pytest.raises(ResultsError, match=message):
        load_results([path])


@pytest.mark.parametrize(("changed", "message"), BAD_NAMES)
def test_the_published_schema_refuses_what_the_reader_refuses(
    tmp_path: Path, changed: dict[str, object], message: str
) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    # A cell as `CellResult.to_json` writes it, before a report adds its judgement: its fields' rules.
    cell_schema = {**schema["$defs"]["cell"], "required": [], "$defs": schema["$defs"]}
    jsonschema.validate(json.loads(_cell_json())["cells"][0], cell_schema)
    bad = json.loads(_cell_json(**changed))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad["cells"][0], cell_schema)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match=message):
        load_results([path])


def test_a_file_named_twice_counts_once(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(_cell_json())
    (tmp_path / "link.json").symlink_to(path)
    assert len(load_results([path, path, tmp_path / "link.json", tmp_path / "." / "r.json"])) == 1
    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
    with pytest.raises(ResultsError, match=r"loop\.json: cannot read it"):
        load_results([tmp_path / "loop.json"])
