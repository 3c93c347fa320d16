"""Verify corpora under the running torch, loading every file in a contained worker process.

Files from other torch versions are foreign: the worker (`isolation.Child`: time and memory
limits, its own process group, dead with its parent) isolates a load that crashes, hangs or runs
out of memory (reported as ``crash`` / ``timeout`` for that file, and the worker is restarted), and
is the only process that unpickles them. Loaders that can run code see a foreign file only when it
is trusted (the installed package's own fixtures, or ``--trust``) or when a static scan clears it
(`trust`); otherwise the cell is ``unsupported`` with the reason.

The worker (`workers`, task ``verify.entry``) answers ``{"cells": [...]}`` per entry, or
``{"error": ...}`` when the checker itself failed on that entry (a ``crash`` cell for it; the
worker goes on).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_compat.differences import Difference
from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.results import DIFFERENCE_OUTCOMES, Cell, CellResult, Endpoint, Outcome, outcome_of

if TYPE_CHECKING:
    from ckpt_compat.isolation import Pool
    from ckpt_compat.roundtrip import Expected

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Task:
    corpus: str
    entry: int
    trusted: bool
    consumers: tuple[str, ...]

    def message(self) -> dict[str, Any]:
        """The ``verify.entry`` task message for `workers`."""
        return {"task": "verify.entry", **self.__dict__, "consumers": list(self.consumers)}


def check_entry(corpus: Path, index: int, *, trusted: bool, consumers: list[str]) -> list[CellResult]:
    """The cells for one manifest entry, checked under the running torch (the worker's job). A
    file whose bytes are not those the producer wrote is a difference in every cell of it, even
    where what loads is the same (a flipped bit in an ONNX node's metadata, a zip's padding)."""
    manifest = _manifest(corpus)
    cells = _entry_cells(corpus, manifest, index, trusted=trusted, consumers=consumers)
    entry = manifest.entries[index]
    for changed in _files_changed(corpus, entry):
        cells = [_with_difference(c, changed) for c in cells]
    return cells


def _files_changed(corpus: Path, entry: Any) -> list[Difference]:
    """The entry's file, and the training reference its cells resume against, where their bytes
    are not those the producer wrote (entries written before manifests kept digests have none)."""
    found = (
        _changed(corpus, entry.file, entry.digest, ("file",), "the file's"),
        _changed(corpus, entry.reference, entry.reference_digest, ("file", "reference"), "the training reference's"),
    )
    return [d for d in found if d is not None]


def _changed(
    corpus: Path, name: str | None, digest: str | None, path: tuple[str, ...], whose: str
) -> Difference | None:
    from ckpt_compat.corpus import file_digest

    if name is None or digest is None:
        return None
    try:
        found = file_digest(corpus / name)
    except OSError as exc:  # gone or unreadable: its cells say how loading it failed
        found = f"unreadable ({exc.strerror})"
    if found == digest:
        return None
    description = f"{whose} bytes are not those the producer wrote: changed or damaged since"
    return Difference("bytes", path, description, expected=digest, actual=found)


def _with_difference(result: CellResult, difference: Difference) -> CellResult:
    """``result`` with ``difference`` added. A cell whose outcome its differences make (ok, keys,
    mismatch, aliasing) becomes what they now make; any other (an error, an unsafe load) stays."""
    differences = (difference, *result.differences)
    follows = result.outcome is Outcome.OK or result.outcome in DIFFERENCE_OUTCOMES
    return replace(result, outcome=outcome_of(differences) if follows else result.outcome, differences=differences)


def _entry_cells(corpus: Path, manifest: Any, index: int, *, trusted: bool, consumers: list[str]) -> list[CellResult]:
    import torch

    from ckpt_compat.formats import all_formats
    from ckpt_compat.matrix import UNAVAILABLE
    from ckpt_compat.roundtrip import Expected, SavedFile, Subject, check_file
    from ckpt_compat.specs import ModelSpec
    from ckpt_compat.usermodel import is_user_model

    entry = manifest.entries[index]
    producer = manifest.producer
    here = Endpoint(torch.__version__, "cpu")
    fmt = all_formats().get(entry.format)
    if entry.file is None:
        return []  # the producer could not save it: `save_failures` judges that, once
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
        expected = (
            _expected_of(json.dumps(data, sort_keys=True)) if isinstance(spec, ModelSpec) else Expected.build(spec)
        )
        not_built = ""
    except Exception as exc:  # a dtype, layer or op this torch lacks: check against the manifest only
        expected, not_built = None, str(ErrorInfo.of(exc))
    saved = SavedFile(spec, fmt, corpus / entry.file, producer, expected, manifest.records(entry), trusted, not_built)
    return check_file(saved, consumers, spellings=("str",))


@functools.lru_cache(maxsize=64)
def _expected_of(spec_json: str) -> Expected:
    """What a generated spec means here, built once per worker for the spec's ~10 files (one task
    each, given out in manifest order) and the same spec in the other corpora (the committed ones
    share their 43 specs): its build and forward pass are the same for every format and producer,
    and the checks only read it."""
    from ckpt_compat.roundtrip import Expected
    from ckpt_compat.specs import ModelSpec

    return Expected.build(ModelSpec.loads(spec_json))


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
    from ckpt_compat.manifest import Manifest

    return Manifest.read(corpus)


def entry_task(task: dict[str, Any]) -> dict[str, Any]:
    """The ``verify.entry`` task of `workers`: one manifest entry's cells."""
    cells = check_entry(Path(task["corpus"]), task["entry"], trusted=task["trusted"], consumers=list(task["consumers"]))
    return {"cells": [c.to_json() for c in cells]}


