from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, seed, settings

from ckpt_compat.expectations import Expectations
from ckpt_compat.formats import get_format
from ckpt_compat.isolation import Pool
from ckpt_compat.progress import Progress
from ckpt_compat.propcheck import PropertyRun, draw_specs, run_property
from ckpt_compat.results import Outcome
from ckpt_compat.roundtrip import check_spec
from ckpt_compat.specs import ModelSpec
from ckpt_compat.strategies import model_specs
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
    log = io.StringIO()
    run = run_property(
        [fmt],
        examples=60,
        seed_value=0,
        expectations=Expectations(),
        progress=Progress(verbose=True, stream=log),
        shrink_seconds=20,
    )
    lines = log.getvalue().splitlines()
    assert run.failure is not None
    assert "state_dict[" in run.failure_detail and "bytes" in run.failure_detail
    # The minimal spec reproduces on its own, and is no bigger than the first failing example.
    again = check_spec(run.failure, [fmt], tmp_path)
    assert any(r.outcome is Outcome.MISMATCH for r in again)
    first_failing = next(s for s in run.specs.values() if f"failure on spec {s.id}" in log.getvalue())
    assert len(run.failure.dumps()) <= len(first_failing.dumps())
    assert any(line.startswith("shrinking") for line in lines)
    assert run.failure.id in run.specs


def test_a_clean_run_records_every_example(tmp_path: Path) -> None:
    run = run_property([get_format("torch_zip")], examples=8, seed_value=1, expectations=Expectations.load())
    assert run.failure is None and run.examples_run == 8
    assert {r.cell.spec_id for r in run.results} == set(run.specs)
    assert all(r.outcome is Outcome.OK for r in run.results)


def test_heavy_formats_alone_check_every_example() -> None:
    """Heavy formats go through a sample of the examples beside light ones; asked for alone, through
    every one (they once went through 8 of however many were asked for)."""
    heavy = get_format("torchscript_trace")
    assert heavy.heavy
    run = run_property([heavy], examples=12, seed_value=1, expectations=Expectations.load())
    assert run.examples_run == 12 == len(run.specs) == len({r.cell.spec_id for r in run.results})
    mixed = run_property([heavy, get_format("torch_zip")], examples=16, seed_value=1, expectations=Expectations.load())
    assert len({r.cell.spec_id for r in mixed.results if r.cell.format == heavy.name}) == 8  # every 16 // 8 = 2nd
    fewer = run_property(
        [heavy, get_format("torch_zip")], examples=16, seed_value=1, expectations=Expectations.load(), heavy_examples=4
    )
    assert len({r.cell.spec_id for r in fewer.results if r.cell.format == heavy.name}) == 4  # every 4th


def test_a_killed_worker_costs_the_cells_of_its_own_spec_only(workers: Pool) -> None:
    formats = [get_format("torch_zip"), get_format("torch_legacy")]
    victim = draw_specs(6, 3)[2]

    def run(pool: Pool) -> PropertyRun:
        return run_property(
            formats, examples=6, seed_value=3, expectations=Expectations.load(), pool=pool, shrink_seconds=0
        )

    clean = run(workers)
    with Pool(["tests.dying_worker"], jobs=2, timeout=300, env={"CKPT_COMPAT_TEST_DIE_ON": victim.id}) as dying:
        killed = run(dying)
    lost = [r for r in killed.results if r.cell.spec_id == victim.id]
    assert [r.cell.format for r in lost] == ["torch_zip", "torch_legacy"]  # one crash cell per format
    assert all(r.outcome is Outcome.CRASH and "signal SIGKILL" in r.detail for r in lost)
    assert killed.failure == victim and "crash" in killed.failure_detail  # unexplained, so the run fails
    before = [r.to_json() for r in clean.results if r.cell.spec_id != victim.id and r.cell.spec_id in killed.specs]
    after = [r.to_json() for r in killed.results if r.cell.spec_id != victim.id]
    assert before and after == before  # every other spec checked as in the clean run


def test_the_draws_are_the_specs_a_serial_property_sees() -> None:
    seen: list[str] = []

    @seed(7)
    @settings(max_examples=20, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(model_specs())
    def serial(spec: ModelSpec) -> None:
        if spec.id not in seen:
            seen.append(spec.id)

    serial()
    assert [s.id for s in draw_specs(20, 7)] == seen
