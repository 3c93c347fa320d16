"""The property behind ``ckpt-compat run``: for every drawn spec, no cell has an unexpected outcome.

Hypothesis draws specs; every cell of every spec drawn before the first failure goes into the
report. On a failure hypothesis shrinks it, within a budget (shrinking calls the whole round
trip each time), and the smallest failing spec is reported with its cells.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings

from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.expectations import Expectations, judge
from ckpt_compat.formats import Format
from ckpt_compat.results import CellResult
from ckpt_compat.roundtrip import check_spec
from ckpt_compat.specs import ModelSpec
from ckpt_compat.strategies import model_specs

Progress = Callable[[str], None]


class _Failed(AssertionError):
    pass


def _fail(detail: str) -> None:
    # One raise site: hypothesis tells bugs apart by where they were raised.
    raise _Failed(detail)


@dataclass
class PropertyRun:
    results: list[CellResult] = field(default_factory=list)
    specs: dict[str, ModelSpec] = field(default_factory=dict)
    examples_run: int = 0
    failure: ModelSpec | None = None
    failure_detail: str = ""
    shrink_steps: int = 0


def failure_of(results: Sequence[CellResult], expectations: Expectations) -> str:
    """Empty when every cell is ok, unsupported or a known issue; else what went wrong."""
    bad = [j for j in judge(results, expectations) if not j.explained]
    return "; ".join(
        f"{j.result.cell.variant} → {j.result.cell.consumer.device} "
        f"({j.result.cell.options.get('map_location', '-')}): {j.result.outcome.value}: "
        + "; ".join(str(p) for p in j.unexplained_parts())
        for j in bad[:3]
    ) + (f"; ... {len(bad) - 3} more" if len(bad) > 3 else "")


def run_property(
    formats: Sequence[Format],
    workdir: Path,
    *,
    examples: int,
    seed_value: int,
    expectations: Expectations,
    progress: Progress = lambda _: None,
    shrink_seconds: float = 30.0,
    heavy_examples: int = 8,
) -> PropertyRun:
    """``heavy_examples``: how many of the examples also go through the heavy formats
    (TorchScript, torch.export, ...); a failure is shrunk with every format."""
    run = PropertyRun()
    failing: dict[str, _Failing] = {}
    minimal: list[str] = []  # the id of the smallest failing spec so far, once there is one
    shrink_started = [0.0]

    light = [f for f in formats if not f.heavy]
    every = max(1, examples // max(1, heavy_examples))

    def check(spec: ModelSpec, chosen: Sequence[Format] = formats) -> _Failing:
        try:
            results = check_spec(spec, chosen, workdir)
        except Exception as exc:  # a harness bug: report it on the smallest spec, like any failure
            return _Failing(spec, [], f"harness error: {ErrorInfo.of(exc)}")
        return _Failing(spec, results, failure_of(results, expectations))

    @seed(seed_value)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        print_blob=False,
    )
    @given(model_specs())
    def prop(spec: ModelSpec) -> None:
        if not minimal:
            started = time.perf_counter()
            found = check(spec, formats if run.examples_run % every == 0 else light)
            run.examples_run += 1
            run.results += found.results
            run.specs[spec.id] = spec
            ok = sum(r.outcome.value == "ok" for r in found.results)
            progress(
                f"[{run.examples_run:>4}/{examples}] spec {spec.id}: {len(found.results):>3} cells, "
                f"{ok:>3} ok, {len(found.results) - ok:>3} other{'  FAILED' if found.detail else ''} "
                f"({time.perf_counter() - started:.2f}s)"
            )
            if found.detail:
                failing[spec.id] = found
                minimal.append(spec.id)
                shrink_started[0] = time.perf_counter()
                progress(f"failure on spec {spec.id}: {found.detail[:300]}")
                progress(f"shrinking it (at most {shrink_seconds:.0f}s)...")
                _fail(found.detail)
            return
        # Shrinking. Past the budget only the current minimal example is rerun, so hypothesis
        # settles on it at once instead of calling the whole round trip hundreds more times.
        if time.perf_counter() - shrink_started[0] > shrink_seconds and spec.id != minimal[-1]:
            return
        found = failing.get(spec.id) or check(spec)
        if found.detail:
            if spec.id not in failing:
                run.shrink_steps += 1
                failing[spec.id] = found
            minimal.append(spec.id)
            _fail(found.detail)

    try:
        prop()
    except Exception:
        if not minimal:
            raise
        smallest = failing[minimal[-1]]
        run.failure, run.failure_detail = smallest.spec, smallest.detail
        if smallest.spec.id not in run.specs:
            run.specs[smallest.spec.id] = smallest.spec
            run.results += smallest.results
    return run


@dataclass(frozen=True)
class _Failing:
    spec: ModelSpec
    results: list[CellResult]
    detail: str