class Worker:
    """One worker process (`isolation.Child` serving `workers`), restarted after it crashes or hangs."""

    def __init__(self, timeout: float, memory: int | None = None) -> None:
        from ckpt_compat.isolation import MEMORY_LIMIT, Child
        from ckpt_compat.workers import ARGV

        self.child = Child(ARGV, timeout=timeout, memory=memory or MEMORY_LIMIT)

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
        return entry_answer(self.child.request(task.message()))


def entry_answer(answer: Any) -> list[dict[str, Any]] | tuple[Outcome, ErrorInfo]:
    """A worker's answer to a ``verify.entry`` task: its cells as JSON, or why there are none."""
    from ckpt_compat.isolation import Failure

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


def verify(
    corpora: Iterable[Path],
    *,
    trusted: Callable[[Path], bool],
    consumers: list[str],
    timeout: float = 120.0,
    progress: Progress = lambda _: None,
    jobs: int | None = None,
    pool: Pool | None = None,
    read_manifests: Mapping[Path, Any] | None = None,
) -> list[CellResult]:
    """Every cell for every entry of every corpus, each file loaded in a contained worker; the
    entries of every corpus are spread over ``jobs`` workers (default: the usable cores), or over
    ``pool``'s (its own timeout then). The results come in corpus and entry order whatever the
    number of workers. ``read_manifests``: corpora's manifests the caller read already (the rest are
    read here)."""
    from ckpt_compat.isolation import MEMORY_LIMIT, Pool
    from ckpt_compat.manifest import Manifest
    from ckpt_compat.workers import ARGV

    read = read_manifests or {}
    manifests = {corpus: read[corpus] if corpus in read else Manifest.read(corpus) for corpus in corpora}
    entries = [
        (corpus, index, entry)
        for corpus, manifest in manifests.items()
        for index, entry in enumerate(manifest.entries)
        if entry.file is not None
    ]
    left = {corpus: sum(c == corpus for c, _, _ in entries) for corpus in manifests}
    found: list[list[CellResult]] = [[] for _ in entries]

    def done(position: int, answer: Any) -> None:  # a corpus's line once its last entry is in
        corpus, _, entry = entries[position]
        found[position] = _cells(entry_answer(answer), corpus, entry, manifests[corpus])
        left[corpus] -= 1
        if not left[corpus]:
            cells = [r for (c, _, _), rs in zip(entries, found, strict=True) if c == corpus for r in rs]
            ok = sum(r.outcome is Outcome.OK for r in cells)
            manifest = manifests[corpus]
            progress(f"{corpus}: torch {manifest.torch} ({manifest.device}), {len(cells)} cells, {ok} ok")

    # One queue over every corpus: no worker waits at a corpus's end for another's slowest file.
    trust = {corpus: trusted(corpus) for corpus in manifests}
    tasks = [Task(str(c), i, trust[c], tuple(consumers)).message() for c, i, _ in entries]
    if pool is not None:
        pool.map(tasks, done=done)
    else:
        with Pool(ARGV, jobs=jobs, timeout=timeout, memory=MEMORY_LIMIT) as own:
            own.map(tasks, done=done)
    return [r for rs in found for r in rs] + [r for m in manifests.values() for r in save_failures(m)]


def save_failures(manifest: Any) -> list[CellResult]:
    """The producer's failed saves, as the cells `run` makes of them, judged like any other: a save
    that failed for a reason no known issue names (an exporter broken by a pin) fails the gate, as a
    load would. Only under the producer's own torch: every release verifies every corpus, and each
    save happened once. Entries of manifests from before they kept the error carry none."""
    import torch

    if manifest.torch != torch.__version__:
        return []
    at = manifest.producer
    return [
        CellResult(Cell(e.spec_id, e.format, at, at, {}), Outcome(e.outcome), error=ErrorInfo.from_json(e.error))
        for e in manifest.entries
        if e.file is None and e.error is not None
    ]


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
