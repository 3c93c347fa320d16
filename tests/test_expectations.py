from __future__ import annotations

from pathlib import Path

import pytest

from ckpt_compat.differences import Difference
from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.expectations import BUILTIN, Expectation, Expectations, gate, judge
from ckpt_compat.results import Cell, CellResult, Endpoint, Outcome

HEAD = """
[[expect]]
id = "x"
title = "t"
formats = ["torch_zip"]
producer_torch = "<2.6"
consumer_torch = "any"
direction = "any"
options = { mmap = true }
reason = "because"
links = ["https://example.invalid/1"]
"""
ERROR = HEAD + 'outcome = "load_error"\nerror = { type = "RuntimeError", message = "boom" }\n'
MISMATCH = HEAD.replace("torch_zip", "torchscript_script").replace("{ mmap = true }", "{}") + (
    'outcome = "mismatch"\n'
    'difference = { kind = "bytes", root = "forward", block = "MultiheadAttention", '
    "max_fraction = 0.25, max_ulp = 8 }\n"
)


def _write(tmp_path: Path, text: str, name: str = "e.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _cell(
    fmt: str = "torch_zip", producer: str = "2.4.1+cu121", consumer: str = "2.13.0+cpu", **options: object
) -> Cell:
    return Cell("s", fmt, Endpoint(producer, "cpu"), Endpoint(consumer, "cpu"), options)


def _error(cell: Cell, type_: str = "RuntimeError", message: str = "it went boom") -> CellResult:
    return CellResult(cell, Outcome.LOAD_ERROR, error=ErrorInfo(type_, message))


def _mha(elements: int = 2, ulp: float = 4.0, block: str = "MultiheadAttention", **cell: str) -> Difference:
    return Difference(
        "bytes", ("forward", "mha", 0), "", block=block, elements=elements, total=24, max_abs=1e-7, max_ulp=ulp
    )


def _explained(e: Expectations, r: CellResult) -> bool:
    return e.judge_one(r).explained


def test_an_error_is_matched_on_format_type_message_versions_and_options(tmp_path: Path) -> None:
    e = Expectations.load([_write(tmp_path, ERROR)])
    hit = _error(_cell(mmap=True))
    assert e.judge_one(hit).causes == ("x",)
    for miss in [
        _error(_cell("safetensors_file", mmap=True)),
        _error(_cell(mmap=True), type_="ValueError"),
        _error(_cell(mmap=True), message="bang"),
        _error(_cell(producer="2.6.0", mmap=True)),
        _error(_cell()),
        _error(_cell(mmap=False)),
        CellResult(_cell(mmap=True), Outcome.UNSUPPORTED, error=ErrorInfo("RuntimeError", "boom")),
    ]:
        assert not _explained(e, miss), miss


def test_a_difference_is_matched_on_its_block_and_size(tmp_path: Path) -> None:
    e = Expectations.load([_write(tmp_path, MISMATCH)])
    cell = _cell("torchscript_script", producer="2.2.2")
    assert _explained(e, CellResult.of(cell, [_mha()]))
    for difference in [_mha(elements=24), _mha(ulp=9), _mha(block="Linear")]:
        assert not _explained(e, CellResult.of(cell, [difference])), difference
    # A digest says only that bytes differ: a bound on the size cannot be met.
    digest_only = Difference("bytes", ("forward", "mha"), "digest", block="MultiheadAttention", total=24)
    assert not _explained(e, CellResult.of(cell, [digest_only]))


def test_every_difference_of_a_cell_must_be_explained_however_many(tmp_path: Path) -> None:
    e = Expectations.load([_write(tmp_path, MISMATCH)])
    cell = _cell("torchscript_script", producer="2.2.2")
    eight = [_mha() for _ in range(8)]
    assert _explained(e, CellResult.of(cell, eight))
    ninth = Difference("bytes", ("forward", "fc"), "", block="Linear", elements=1, total=6, max_abs=1.0, max_ulp=1)
    judged = e.judge_one(CellResult.of(cell, [*eight, ninth]))
    assert not judged.explained and [p.difference for p in judged.unexplained_parts()] == [ninth]


