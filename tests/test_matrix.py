"""The release view: what changes with versions, set against each release's own round trip."""

from __future__ import annotations

from pathlib import Path

from ckpt_compat.differences import Difference
from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.expectations import Expectations, judge
from ckpt_compat.matrix import Status, release_view
from ckpt_compat.results import Cell, CellResult, Endpoint, Outcome

KNOWN = """
[[expect]]
id = "meta-refused"
title = "refuses meta"
formats = ["safetensors_file"]
producer_torch = "any"
consumer_torch = "any"
direction = "any"
options = {}
outcome = "unsupported"
error = { type = "Unsupported", message = "meta" }
reason = "r"
links = ["https://example.invalid/1"]

[[expect]]
id = "new-dtype"
title = "a dtype the consumer lacks"
formats = ["torch_zip"]
producer_torch = ">=2.3"
consumer_torch = "<2.3"
direction = "newer-to-older"
options = {}
outcome = "load_error"
error = { type = "AttributeError", message = "uint16" }
reason = "r"
links = ["https://example.invalid/2"]

[[expect]]
id = "math-changed"
title = "a block's math changed"
formats = ["torchscript_script"]
producer_torch = "<2.4"
consumer_torch = ">=2.4"
direction = "older-to-newer"
options = {}
outcome = "mismatch"
difference = { kind = "bytes", root = "forward", block = "MultiheadAttention", max_fraction = 0.5, max_ulp = 8 }
reason = "r"
links = ["https://example.invalid/3"]

[[expect]]
id = "old-consumer-bug"
title = "an old release fails on its own files too"
formats = ["torch_legacy"]
producer_torch = "any"
consumer_torch = "<2.4"
direction = "any"
options = {}
outcome = "load_error"
error = { type = "RuntimeError", message = "wrong byte size" }
reason = "r"
links = ["https://example.invalid/5"]

[[expect]]
id = "runs-code"
title = "runs code"
formats = ["torchscript_script"]
producer_torch = "any"
consumer_torch = "<2.6"
direction = "any"
options = { weights_only = true }
outcome = "unsafe"
reason = "r"
links = ["https://example.invalid/4"]
"""


def _r(
    fmt: str, producer: str, consumer: str, outcome: Outcome = Outcome.OK, *, spec: str = "s", **kw: object
) -> CellResult:
    options = dict(kw.pop("options", {}))  # type: ignore[call-overload]
    cell = Cell(spec, fmt, Endpoint(producer, "cpu"), Endpoint(consumer, str(kw.pop("device", "cpu"))), options)
    return CellResult(cell, outcome, **kw)  # type: ignore[arg-type]


def _view(tmp_path: Path, results: list[CellResult]):  # type: ignore[no-untyped-def]
    path = tmp_path / "known.toml"
    path.write_text(KNOWN)
    return release_view(judge(results, Expectations.load([path])))


def test_a_version_independent_refusal_is_a_limitation_listed_once(tmp_path: Path) -> None:
    refused = ErrorInfo("Unsupported", "cannot load onto meta")
    results = [
        _r("safetensors_file", p, c, Outcome.UNSUPPORTED, error=refused, device="meta")
        for p in ("2.2.2", "2.13.0")
        for c in ("2.2.2", "2.13.0")
    ]
    view = _view(tmp_path, results)
    assert {pair.status for pair in view.grid["safetensors_file"].values()} == {Status.SAME}
    assert list(view.limitations) == ["meta-refused"] and view.findings == {}
    assert view.limitations["meta-refused"].cells == 4


def sample(unsafe_on: str = "2.4.1") -> list[CellResult]:
    """A break, a silent change and an unsafe load, beside the releases' own round trips."""
    old, new = "2.2.2", "2.13.0+cpu"
    mha = Difference("bytes", ("forward", "mha"), "", block="MultiheadAttention", elements=2, total=24, max_ulp=4)
    return [
        _r("torch_zip", new, new),
        _r("torch_zip", old, old),
        _r("torch_zip", old, new),
        _r("torch_zip", new, old, Outcome.LOAD_ERROR, error=ErrorInfo("AttributeError", "no torch.uint16")),
        _r("torchscript_script", old, old),
        _r("torchscript_script", new, new),
        _r("torchscript_script", old, new, Outcome.MISMATCH, differences=(mha,)),
        _r("torchscript_script", old, unsafe_on, Outcome.UNSAFE, options={"weights_only": True}, spec="u"),
    ]


def test_a_loud_break_a_silent_change_and_an_unsafe_load_are_findings(tmp_path: Path) -> None:
    view = _view(tmp_path, sample())
    zip_grid, ts_grid = view.grid["torch_zip"], view.grid["torchscript_script"]
    assert zip_grid[("2.13.0", "2.2.2")].status is Status.BREAK
    assert zip_grid[("2.13.0", "2.2.2")].causes() == ["new-dtype"]
    assert zip_grid[("2.2.2", "2.13.0")].status is Status.SAME
    assert ts_grid[("2.2.2", "2.13.0")].status is Status.SILENT
    assert ts_grid[("2.2.2", "2.4.1")].status is Status.UNSAFE
    assert set(view.findings) == {"new-dtype", "math-changed", "runs-code"}
    assert view.findings["new-dtype"].pairs == {("2.13.0", "2.2.2")}
    assert [j.result.cell.spec_id for j in view.unsafe] == ["u"]


def test_the_same_outcome_as_the_consumers_own_round_trip_is_not_a_break(tmp_path: Path) -> None:
    error = ErrorInfo("RuntimeError", "storage has wrong byte size")
    # The consumer fails on its own files in the same way: a fact about that release, not across.
    results = [
        _r("torch_legacy", "2.13.0", "2.2.2", Outcome.LOAD_ERROR, error=error),
        _r("torch_legacy", "2.2.2", "2.2.2", Outcome.LOAD_ERROR, error=error),
        _r("torch_legacy", "2.13.0", "2.13.0"),
    ]
    view = _view(tmp_path, results)
    assert view.grid["torch_legacy"][("2.13.0", "2.2.2")].status is Status.SAME
    assert view.findings == {} and view.limitations["old-consumer-bug"].pairs == {
        ("2.13.0", "2.2.2"),
        ("2.2.2", "2.2.2"),
    }


def test_an_ok_on_digests_alone_is_told_apart(tmp_path: Path) -> None:
    results = [
        _r("torch_zip", "2.2.2", "2.2.2", checks=("load", "manifest", "state_dict", "forward")),
        _r("torch_zip", "2.13.0", "2.2.2", checks=("load", "manifest")),
    ]
    view = _view(tmp_path, results)
    assert view.grid["torch_zip"][("2.13.0", "2.2.2")].status is Status.DIGESTS_ONLY
    assert view.grid["torch_zip"][("2.2.2", "2.2.2")].status is Status.SAME


def test_unexplained_cells_outrank_everything(tmp_path: Path) -> None:
    bad = Difference("bytes", ("state_dict", "w"), "", elements=1, total=4, max_abs=1.0, max_ulp=1)
    results = [
        _r("torch_zip", "2.13.0", "2.2.2", Outcome.LOAD_ERROR, error=ErrorInfo("AttributeError", "no torch.uint16")),
        _r("torch_zip", "2.13.0", "2.2.2", Outcome.MISMATCH, differences=(bad,), spec="t"),
    ]
    view = _view(tmp_path, results)
    pair = view.grid["torch_zip"][("2.13.0", "2.2.2")]
    assert pair.status is Status.UNEXPLAINED and [j.result.cell.spec_id for j in view.unexplained] == ["t"]
