from __future__ import annotations

from pathlib import Path
from typing import Any

from ckpt_compat.expectations import Expectations
from ckpt_compat.formats import get_format
from ckpt_compat.propcheck import run_property
from ckpt_compat.results import Outcome
from ckpt_compat.roundtrip import check_spec
from tests.faults import Faulty


def _corrupt_float64(state: dict[str, Any]) -> dict[str, Any]:
    """A planted bug that only bites float64 tensors, so shrinking has something to find."""
    out = dict(state)
    for k, v in state.items():
        if v.dtype.is_floating_point and v.element_size() == 8 and v.numel():
            out[k] = v.clone()
            out[k].view(-1)[0] = 1.5
    return out


def test_a_failure_is_shrunk_to_a_small_spec_that_still_fails(tmp_path: Path) -> None:
    fmt = Faulty("torch_zip", after_load=_corrupt_float64)
    lines: list[str] = []
    run = run_property(
        [fmt],
        tmp_path,
        examples=60,
        seed_value=0,
        expectations=Expectations(),
        progress=lines.append,
        shrink_seconds=20,
    )
    assert run.failure is not None
    assert "state_dict[" in run.failure_detail and "bytes" in run.failure_detail
    # The minimal spec reproduces on its own, and is no bigger than the first failing example.
    again = check_spec(run.failure, [fmt], tmp_path)
    assert any(r.outcome is Outcome.MISMATCH for r in again)
    first_failing = next(s for s in run.specs.values() if s.id in lines[-3])
    assert len(run.failure.dumps()) <= len(first_failing.dumps())
    assert any(line.startswith("shrinking") for line in lines)
    assert run.failure.id in run.specs


def test_a_clean_run_records_every_example(tmp_path: Path) -> None:
    run = run_property([get_format("torch_zip")], tmp_path, examples=8, seed_value=1, expectations=Expectations.load())
    assert run.failure is None and run.examples_run == 8
    assert {r.cell.spec_id for r in run.results} == set(run.specs)
    assert all(r.outcome is Outcome.OK for r in run.results)
