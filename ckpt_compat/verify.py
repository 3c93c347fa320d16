"""Verify corpora under the running torch, loading every file in a contained worker process.

Files from other torch versions are foreign: the worker (`isolation.Child`: time and memory
limits, its own process group, dead with its parent) isolates a load that crashes, hangs or runs
out of memory (reported as ``crash`` / ``timeout`` for that file, and the worker is restarted), and
is the only process that unpickles them. Loaders that can run code see a foreign file only when it
is trusted (the installed package's own fixtures, or ``--trust``) or when a static scan clears it
(`trust`); otherwise the cell is ``unsupported`` with the reason.

The worker answers one JSON line per task: ``{"cells": [...]}``, or ``{"error": ...}`` when the
checker itself failed on that entry (a ``crash`` cell for it; the worker goes on).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import queue
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.results import Cell, CellResult, Endpoint, Outcome

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Task:
    corpus: str
    entry: int
    trusted: bool
    consumers: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "consumers": list(self.consumers)})


def check_entry(corpus: Path, index: int, *, trusted: bool, consumers: list[str]) -> list[CellResult]:
    """The cells for one manifest entry, checked under the running torch (the worker's job)."""
    import torch

    from ckpt_compat.formats import all_formats
    from ckpt_compat.matrix import UNAVAILABLE
    from ckpt_compat.roundtrip import Expected, SavedFile, Subject, check_file
    from ckpt_compat.specs import ModelSpec
    from ckpt_compat.usermodel import is_user_model

    manifest = _manifest(corpus)
    entry = manifest.entries[index]
    producer = manifest.producer
    here = Endpoint(torch.__version__, "cpu")
    fmt = all_formats().get(entry.format)
    if entry.file is None:
        return []  # the producer could not save it; its manifest says why
    reason = f"format {entry.format!r} is unknown to this ckpt-compat" if fmt is None else fmt.why_unavailable()
    if fmt is None or reason:
        cell = Cell(entry.spec_id, entry.format, producer, here, {})
        return [CellResult(cell, Outcome.UNSUPPORTED, error=ErrorInfo(UNAVAILABLE, reason or ""))]
    if entry.kind != "model":
        return _check_object(corpus, manifest, entry, trusted=trusted)
    data = manifest.specs[entry.spec]
    spec: Subject = ModelSpec.from_json(data) if not is_user_model(data) else _user_model(data, trusted)
    try:
        if isinstance(spec, _Unbuilt):
            raise spec.reason
        expected, not_built = Expected.build(spec), ""
    except Exception as exc:  # a dtype, layer or op this torch lacks: check against the manifest only
        expected, not_built = None, str(ErrorInfo.of(exc))
    saved = SavedFile(spec, fmt, corpus / entry.file, producer, expected, manifest.records(entry), trusted, not_built)
    return check_file(saved, consumers, spellings=("str",))


class _Unbuilt:
    """A user model that is not rebuilt here: its id, and why (raised where a build would be)."""

    def __init__(self, data: dict[str, Any], reason: Exception) -> None:
        self.id = str(data.get("model"))
        self.reason = reason

    def model(self, device: str = "cpu", *, perturb: bool = False) -> Any:
        from ckpt_compat.formats import Unsupported

        raise Unsupported(f"the model to load into is not rebuilt here: {self.reason}")

    def inputs(self) -> Any:
        return {}

    def to_json(self) -> dict[str, Any]:
        return {}


def _user_model(data: dict[str, Any], trusted: bool) -> Any:
    """The user's model a manifest names, imported only from a trusted corpus: its factory is code
    the manifest names. Otherwise the files are checked against the producer's digests only."""
    from ckpt_compat.usermodel import UserModelError, from_json

    if not trusted:
        return _Unbuilt(
            data,
            PermissionError(
                f"{data.get('model')} is imported and called only for a trusted corpus (pass --trust for your own "
                "files); checked against the producer's digests"
            ),
        )
    try:
        return from_json(data)
    except UserModelError as exc:
        return _Unbuilt(data, exc)


def _check_object(corpus: Path, manifest: Any, entry: Any, *, trusted: bool) -> list[CellResult]:
    """The cells of a whole-object entry: a training checkpoint, a bundle or a stream."""
    import torch

    from ckpt_compat import multiobject, training
    from ckpt_compat.formats import Unsupported, Untrusted, get_format

    fmt, path, records = get_format(entry.format), corpus / entry.file, manifest.records(entry)
    here = Endpoint(torch.__version__, "cpu")
    if entry.kind == "stream":
        return [
            multiobject.check_saved(
                multiobject.stream_cell(fmt, manifest.producer, here), fmt, path, records, trusted=trusted
            )
        ]
    results = []
    if entry.kind == "training":  # the producer's own run, read once for every load variant
        from ckpt_compat.formats.torch_save import torch_load
        from ckpt_compat.training import CPU

        try:  # through the same guard as every file of a corpus (a hostile reference.pt too)
            reference = torch_load(corpus / str(entry.reference), {"weights_only": True}, CPU, trusted=trusted)
        except Exception as exc:
            outcome = Outcome.UNSUPPORTED if isinstance(exc, (Unsupported, Untrusted)) else Outcome.LOAD_ERROR
            cells = [_training_cell(entry, fmt, manifest, here, v) for v in fmt.load_variants()]
            return [CellResult.failed(c, outcome, exc, prefix="reference.pt: ") for c in cells]
    for variant in fmt.load_variants():
        if entry.kind == "training":
            cell = _training_cell(entry, fmt, manifest, here, variant)
            steps = int(entry.options["steps"])
            results.append(training.check_saved(cell, fmt, path, records, reference, steps, trusted=trusted))
        else:
            cell = Cell(entry.spec_id, fmt.name, manifest.producer, here, {**variant, "check": "bundle"})
            results.append(multiobject.check_saved(cell, fmt, path, records, trusted=trusted))
    return results


def _training_cell(entry: Any, fmt: Any, manifest: Any, here: Endpoint, variant: dict[str, Any]) -> Cell:
    options = {**variant, "check": "resume", "optimizer": entry.options["optimizer"]}
    return Cell(entry.spec_id, fmt.name, manifest.producer, here, options)


@functools.cache
def _manifest(corpus: Path) -> Any:
    """Each corpus's manifest, read once per worker process."""
    from ckpt_compat.corpus import Manifest

    return Manifest.read(corpus)


def _handle(task: dict[str, Any]) -> dict[str, Any]:
    try:
        cells = check_entry(
            Path(task["corpus"]), task["entry"], trusted=task["trusted"], consumers=list(task["consumers"])
        )
    except Exception as exc:  # the checker itself failed on this entry: its cells, not the worker
        return {"error": ErrorInfo.of(exc).to_json()}
    return {"cells": [c.to_json() for c in cells]}


def worker_main() -> None:
    from ckpt_compat.isolation import serve

    serve(_handle)


class Worker:
    """The worker process (`isolation.Child`), restarted after it crashes or hangs."""

    def __init__(self, timeout: float, memory: int | None = None, *, threads: int | None = None) -> None:
        from ckpt_compat.isolation import MEMORY_LIMIT, Child

        # Workers side by side each get their share of the cores: OpenMP threads that outnumber
        # them spin and slow every worker down.
        env = {} if threads is None else {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.child = Child(["ckpt_compat.verify", "--worker"], timeout=timeout, memory=memory or MEMORY_LIMIT, env=env)

    @property
    def timeout(self) -> float:
        return self.child.timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self.child.timeout = seconds

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.child.stop()

    def run(self, task: Task) -> list[dict[str, Any]] | tuple[Outcome, ErrorInfo]:
        """The task's cells as JSON, or (crash|timeout, detail) when the worker died, hung or the
        checker raised."""
        from ckpt_compat.isolation import Failure

        answer = self.child.request(json.loads(task.to_json()))
        if isinstance(answer, Failure):
            return failure_outcome(answer)
        if "error" in answer:
            failed = ErrorInfo.from_json(answer["error"])
            return Outcome.CRASH, ErrorInfo("CheckerError", f"the checker failed: {failed}")
        cells: list[dict[str, Any]] = answer["cells"]
        return cells


def failure_outcome(failure: Any) -> tuple[Outcome, ErrorInfo]:
    """A contained process that did not answer (`isolation.Failure`), as a cell's outcome and error."""
    return Outcome.TIMEOUT if failure.kind == "timeout" else Outcome.CRASH, ErrorInfo(
        failure.error_type, failure.message
    )


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def verify(
    corpora: Iterable[Path],
    *,
    trusted: Callable[[Path], bool],
    consumers: list[str],
    timeout: float = 120.0,
    progress: Progress = lambda _: None,
    jobs: int | None = None,
) -> list[CellResult]:
    """Every cell for every entry of every corpus, each file loaded in a contained worker; the
    entries of a corpus are spread over ``jobs`` workers (default: the usable cores). The results
    come in corpus and entry order whatever the number of workers."""
    from ckpt_compat.corpus import Manifest

    cores = usable_cores()
    count = max(1, jobs or cores)
    threads = None if count == 1 else max(1, cores // count)
    idle: queue.Queue[Worker] = queue.Queue()
    with contextlib.ExitStack() as stack, concurrent.futures.ThreadPoolExecutor(count) as pool:
        for _ in range(count):  # each starts its process on its first task
            idle.put(stack.enter_context(Worker(timeout, threads=threads)))

        def check(task: Task, entry: Any, manifest: Any) -> list[CellResult]:
            worker = idle.get()
            try:
                return _cells(worker.run(task), Path(task.corpus), entry, manifest)
            finally:
                idle.put(worker)

        results: list[CellResult] = []
        for corpus in corpora:
            manifest = Manifest.read(corpus)
            tasks = [
                (Task(str(corpus), index, trusted(corpus), tuple(consumers)), entry, manifest)
                for index, entry in enumerate(manifest.entries)
                if entry.file is not None
            ]
            found = [r for cells in pool.map(lambda t: check(*t), tasks) for r in cells]
            ok = sum(r.outcome is Outcome.OK for r in found)
            progress(f"{corpus}: torch {manifest.torch} ({manifest.device}), {len(found)} cells, {ok} ok")
            results += found
    return results


def _cells(
    answer: list[dict[str, Any]] | tuple[Outcome, ErrorInfo], corpus: Path, entry: Any, manifest: Any
) -> list[CellResult]:
    """A worker's answer as cells: its own, or one crash / timeout cell for the entry."""
    import torch

    if isinstance(answer, tuple):
        outcome, error = answer
        cell = Cell(entry.spec_id, entry.format, manifest.producer, Endpoint(torch.__version__, "cpu"), {})
        message = f"{corpus / entry.file}: {error.message}"
        return [CellResult(cell, outcome, error=ErrorInfo(error.type, message))]
    return [CellResult.from_json(c) for c in answer]


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker_main()
    else:
        sys.exit("usage: python -m ckpt_compat.verify --worker (used by `ckpt-compat verify`)")