def test_direction_and_bounds(tmp_path: Path) -> None:
    text = ERROR.replace('direction = "any"', 'direction = "newer-to-older"').replace('"<2.6"', '">=2.8"')
    e = Expectations.load([_write(tmp_path, text)])
    assert _explained(e, _error(_cell(producer="2.15.0", consumer="2.13.0", mmap=True)))
    assert not _explained(e, _error(_cell(producer="2.8.0", consumer="2.15.0", mmap=True)))  # older to newer
    assert not _explained(e, _error(_cell(producer="2.13.0", consumer="2.13.0+cpu", mmap=True)))  # same release


def test_refused_global_and_cause_are_matched(tmp_path: Path) -> None:
    text = HEAD.replace("{ mmap = true }", "{}") + (
        'outcome = "load_error"\n'
        'error = { type = "CheckpointException", message = "rank 0", '
        'cause = { type = "KeyError", message = "^\'x\'$" } }\n'
    )
    e = Expectations.load([_write(tmp_path, text)])
    wrapped = ErrorInfo("CheckpointException", "rank 0 failed", cause=ErrorInfo("KeyError", "'x'"))
    assert _explained(e, CellResult(_cell(), Outcome.LOAD_ERROR, error=wrapped))
    other = ErrorInfo("CheckpointException", "rank 0 failed", cause=ErrorInfo("ValueError", "'x'"))
    assert not _explained(e, CellResult(_cell(), Outcome.LOAD_ERROR, error=other))


def test_an_unsafe_cell_needs_an_unsafe_known_issue(tmp_path: Path) -> None:
    text = HEAD.replace("torch_zip", "torchscript_script").replace("{ mmap = true }", "{}") + 'outcome = "unsafe"\n'
    e = Expectations.load([_write(tmp_path, text)])
    cell = _cell("torchscript_script", producer="2.4.1", consumer="2.4.1")
    unsafe = CellResult.of(cell, [], checks=["load"], unsafe=True)
    assert e.judge_one(unsafe).explained and e.judge_one(unsafe).unsafe
    with_a_difference = CellResult.of(cell, [_mha()], unsafe=True)
    assert not _explained(e, with_a_difference)  # the unsafe load is explained, the difference is not
    assert not _explained(Expectations(), unsafe)


def test_a_not_ok_cell_with_nothing_to_show_is_unexplained(tmp_path: Path) -> None:
    e = Expectations.load([_write(tmp_path, MISMATCH)])
    assert not _explained(e, CellResult(_cell("torchscript_script", producer="2.2.2"), Outcome.MISMATCH))
    truncated = CellResult(_cell("torchscript_script", producer="2.2.2"), Outcome.MISMATCH, (_mha(),), truncated=True)
    assert not _explained(e, truncated)


def test_the_gate_reports_stale_entries_of_the_files_given(tmp_path: Path) -> None:
    path = _write(tmp_path, ERROR)
    e = Expectations.load([BUILTIN, path])
    verdict = gate([CellResult(_cell(), Outcome.OK)], e, stale_if=lambda x: x.source == str(path))
    assert verdict.passed() and [x.id for x in verdict.stale] == ["x"]
    verdict = gate([_error(_cell(mmap=True))], e, stale_if=lambda x: x.source == str(path))
    assert verdict.passed() and verdict.stale == [] and verdict.explained_not_ok == 1


def test_builtin_file_loads_and_every_entry_is_cited() -> None:
    entries = Expectations.load([BUILTIN]).entries
    assert entries and all(e.reason and e.title and e.links for e in entries)


def test_judge_answers_for_every_cell_in_order(tmp_path: Path) -> None:
    e = Expectations.load([_write(tmp_path, ERROR)])
    results = [CellResult(_cell(), Outcome.OK), _error(_cell(mmap=True)), _error(_cell())]
    assert [j.explained for j in judge(results, e)] == [True, True, False]


# ---------------------------------------------------------------------------- every known issue, on evidence

FIXTURE_EXPECTATIONS = Path(__file__).parents[1] / "ckpt_compat" / "fixtures" / "expectations.toml"
EVERY = Expectations.load([BUILTIN, FIXTURE_EXPECTATIONS])
EVIDENCE = Path(__file__).with_name("evidence.json")
# Releases a neighbour may be moved to: the matrix's eight and the ones between them.
RELEASES = tuple(f"2.{minor}.0" for minor in range(16))


