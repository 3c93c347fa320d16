"""Corpora: checkpoints written by one torch version, and their manifest.

A corpus is a directory with one sub-folder per spec (``<spec name>/<format><suffix>``) and a
``manifest.json`` written last and atomically: torch, python, numpy, safetensors and platform
versions, the device, per-tensor dtype, shape and digest of each file, and which formats were
unavailable and why. A directory without a manifest is an unfinished corpus and is ignored.

The specs come from ``ckpt_compat/corpus/*.json``, a fixed set (see scripts/make_corpus_specs.py).
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from ckpt_compat import __version__
from ckpt_compat.atomic import WriteFailed, atomic_dir, storage_failure, write_text
from ckpt_compat.compare import record
from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.formats import Format, all_formats, why_not_usable
from ckpt_compat.isolation import Pool
from ckpt_compat.manifest import MANIFEST, Entry, Manifest, ManifestError
from ckpt_compat.objects import object_records
from ckpt_compat.results import Endpoint, Outcome
from ckpt_compat.roundtrip import Subject, save_cell
from ckpt_compat.specs import ModelSpec

SPEC_DIR = Path(__file__).with_name("corpus")
# The specs heavy formats are written for with `produce --sample-heavy` (the committed fixtures).
HEAVY_SAMPLE = ("layers-float32", "tied", "nested", "layouts", "weight-norm", "drawn-00", "drawn-03")


def corpus_specs(directory: Path = SPEC_DIR) -> dict[str, ModelSpec]:
    """The fixed corpus specs by name, in name order."""
    return {p.stem: ModelSpec.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))}


def file_digest(path: Path) -> str:
    """xxh3-128 of a file's bytes; of a folder (DCP, MLflow), of each file's relative name and
    bytes in name order, so a renamed, added or removed member changes it too."""
    h = xxhash.xxh3_128()
    members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for member in members:
        if member != path:
            h.update(member.relative_to(path).as_posix().encode() + b"\0")
        with open(member, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return str(h.hexdigest())


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def produce(
    out: Path,
    formats: Iterable[Format],
    *,
    device: str = "cpu",
    specs: Mapping[str, Subject] | None = None,
    progress: Callable[[str], None] = lambda _: None,
    sample_heavy: bool = False,
    objects: bool = True,
    pool: Pool | None = None,
) -> Manifest:
    """Write a corpus for the running torch into ``out``: built in a temporary directory beside
    it and swapped in whole, so the previous corpus survives any kill until the new one is done.

    ``sample_heavy``: heavy formats (compiled, exported, DCP: large files) only for `HEAVY_SAMPLE`,
    to keep committed fixtures small. ``objects``: also training checkpoints, a multi-object file
    and a multi-save stream, in every format that holds arbitrary objects. ``pool``: write the
    specs side by side in its workers (formats by name); none: here, one after another.
    """
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ManifestError(f"{out}: not empty and not a corpus; refusing to replace it (choose an empty --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as work:
        return _produce(work, list(formats), device, specs, progress, sample_heavy, objects, pool)


def _produce(
    out: Path,
    formats: list[Format],
    device: str,
    specs: Mapping[str, Subject] | None,
    progress: Callable[[str], None],
    sample_heavy: bool,
    objects: bool,
    pool: Pool | None,
) -> Manifest:
    subjects: Mapping[str, Subject] = corpus_specs() if specs is None else specs
    tasks = [
        {
            "task": "produce.spec",
            "out": str(out),
            "name": name,
            "spec": spec.to_json(),
            "formats": [f.name for f in formats if not (sample_heavy and f.heavy and name not in HEAVY_SAMPLE)],
            "device": device,
        }
        for name, spec in subjects.items()
    ]
    if objects:
        held = [f.name for f in formats if f.holds_training_state]
        tasks.append({"task": "produce.objects", "out": str(out), "formats": held, "device": device})
    by_name = {f.name: f for f in formats}

    def here(task: dict[str, Any]) -> Any:
        chosen = [by_name[n] for n in task["formats"]]
        if task["task"] == "produce.objects":
            return _objects_answer(out, chosen)
        return _spec_answer(out, task["name"], subjects[task["name"]], chosen, device)

    def done(index: int, answer: Any) -> None:
        progress(_answer_line(tasks[index], answer))

    if pool is None:
        answers = [here(t) for t in tasks]
        for i, a in enumerate(answers):
            done(i, a)
    else:  # the longest first: the whole objects, then the specs in heavy formats
        first = [len(tasks) - 1] if objects else []
        first += [i for i, t in enumerate(tasks) if any(by_name[n].heavy for n in t.get("formats", ()))]
        answers = pool.map(tasks, first=first, done=done)
    entries: list[Entry] = []
    records: dict[str, dict[str, dict[str, Any]]] = {}
    for task, answer in zip(tasks, answers, strict=True):
        if isinstance(answer, dict) and "write_failed" in answer:  # the disk, as if written here
            raise WriteFailed(out, answer["write_failed"])
        failure = _produce_failure(task, answer)
        if failure:  # a worker that died or a writer that raised: nothing of it is in the corpus
            raise ManifestError(f"{out}: {failure}")
        entries += [Entry(**e) for e in answer["entries"]]
        records.update(answer["records"])
    digests: dict[str, str] = {}  # a training reference is shared by every format's entry
    for entry in entries:
        if entry.file is not None:
            entry.digest = file_digest(out / entry.file)
        if entry.reference is not None:
            if entry.reference not in digests:
                digests[entry.reference] = file_digest(out / entry.reference)
            entry.reference_digest = digests[entry.reference]
    from ckpt_compat.training import cpu_kernels

    manifest = Manifest(
        torch=torch.__version__,
        device=device,
        versions={
            "ckpt_compat": __version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu": cpu_kernels(),
            "numpy": np.__version__,
            "safetensors": _package_version("safetensors"),
            "onnx": _package_version("onnx"),
        },
        formats={
            name: {"available": (why := why_not_usable(f)) is None, "reason": why or ""}
            for name, f in all_formats().items()
        },
        specs={name: spec.to_json() for name, spec in subjects.items()},
        entries=entries,
        tensors=records,
    )
    write_text(out / MANIFEST, json.dumps(manifest.to_json(), indent=1) + "\n")
    return manifest


def _produce_failure(task: dict[str, Any], answer: Any) -> str:
    from ckpt_compat.isolation import Failure

    what = task.get("name", "training checkpoints, bundle and stream")
    if isinstance(answer, Failure):
        return f"writing {what}: the worker {answer.kind}: {answer.message}"
    if "write_failed" in answer:
        return f"writing {what}: {answer['write_failed']}"
    if "error" in answer:
        return f"writing {what} raised {ErrorInfo.from_json(answer['error'])}"
    return ""


def _answer_line(task: dict[str, Any], answer: Any) -> str:
    failure = _produce_failure(task, answer)
    if failure:
        return failure
    if task["task"] == "produce.objects":
        return f"objects: {len(answer['entries'])} file(s) (training checkpoints, a bundle, a stream)"
    written = sum(e["file"] is not None for e in answer["entries"])
    skipped = answer.get("skipped")
    return f"{task['name']}: skipped ({skipped})" if skipped else f"{task['name']}: {written} file(s)"


def _spec_answer(out: Path, name: str, spec: Subject, formats: list[Format], device: str) -> dict[str, Any]:
    """One spec written in ``formats`` under ``out/name``: its entries and tensor records as JSON."""
    producer = Endpoint(torch.__version__, device)
    try:
        model = spec.model(device)
    except Exception as exc:  # a dtype or layer this torch lacks, or an op it cannot run
        reason = f"torch {torch.__version__} cannot build this spec: {ErrorInfo.of(exc)}"
        entries = [Entry(name, spec.id, f.name, None, Outcome.UNSUPPORTED.value, reason) for f in formats]
        return {"entries": [e.__dict__ for e in entries], "records": {}, "skipped": str(exc)}
    entries = []
    (out / name).mkdir(exist_ok=True)
    for fmt in formats:
        relative = f"{name}/{fmt.name}{fmt.suffix}"
        failed = save_cell(spec, fmt, model, out / relative, producer)
        if failed is None:
            entries.append(Entry(name, spec.id, fmt.name, relative, Outcome.OK.value))
        else:
            error = failed.error.to_json() if failed.error is not None else None
            entries.append(Entry(name, spec.id, fmt.name, None, failed.outcome.value, failed.detail, error=error))
    records = {name: {k: record(v) for k, v in model.state_dict().items()}}
    return {"entries": [e.__dict__ for e in entries], "records": records}


def _objects_answer(out: Path, formats: list[Format]) -> dict[str, Any]:
    entries, records = _produce_objects(out, formats)
    return {"entries": [e.__dict__ for e in entries], "records": records}


def produce_task(task: dict[str, Any]) -> dict[str, Any]:
    """The ``produce.spec`` and ``produce.objects`` tasks of `workers`."""
    from ckpt_compat.formats import get_format
    from ckpt_compat.usermodel import from_json, is_user_model

    formats = [get_format(n) for n in task["formats"]]
    try:
        if task["task"] == "produce.objects":
            return _objects_answer(Path(task["out"]), formats)
        data = task["spec"]
        spec: Subject = from_json(data) if is_user_model(data) else ModelSpec.from_json(data)
        return _spec_answer(Path(task["out"]), task["name"], spec, formats, task["device"])
    except Exception as exc:
        why = storage_failure(exc)
        if why:
            return {"write_failed": why}
        raise


TRAINING_STEPS = 3


def _produce_objects(out: Path, formats: list[Format]) -> tuple[list[Entry], dict[str, dict[str, dict[str, Any]]]]:
    """Training checkpoints (one per optimizer), a bundle and a stream, with their object records."""
    from ckpt_compat import multiobject, training

    entries: list[Entry] = []
    records: dict[str, dict[str, dict[str, Any]]] = {}
    if not formats:
        return entries, records
    for optimizer in training.OPTIMIZERS:
        name = f"training-{optimizer}"
        checkpoint, written = training.write_checkpoints(out / name, formats, optimizer, TRAINING_STEPS)
        records[name] = object_records(checkpoint)
        options = {"optimizer": optimizer, "steps": TRAINING_STEPS}  # steps: how far to resume
        reference = f"{name}/{written['reference'].name}"
        for fmt in formats:
            relative = f"{name}/{written[fmt.name].name}"
            entries.append(
                Entry(
                    name,
                    training.SPEC_ID,
                    fmt.name,
                    relative,
                    "ok",
                    kind="training",
                    options=options,
                    reference=reference,
                )
            )
    (out / "bundle").mkdir(exist_ok=True)
    (out / "stream").mkdir(exist_ok=True)
    bundle, stream = multiobject.bundle(), multiobject.stream()
    records["bundle"], records["stream"] = object_records(bundle), object_records(stream)
    for fmt in formats:
        relative = f"bundle/{fmt.name}{fmt.suffix}"
        fmt.save_object(bundle, out / relative)
        entries.append(Entry("bundle", "bundle", fmt.name, relative, "ok", kind="bundle"))
        relative = f"stream/{fmt.name}{fmt.suffix}"
        multiobject.write_stream(fmt, out / relative, stream)
        entries.append(Entry("stream", "stream", fmt.name, relative, "ok", kind="stream"))
    return entries, records


def find_corpora(paths: Iterable[Path], *, skipped: list[Path] | None = None) -> list[Path]:
    """Every directory with a manifest at or below ``paths``, each once, in path order. The
    temporary directory of a `produce` that was killed (``.<name>.<pid>.<random>.tmp``) is no
    corpus: it is left out, and listed in ``skipped`` when given."""
    found: set[Path] = set()
    for path in paths:
        if (path / MANIFEST).is_file():
            found.add(path.resolve())
        elif path.is_dir():
            found.update(p.parent.resolve() for p in path.rglob(MANIFEST))
    unfinished = {c for c in found if any(_is_temporary(part) for part in c.parts)}
    if skipped is not None:
        skipped += sorted(unfinished)
    return sorted(found - unfinished)


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")
