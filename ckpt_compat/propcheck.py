"""The property behind ``ckpt-compat run``: for every drawn spec, no cell has an unexpected outcome.

Hypothesis draws the specs first (drawing needs no torch work, and what it draws does not depend
on the outcomes while every example passes); the specs, the training checkpoints, the
multi-object files and DCP resharding are then checked side by side in the workers of an
`isolation.Pool` (or in this process when no pool is given: formats a library caller made up are
not registered by name). A crash or hang costs the cells of its own task. Every cell of every spec
up to the first failing one goes into the report. A failure is shrunk by replaying the same
draws (the checked ones answered from memory) and checking each smaller candidate, within a
budget (each check is a whole round trip); the smallest failing spec is reported with its cells.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings

from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.expectations import Expectations, judge
from ckpt_compat.formats import Format
from ckpt_compat.isolation import Failure, Pool
from ckpt_compat.progress import Progress
from ckpt_compat.results import Cell, CellResult, Endpoint, Outcome
from ckpt_compat.specs import ModelSpec
from ckpt_compat.strategies import model_specs

# The whole-object checks of a run, besides the drawn specs: each is one task.
OBJECT_CHECKS = ("reshard", "training", "multi_object")
SCRATCH = "<scratch>"  # stands for a task's temporary directory in messages, so reports repeat


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


@dataclass(frozen=True)
class Task:
    """One unit of a run's work: a drawn spec in some formats, or one whole-object check."""

    formats: tuple[Format, ...]
    spec: ModelSpec | None = None
    check: str = ""  # one of OBJECT_CHECKS when ``spec`` is None

    @property
    def label(self) -> str:
        return f"spec {self.spec.id}" if self.spec is not None else self.check

    def message(self) -> dict[str, Any]:
        """The task for a worker (`workers`), formats by name."""
        names = [f.name for f in self.formats]
        if self.spec is not None:
            return {"task": "run.spec", "spec": self.spec.to_json(), "formats": names}
        return {"task": "run.objects", "check": self.check, "formats": names}

    def lost(self, failure: Failure) -> list[CellResult]:
        """When its worker crashed or hung: one cell per format saying so, for this task only."""
        import torch

        here = Endpoint(torch.__version__, "cpu")
        spec_id = self.spec.id if self.spec is not None else _object_spec_id(self.check)
        options = {} if self.spec is not None else {"check": self.check}
        outcome = Outcome.TIMEOUT if failure.kind == "timeout" else Outcome.CRASH
        error = ErrorInfo(failure.error_type, f"{self.label}: the worker checking it {failure.message}")
        return [CellResult(Cell(spec_id, f.name, here, here, options), outcome, error=error) for f in self.formats]


def _object_spec_id(check: str) -> str:
    from ckpt_compat.distributed import RESHARD_SPEC
    from ckpt_compat.training import SPEC_ID

    return {"reshard": RESHARD_SPEC.id, "training": SPEC_ID, "multi_object": "bundle"}[check]


@dataclass(frozen=True)
class Checked:
    """What one task gave: its cells, or why the checker gave none (``harness_error``)."""

    results: list[CellResult]
    harness_error: str = ""
    seconds: float = 0.0


def _perform(task: Task, workdir: Path) -> list[CellResult]:
    """Do one task here: the same code a worker runs."""
    from ckpt_compat.roundtrip import check_spec

    if task.spec is not None:
        return check_spec(task.spec, task.formats, workdir)
    if task.check == "training":
        from ckpt_compat.training import check_training

        return check_training(task.formats, workdir)
    if task.check == "multi_object":
        from ckpt_compat.multiobject import check_multi_object

        return check_multi_object(task.formats, workdir)
    if task.check == "reshard":
        from ckpt_compat.distributed import check_reshard

        return check_reshard(workdir)
    raise ValueError(f"check: {task.check!r} is not one of {OBJECT_CHECKS}")


