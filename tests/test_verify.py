"""verify under the running torch; tampering with a produced file is caught for exactly that file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckpt_compat.corpus import corpus_specs, find_corpora, produce
from ckpt_compat.expectations import Expectations
from ckpt_compat.formats import get_format
from ckpt_compat.isolation import Pool
from ckpt_compat.manifest import MANIFEST
from ckpt_compat.results import CellResult, Outcome
from ckpt_compat.verify import Task, Worker, verify
from tests.faults import flip_bit

SPECS = ("layers-float32", "tied", "layouts")
FORMATS = ("torch_zip", "torch_legacy", "safetensors_model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    specs = {k: v for k, v in corpus_specs().items() if k in SPECS}
    produce(root, [get_format(f) for f in FORMATS if not get_format(f).why_not_usable()], specs=specs)
    return root


@pytest.fixture(scope="module")
def verified(corpus: Path, workers: Pool) -> list[CellResult]:
    """The clean corpus verified on the CPU by two workers, once for every test that only reads it."""
    assert workers.jobs == 2
    return verify([corpus], trusted=lambda _: True, consumers=["cpu"], pool=workers)


def _copy(corpus: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(corpus, dest)
    return dest


def _by_file(results: list) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for r in results:
        out.setdefault((r.cell.spec_id, r.cell.format), set()).add(r.outcome.value)
    return out


def _unexplained(results: list) -> list:
    expectations = Expectations.load()
    return [r for r in results if not expectations.judge_one(r).explained]


def test_a_clean_corpus_verifies(corpus: Path, workers: Pool) -> None:
    results = verify([corpus], trusted=lambda _: True, consumers=["cpu", "meta"], pool=workers)
    assert results and _unexplained(results) == []
    producers = {r.cell.producer.torch for r in results}
    assert producers == {torch.__version__}


def _tamper_and_verify(corpus: Path, tmp_path: Path, how: str, pool: Pool) -> tuple[list, tuple[str, str]]:
    work = _copy(corpus, tmp_path / "c")
    manifest = json.loads((work / MANIFEST).read_text())
    entry = next(e for e in manifest["entries"] if e["spec"] == "layers-float32" and e["format"] == "torch_zip")
    path = work / entry["file"]
    if how == "flip":
        state = torch.load(path, weights_only=True)
        flip_bit(path, bytes(state["linear.weight"].contiguous().view(torch.uint8).numpy()), byte=2, bit=3)
    elif how == "delete":
        state = torch.load(path, weights_only=True)
        del state["bn1d.running_mean"]
        torch.save(state, path)
    elif how == "comment":  # a zip comment after the end record: torch.load reads the same state
        data = bytearray(path.read_bytes())
        assert data[-22:-18] == b"PK\x05\x06"  # torch writes the end-of-central-directory record last
        data[-2:] = (5).to_bytes(2, "little")
        path.write_bytes(bytes(data) + b"hello")
        assert torch.load(path, weights_only=True).keys() == torch.load(corpus / entry["file"]).keys()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    results = verify([work], trusted=lambda _: True, consumers=["cpu"], pool=pool)
    return results, (entry["spec_id"], "torch_zip")


@pytest.mark.parametrize(
    ("how", "outcome", "fragment"),
    [
        ("flip", Outcome.MISMATCH, "manifest['linear.weight']: bytes: [Linear] digest"),
        ("delete", Outcome.KEYS, "manifest['bn1d.running_mean']: missing"),
        ("truncate", Outcome.LOAD_ERROR, "Error"),
        # Loads the same: only the file's digest in the manifest can tell.
        ("comment", Outcome.MISMATCH, "file: bytes: the file's bytes are not those the producer wrote"),
    ],
)
def test_tampering_is_caught_for_exactly_that_file(
    corpus: Path, tmp_path: Path, how: str, outcome: Outcome, fragment: str, workers: Pool
) -> None:
    results, tampered = _tamper_and_verify(corpus, tmp_path, how, workers)
    bad = _unexplained(results)
    assert bad and {(r.cell.spec_id, r.cell.format) for r in bad} == {tampered}
    assert all(r.outcome is outcome and fragment in r.detail for r in bad)
    if how == "flip":  # a digest says that bytes differ, not how many: no known issue's size bound can hold
        assert all(d.elements is None and d.max_abs is None for r in bad for d in r.differences if d.root == "manifest")


def test_gate_fails_on_tampering_and_passes_clean(
    corpus: Path, verified: list[CellResult], tmp_path: Path, workers: Pool
) -> None:
    results, _ = _tamper_and_verify(corpus, tmp_path, "flip", workers)
    from ckpt_compat.report import Report

    bad, clean = tmp_path / "bad.json", tmp_path / "clean.json"
    Report(results, {}, Expectations.load()).write_results(bad)
    Report(verified, {}, Expectations.load()).write_results(clean)
    gate = [sys.executable, "-m", "ckpt_compat.cli", "gate"]
    failed = subprocess.run([*gate, str(bad)], capture_output=True, text=True)
    passed = subprocess.run([*gate, str(clean)], capture_output=True, text=True)
    assert failed.returncode == 1 and "UNEXPLAINED torch_zip" in failed.stdout
    assert passed.returncode == 0 and "gate passed" in passed.stdout


def test_untrusted_corpora_never_unpickle_modules(tmp_path: Path, workers: Pool) -> None:
    produce(tmp_path, [get_format("torch_module")], specs={"tied": corpus_specs()["tied"]})
    results = verify(find_corpora([tmp_path]), trusted=lambda _: False, consumers=["cpu"], pool=workers)
    refused = [r for r in results if r.cell.options.get("weights_only") is False]
    assert refused and all(r.outcome is Outcome.UNSUPPORTED and "pass --trust" in r.detail for r in refused)


def test_worker_timeout_and_crash_are_outcomes_and_the_worker_restarts(corpus: Path, tmp_path: Path) -> None:
    task = Task(str(corpus), 0, True, ("cpu",))
    with Worker(timeout=0.001) as worker:
        assert worker.run(task)[0] is Outcome.TIMEOUT  # the worker cannot even import torch that fast
        worker.timeout = 120
        assert isinstance(worker.run(task), list)
        broken = _copy(corpus, tmp_path / "broken")
        manifest = json.loads((broken / MANIFEST).read_text())
        manifest["specs"]["tied"]["root"] = "not a node"
        (broken / MANIFEST).write_text(json.dumps(manifest))
        index = next(i for i, e in enumerate(manifest["entries"]) if e["spec"] == "tied" and e["file"])
        outcome, error = worker.run(Task(str(broken), index, True, ("cpu",)))  # type: ignore[misc]
        assert outcome is Outcome.CRASH and error.type == "CheckerError"  # the entry's cells, not the worker
        assert "the checker failed: ManifestError" in error.message and "spec 'tied': spec.root" in error.message
        assert isinstance(worker.run(task), list)


def test_whole_objects_verify_and_a_changed_optimizer_state_is_named(
    corpus: Path, verified: list[CellResult], tmp_path: Path, workers: Pool
) -> None:
    results = verified
    checks = {r.cell.options.get("check") for r in results}
    assert {"resume", "bundle", "stream"} <= checks
    resumed = [r for r in results if r.cell.options.get("check") == "resume" and r.outcome is Outcome.OK]
    assert {r.cell.options["optimizer"] for r in resumed} == {"sgd_momentum", "adam", "adamw"}
    assert all(r.checks == ("load", "manifest", "resume") for r in resumed)

    work = _copy(corpus, tmp_path / "c")
    path = work / "training-adam" / "torch_zip.pt"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["optimizer"]["state"][0]["exp_avg"].view(-1)[0] += 1
    torch.save(checkpoint, path)
    changed = [
        r
        for r in verify([work], trusted=lambda _: True, consumers=["cpu"], pool=workers)
        if r.cell.format == "torch_zip"
        and r.cell.options.get("optimizer") == "adam"
        and r.cell.options.get("weights_only") is False
    ]
    [cell] = changed
    assert cell.outcome is Outcome.MISMATCH and not Expectations.load().judge_one(cell).explained
    paths = {d.path for d in cell.differences}
    assert ("checkpoint", "optimizer", "state", 0, "exp_avg") in paths
    assert any(p[0] == "resume" for p in paths)  # and training on from it diverges


def test_a_broken_training_reference_fails_its_cells_not_the_worker(
    corpus: Path, tmp_path: Path, workers: Pool
) -> None:
    work = _copy(corpus, tmp_path / "c")
    (work / "training-adam" / "reference.pt").write_bytes(b"not a checkpoint")
    results = [
        r
        for r in verify([work], trusted=lambda _: False, consumers=["cpu"], pool=workers)
        if r.cell.options.get("optimizer") == "adam" and r.cell.options.get("check") == "resume"
    ]
    assert results and all(r.outcome is Outcome.LOAD_ERROR for r in results)
    assert all(r.error is not None and r.error.message.startswith("reference.pt: ") for r in results)


def test_two_workers_give_the_same_results_as_one(corpus: Path, verified: list[CellResult]) -> None:
    one = verify([corpus], trusted=lambda _: True, consumers=["cpu"], jobs=1)
    two = verified
    assert len(one) > 20
    assert [r.to_json() for r in two] == [r.to_json() for r in one]


def test_a_folder_digest_covers_its_members_names_and_bytes(tmp_path: Path) -> None:
    from ckpt_compat.corpus import file_digest

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"12")
    (folder / "b.bin").write_bytes(b"3")
    before = file_digest(folder)
    (folder / "b.bin").rename(folder / "c.bin")
    renamed = file_digest(folder)
    (folder / "c.bin").rename(folder / "b.bin")
    (folder / "extra").write_bytes(b"")
    assert len({before, renamed, file_digest(folder)}) == 3
    (folder / "extra").unlink()
    assert file_digest(folder) == before


def test_a_changed_file_keeps_an_unsafe_or_failed_verdict_and_fails_an_ok_one() -> None:
    from ckpt_compat.differences import Difference
    from ckpt_compat.errorinfo import ErrorInfo
    from ckpt_compat.results import Cell, CellResult, Endpoint
    from ckpt_compat.verify import _with_difference

    here = Endpoint(torch.__version__, "cpu")
    cell = Cell("s", "torch_zip", here, here, {})
    changed = Difference("bytes", ("file",), "changed")
    unsafe = CellResult.of(cell, [], unsafe=True)  # an unsafe load carries no error: still unsafe
    failed = CellResult(cell, Outcome.LOAD_ERROR, error=ErrorInfo("EOFError", "cut"))
    outcomes = [_with_difference(r, changed).outcome for r in (unsafe, failed, CellResult.of(cell, []))]
    assert outcomes == [Outcome.UNSAFE, Outcome.LOAD_ERROR, Outcome.MISMATCH]
    assert all(_with_difference(r, changed).differences[0] is changed for r in (unsafe, failed))


def test_a_failed_save_is_judged_once_under_the_producers_torch(
    corpus: Path, verified: list[CellResult], tmp_path: Path, workers: Pool
) -> None:
    """A produce whose save failed writes no file; unless verify judges that failure, an exporter
    a pin broke writes nothing and the matrix passes with fewer cells."""
    from ckpt_compat.manifest import Manifest

    manifest = Manifest.read(corpus)
    failed = {(e.spec_id, e.format): e for e in manifest.entries if e.file is None}
    assert failed and all(e.error is not None for e in failed.values())  # tied: safetensors refuses shared memory
    results = verified
    saves = [r for r in results if (r.cell.spec_id, r.cell.format) in failed]
    here = manifest.producer
    assert [(r.cell.spec_id, r.cell.format) for r in saves] == list(failed)
    for r in saves:
        entry = failed[r.cell.spec_id, r.cell.format]
        assert (r.cell.producer, r.cell.consumer, r.cell.options) == (here, here, {})
        assert r.outcome.value == entry.outcome and r.error is not None and r.error.to_json() == entry.error
    assert _unexplained(saves) == []
    # Another release verifying this corpus does not judge the save again (it happened once).
    other = _copy(corpus, tmp_path / "other")
    data = json.loads((other / MANIFEST).read_text())
    data["torch"] = "2.99.0"
    (other / MANIFEST).write_text(json.dumps(data))
    again = verify([other], trusted=lambda _: True, consumers=["cpu"], pool=workers)
    assert not [r for r in again if (r.cell.spec_id, r.cell.format) in failed]
    assert len(again) == len(results) - len(saves)


def test_a_failed_save_whose_error_does_not_read_is_a_bad_manifest(corpus: Path, tmp_path: Path) -> None:
    from ckpt_compat.manifest import Manifest, ManifestError

    bad = _copy(corpus, tmp_path / "bad")
    data = json.loads((bad / MANIFEST).read_text())
    entry = next(e for e in data["entries"] if e.get("error"))
    entry["error"] = {"message": "no type"}
    (bad / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=f"entry {entry['spec']}/{entry['format']}: an error needs a type"):
        Manifest.read(bad)


def test_a_changed_training_reference_fails_the_cells_that_resume_against_it(
    corpus: Path, tmp_path: Path, workers: Pool
) -> None:
    """A reference changed along with the checkpoint could make a changed resume look right: its
    bytes are checked like the file's."""
    work = _copy(corpus, tmp_path / "c")
    path = work / "training-adam" / "reference.pt"
    reference = torch.load(path, weights_only=True)
    torch.save(reference, path, _use_new_zipfile_serialization=False)  # the same objects, other bytes
    results = verify([work], trusted=lambda _: True, consumers=["cpu"], pool=workers)
    changed = {
        r.cell.options.get("optimizer") for r in results if ("file", "reference") in {d.path for d in r.differences}
    }
    assert changed == {"adam"}
    adam = [r for r in results if r.cell.options.get("optimizer") == "adam"]
    assert adam and all(r.outcome is not Outcome.OK and not Expectations.load().judge_one(r).explained for r in adam)
