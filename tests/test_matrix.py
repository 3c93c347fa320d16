from __future__ import annotations

from ckpt_compat.compare import Difference
from ckpt_compat.matrix import Cell, CellResult, Endpoint, Outcome, counts, outcome_of

CPU = Endpoint("2.13.0", "cpu")


def test_outcome_priority_keys_then_values_then_aliasing() -> None:
    assert outcome_of([]) is Outcome.OK
    assert outcome_of([Difference("aliasing", "p", "")]) is Outcome.ALIASING
    assert outcome_of([Difference("aliasing", "p", ""), Difference("bytes", "p", "")]) is Outcome.MISMATCH
    assert outcome_of([Difference("bytes", "p", ""), Difference("missing", "p", "")]) is Outcome.KEYS
    assert outcome_of([Difference("load_state_dict", "p", "")]) is Outcome.KEYS


def test_variant_label_and_counts() -> None:
    cell = Cell("s", "torch_zip", CPU, CPU, {"weights_only": True, "mmap": True, "map_location": "str:cpu"})
    assert cell.variant == "torch_zip[mmap,weights_only]"
    results = [CellResult(cell, Outcome.OK), CellResult(cell, Outcome.MISMATCH, "x")]
    assert counts(results) == {"torch_zip[mmap,weights_only]": {"ok": 1, "mismatch": 1}}
    assert [r.not_ok for r in results] == [False, True]
    assert CellResult(cell, Outcome.UNSUPPORTED).not_ok is True