def _without_scratch(cells: list[dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    """The cells with the task's temporary directory named `SCRATCH`: where a file lay for a moment
    is not a result, and a report must not change with it."""
    text = json.dumps(cells)
    return list(json.loads(text.replace(json.dumps(str(workdir))[1:-1], SCRATCH)))


def _checked_json(task: Task) -> dict[str, Any]:
    """Do one task here: its cells as JSON (what a worker answers), the harness error, the seconds."""
    from ckpt_compat.atomic import scratch_writes
    from ckpt_compat.isolation import scratch_dir

    started = time.perf_counter()
    cells: list[dict[str, Any]] = []
    error = ""
    try:
        with scratch_dir() as scratch, scratch_writes():
            cells = _without_scratch([r.to_json() for r in _perform(task, scratch)], scratch)
    except Exception as exc:  # a harness bug: reported on the smallest spec, like any failure
        error = f"harness error: {ErrorInfo.of(exc)}"
    return {"cells": cells, "harness_error": error, "seconds": time.perf_counter() - started}


def _checked(task: Task) -> Checked:
    answer = _checked_json(task)
    cells = [CellResult.from_json(c) for c in answer["cells"]]
    return Checked(cells, answer["harness_error"], answer["seconds"])


def run_task(message: dict[str, Any]) -> dict[str, Any]:
    """The ``run.spec`` and ``run.objects`` tasks of `workers`."""
    from ckpt_compat.formats import get_format

    formats = tuple(get_format(name) for name in message["formats"])
    if message["task"] == "run.spec":
        return _checked_json(Task(formats, ModelSpec.from_json(message["spec"])))
    return _checked_json(Task(formats, check=message["check"]))


class Checker:
    """Runs a run's tasks: in the workers of ``pool``, or in this process when it is None."""

    def __init__(self, pool: Pool | None) -> None:
        self.pool = pool

    def one(self, task: Task) -> Checked:
        if self.pool is None:
            return _checked(task)
        return self._answer(task, self.pool.request(task.message()))

    def submit(self, task: Task) -> concurrent.futures.Future[Any]:
        """Start ``task`` (here: do it now); `gather` collects it."""
        if self.pool is not None:
            return self.pool.submit(task.message())
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_result(_checked(task))
        return future

    def gather(
        self,
        tasks: Sequence[Task],
        futures: Sequence[concurrent.futures.Future[Any]],
        done: Callable[[int, Checked], None],
    ) -> list[Checked]:
        """The tasks' results in task order; ``done`` as each one finishes."""
        answers: list[Checked] = [Checked([])] * len(tasks)

        def finished(index: int, answer: Any) -> None:
            answers[index] = answer if self.pool is None else self._answer(tasks[index], answer)
            done(index, answers[index])

        if self.pool is None:
            for index, future in enumerate(futures):
                finished(index, future.result())
        else:
            self.pool.gather(futures, done=finished)
        return answers

    @staticmethod
    def _answer(task: Task, answer: Any) -> Checked:
        if isinstance(answer, Failure):
            return Checked(task.lost(answer))
        if "error" in answer:  # the task's own handling failed: a harness bug too
            return Checked([], f"harness error: {ErrorInfo.from_json(answer['error'])}")
        cells = [CellResult.from_json(c) for c in answer["cells"]]
        return Checked(cells, str(answer["harness_error"]), float(answer["seconds"]))


def draw_specs(examples: int, seed_value: int) -> list[ModelSpec]:
    """The specs hypothesis draws for ``examples`` passing examples under ``seed_value``, in order,
    each once: what the property sees while no example fails."""
    drawn: dict[str, ModelSpec] = {}

    @_settings(examples, seed_value, [Phase.explicit, Phase.generate])
    @given(model_specs())
    def collect(spec: ModelSpec) -> None:
        drawn.setdefault(spec.id, spec)

    collect()
    return list(drawn.values())


def _settings(examples: int, seed_value: int, phases: list[Phase]) -> Callable[[Any], Any]:
    def apply(test: Any) -> Any:
        return seed(seed_value)(
            settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=False,
                phases=phases,
                report_multiple_bugs=False,
                suppress_health_check=list(HealthCheck),
                verbosity=Verbosity.quiet,
                print_blob=False,
            )(test)
        )

    return apply


def run_property(
    formats: Sequence[Format],
    *,
    examples: int,
    seed_value: int,
    expectations: Expectations,
    pool: Pool | None = None,
    progress: Progress | None = None,
    shrink_seconds: float = 30.0,
    heavy_examples: int = 8,
    objects: Sequence[str] = (),
    specs: Sequence[ModelSpec] = (),
) -> PropertyRun:
    """``heavy_examples``: how many of the examples also go through the heavy formats
    (TorchScript, torch.export, ...), where light ones are checked too (else every example goes
    through them); a failure is shrunk with every format. ``objects``: the
    whole-object checks (`OBJECT_CHECKS`) to run alongside, their cells appended. ``specs``:
    `draw_specs` of ``examples`` and ``seed_value``, drawn already (else drawn here)."""
    run = PropertyRun()
    checker = Checker(pool)
    progress = progress or Progress(quiet=True)
    light = tuple(f for f in formats if not f.heavy)
    # The whole-object checks are the longest tasks and need no draw: the workers start on them
    # while hypothesis draws the specs.
    tasks = [t for t in (Task(_object_formats(check, formats), check=check) for check in objects) if t.formats]
    futures = [checker.submit(t) for t in tasks]
    if not specs:
        with progress.phase("draw"):
            specs = draw_specs(examples, seed_value)
    # Heavy formats alone (``--formats onnx``): every example goes through them; sampling them
    # would check 8 specs of the examples asked for, and none in the light formats.
    every = max(1, examples // max(1, heavy_examples)) if light else 1
    drawn = [Task(tuple(formats) if i % every == 0 else light, spec) for i, spec in enumerate(specs)]
    drawn = [t for t in drawn if t.formats]
    # Then the specs in the heavy formats, so no worker is left with a long task at the end.
    for task in sorted(drawn, key=lambda t: len(t.formats) <= len(light)):
        futures.append(checker.submit(task))
        tasks.append(task)
    count = [0]
    verdicts: dict[int, str] = {}

    def done(index: int, checked: Checked) -> None:
        count[0] += 1
        task = tasks[index]
        ok = sum(r.outcome is Outcome.OK for r in checked.results)
        verdicts[index] = bad = checked.harness_error or failure_of(checked.results, expectations)
        (progress.say if bad else progress.step)(
            f"[{count[0]:>4}/{len(tasks)}] {task.label}: {len(checked.results):>3} cells, {ok:>3} ok, "
            f"{len(checked.results) - ok:>3} other{'  FAILED' if bad else ''} ({checked.seconds:.2f}s)"
        )

    with progress.phase("check", f"checking {len(specs)} specs and {len(objects)} whole-object checks"):
        answers = checker.gather(tasks, futures, done)
    # Back in draw order, the whole objects last: only the specs up to the first failing one
    # count, as in a serial run.
    position = {id(t): i for i, t in enumerate(drawn)}
    order = sorted(range(len(tasks)), key=lambda i: position.get(id(tasks[i]), len(drawn) + i))
    failing: dict[str, _Failing] = {}
    for index in order:
        task, checked, detail = tasks[index], answers[index], verdicts[index]
        if task.spec is None:
            run.results += checked.results
            continue
        if failing:
            continue
        run.examples_run += 1
        run.results += checked.results
        run.specs[task.spec.id] = task.spec
        if detail:
            failing[task.spec.id] = _Failing(task.spec, checked.results, detail)
    if failing:
        [first_failing] = failing.values()
        progress.say(f"failure on spec {first_failing.spec.id}: {first_failing.detail[:300]}")
        with progress.phase("shrink", f"shrinking it (at most {shrink_seconds:.0f}s)..."):
            smallest = _shrink(
                examples, seed_value, first_failing, tasks, answers, checker, formats, expectations, shrink_seconds, run
            )
        run.failure, run.failure_detail = smallest.spec, smallest.detail
        if smallest.spec.id not in run.specs:
            run.specs[smallest.spec.id] = smallest.spec
            run.results += smallest.results
    return run


def _object_formats(check: str, formats: Sequence[Format]) -> tuple[Format, ...]:
    if check == "reshard":
        return tuple(f for f in formats if f.name == "dcp")
    return tuple(formats)


def _shrink(
    examples: int,
    seed_value: int,
    first: _Failing,
    tasks: Sequence[Task],
    answers: Sequence[Checked],
    checker: Checker,
    formats: Sequence[Format],
    expectations: Expectations,
    shrink_seconds: float,
    run: PropertyRun,
) -> _Failing:
    """Replay the draws with the checked specs answered from memory; hypothesis then shrinks the
    first failing one, each smaller candidate checked with every format."""
    known = {t.spec.id: a for t, a in zip(tasks, answers, strict=True) if t.spec is not None}
    failing: dict[str, _Failing] = {first.spec.id: first}
    minimal: list[str] = []
    shrink_started = [0.0]

    @_settings(examples, seed_value, [Phase.explicit, Phase.generate, Phase.shrink])
    @given(model_specs())
    def prop(spec: ModelSpec) -> None:
        # Past the budget only the current minimal example is rerun, so hypothesis settles on it
        # at once instead of calling the whole round trip hundreds more times.
        if minimal and time.perf_counter() - shrink_started[0] > shrink_seconds and spec.id != minimal[-1]:
            return
        if not minimal and spec.id in known and spec.id not in failing:
            return  # checked above, and it passed
        found = failing.get(spec.id)
        if found is None:
            checked = checker.one(Task(tuple(formats), spec))
            found = _Failing(spec, checked.results, checked.harness_error or failure_of(checked.results, expectations))
        if found.detail:
            if spec.id not in failing:
                run.shrink_steps += 1
                failing[spec.id] = found
            if not minimal:
                shrink_started[0] = time.perf_counter()
            minimal.append(spec.id)
            _fail(found.detail)

    try:
        prop()
    except Exception:
        if not minimal:
            raise
    return failing[minimal[-1]] if minimal else first


@dataclass(frozen=True)
class _Failing:
    spec: ModelSpec
    results: list[CellResult]
    detail: str
