"""Fuzzing (`nox -s fuzz`): mutated real files of every format, and raw bytes, through the static
inspector and through `verify`'s loaders without trust. The invariant: every input gets a
classified outcome; the tool never raises, hangs or runs a payload.

Structured mutators act where parsers look: the zip's pickle and directory, the safetensors
header, truncation points, bit flips and spliced ranges; hypothesis shrinks a failure to the
smallest mutation. Examples per test: ``CKPT_COMPAT_FUZZ_EXAMPLES`` (default 200).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt_compat.corpus import corpus_specs, produce
from ckpt_compat.formats import available_formats
from ckpt_compat.identify import NotAFile
from ckpt_compat.inspection import inspect_checkpoint
from ckpt_compat.manifest import Manifest
from ckpt_compat.results import Outcome
from ckpt_compat.strategies import corruptions
from ckpt_compat.verify import Task, Worker

EXAMPLES = int(os.environ.get("CKPT_COMPAT_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "corpus"
    produce(out, available_formats(), specs={"tied": corpus_specs()["tied"]}, objects=False)
    return out


def _files(corpus: Path) -> list[tuple[int, Path]]:
    return [
        (i, corpus / e.file)
        for i, e in enumerate(Manifest.read(corpus).entries)
        if e.file is not None and (corpus / e.file).is_file()
    ]


@FUZZ
@given(st.data())
def test_the_inspector_classifies_every_mutation(corpus: Path, tmp_path: Path, data: st.DataObject) -> None:
    _, source = data.draw(st.sampled_from(_files(corpus)))
    target = tmp_path / source.name
    target.write_bytes(data.draw(corruptions(source.read_bytes())))
    try:
        verdict = inspect_checkpoint(target).verdict
    except (NotAFile, OSError):
        return
    assert verdict in ("ok", "broken", "unsafe")


@FUZZ
@given(st.binary(max_size=4096))
def test_the_inspector_classifies_raw_bytes(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "raw.pt").write_bytes(raw)
    assert inspect_checkpoint(tmp_path / "raw.pt").verdict in ("ok", "broken", "unsafe")


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    with Worker(timeout=60) as w:
        yield w


@settings(FUZZ, max_examples=max(EXAMPLES // 4, 10))
@given(st.data())
def test_untrusted_loads_of_mutations_are_classified(
    corpus: Path, worker: Worker, tmp_path: Path, data: st.DataObject
) -> None:
    work = tmp_path / "c"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(corpus, work)
    index, source = data.draw(st.sampled_from(_files(work)))
    source.write_bytes(data.draw(corruptions(source.read_bytes())))
    answer = worker.run(Task(str(work), index, False, ("cpu",)))
    if isinstance(answer, tuple):
        outcome, error = answer
        assert outcome in (Outcome.TIMEOUT, Outcome.CRASH), error
        assert error.type != "CheckerError", error  # the checker itself must not fail
        return
    assert answer, "a file of the corpus got no cell"
    for cell in answer:
        Outcome(cell["outcome"])  # one of the outcomes the judge knows, or this raises