def _evidence() -> dict[str, CellResult]:
    import json

    cells = json.loads(EVIDENCE.read_text(encoding="utf-8"))["cells"]
    return {c["evidence_for"]: CellResult.from_json(c) for c in cells}


EVIDENCE_CELLS = _evidence()


def _with(r: CellResult, **cell: object) -> CellResult:
    from dataclasses import replace

    return replace(r, cell=replace(r.cell, **cell))


def _moved(r: CellResult, side: str, bounds: object, keep_direction: str) -> CellResult | None:
    """``r`` with its producer (or consumer) moved to a release outside ``bounds``, keeping the
    direction between the two where the entry names one (so only the bound can reject it)."""
    from ckpt_compat.expectations import _direction

    other = r.cell.consumer.torch if side == "producer" else r.cell.producer.torch
    outside = [v for v in RELEASES if v not in bounds]  # type: ignore[operator]
    for v in outside:
        pair = (v, other) if side == "producer" else (other, v)
        if keep_direction == "any" or _direction(*pair) == _direction(r.cell.producer.torch, r.cell.consumer.torch):
            return _with(r, **{side: Endpoint(v, getattr(r.cell, side).device)})
    return None


def _neighbours(e: Expectation, r: CellResult) -> list[tuple[str, CellResult]]:
    """Cells like the evidence but corrupted in one way that ``e`` does not claim."""
    from dataclasses import replace

    from ckpt_compat.formats import all_formats

    out = [("another format", _with(r, format=next(f for f in all_formats() if f not in e.formats)))]
    for side in ("producer", "consumer"):
        bounds = getattr(e, f"{side}_torch")
        if bounds.specifier is not None and (moved := _moved(r, side, bounds, e.direction)) is not None:
            out.append((f"a {side} outside {bounds}", moved))
    if e.direction not in ("any", "across", "same"):
        out.append(("the other direction", _with(r, producer=r.cell.consumer, consumer=r.cell.producer)))
    if e.direction in ("older-to-newer", "newer-to-older", "across"):
        out.append(("the same release", _with(r, consumer=Endpoint(r.cell.producer.torch, r.cell.consumer.device))))
    for key, value in e.options.items():
        changed = "another value" if not isinstance(value, bool) else not value
        out.append((f"option {key}={changed!r}", _with(r, options={**r.cell.options, key: changed})))
    if r.error is not None:
        out.append(("another exception type", replace(r, error=replace(r.error, type="ZeroDivisionError"))))
        out.append(("another message", replace(r, error=replace(r.error, message="something else entirely"))))
    differences = [d for d in r.differences if e.difference is not None and e.difference.matches(d)]
    if differences and e.difference is not None:
        d = differences[0]
        if d.kind == "bytes":
            worse = replace(d, elements=d.total, max_abs=(d.max_abs or 0) * 1e6 + 1, max_ulp=(d.max_ulp or 0) * 1e6 + 1)
            out.append(("every element far off", replace(r, differences=(worse,))))
        if e.difference.block is not None:
            other = "Conv2d" if d.block == "Linear" else "Linear"
            out.append(("another block", replace(r, differences=(replace(d, block=other),))))
        out.append(("another key-path root", replace(r, differences=(replace(d, path=("elsewhere", *d.path[1:])),))))
        other = {"persisted": "unexpected", "raised": "type", "bytes": "stride", "shape": "dtype"}.get(d.kind, "type")
        out.append((f"a {other} difference", replace(r, differences=(replace(d, kind=other),))))
        if d.error is not None:
            raised = replace(d, error=replace(d.error, type="ZeroDivisionError"))
            out.append(("another exception raised", replace(r, differences=(raised,))))
    return out


@pytest.mark.parametrize("known", EVERY.entries, ids=[e.id for e in EVERY.entries])
def test_each_known_issue_explains_its_evidence_and_no_corrupted_neighbour(known: Expectation) -> None:
    evidence = EVIDENCE_CELLS.get(known.id)
    assert evidence is not None, f"no evidence for {known.id}: run scripts/collect_evidence.py on real results"
    judged = EVERY.judge_one(evidence)
    assert judged.explained and known.id in judged.causes
    alone = Expectations((known,))
    neighbours = _neighbours(known, evidence)
    assert len(neighbours) >= 3
    for what, cell in neighbours:
        assert known.id not in alone.judge_one(cell).causes, f"{known.id} explains {what}"
