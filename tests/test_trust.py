"""No file nobody vouched for reaches a loader that can run code: hostile corpora, real CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt_compat import payloads
from ckpt_compat.corpus import corpus_specs, produce
from ckpt_compat.formats import get_format
from ckpt_compat.manifest import MANIFEST, Manifest, ManifestError
from ckpt_compat.trust import OutsideCorpus, inside, is_package_fixture, package_fixtures

# Which payload stands in for which format's file in the hostile corpus.
HOSTILE = {
    "torch_zip": "reduce_protocol_2",
    "torch_module": "reduce_protocol_4",
    "torch_legacy": "nested_load",
    "torchscript_script": "torchscript_dispatch",
    "torch_export": "pt2_pickle",
    "dcp": "dcp_metadata",
}


def _hostile_corpus(root: Path) -> tuple[Path, Path]:
    """A real corpus whose files are replaced by canary payloads; (corpus, canary directory)."""
    formats = [get_format(name) for name in HOSTILE if not get_format(name).why_not_usable()]
    corpus, canaries = root / "corpus", root / "canaries"
    canaries.mkdir()
    produce(corpus, formats, specs={"tied": corpus_specs()["tied"]}, objects=False)
    for entry in Manifest.read(corpus).entries:
        if entry.file is None:
            continue
        target = corpus / entry.file
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        payloads.write(HOSTILE[entry.format], target, canaries / entry.format)
    return corpus, canaries


def _verify(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ckpt_compat.cli", "verify", "-q", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)


def test_no_canary_fires_without_trust_and_each_one_does_with_it(tmp_path: Path) -> None:
    corpus, canaries = _hostile_corpus(tmp_path)
    out = tmp_path / "results.json"
    done = _verify(str(corpus), "--no-fixtures", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(canaries.iterdir()) == []
    cells = json.loads(out.read_text())["cells"]
    refused = [c for c in cells if c["outcome"] == "unsupported" and "pass --trust" in c["error"]["message"]]
    assert {c["format"] for c in refused} >= {"torch_zip", "torchscript_script"}
    # The payloads are live: vouched for, each loader that can run code runs them.
    trusted = _verify(str(corpus), "--no-fixtures", "--trust", "--out", str(out))
    assert trusted.returncode == 0, trusted.stderr
    assert {"torch_module", "torch_export", "dcp", "torchscript_script"} & {p.name for p in canaries.iterdir()}


def test_trust_never_comes_from_the_current_directory(tmp_path: Path) -> None:
    corpus, canaries = _hostile_corpus(tmp_path)
    planted = tmp_path / "elsewhere" / "fixtures" / "corpora"
    planted.parent.mkdir(parents=True)
    shutil.move(corpus, planted)
    # Named as the committed fixtures are, relative to where the user stands: verified, not trusted.
    done = _verify("--fixtures", "fixtures/corpora", "--out", str(tmp_path / "r.json"), cwd=tmp_path / "elsewhere")
    assert done.returncode == 0, done.stderr
    assert sorted(canaries.iterdir()) == []
    assert not is_package_fixture(planted)
    fixtures = package_fixtures()
    if fixtures is not None:  # a source checkout: its committed corpora are the package's own
        assert is_package_fixture(next(fixtures.iterdir()))


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.pt", "a/../../b.pt", "", "a\\..\\b.pt"])
def test_manifest_paths_stay_inside_the_corpus(name: str, tmp_path: Path) -> None:
    with pytest.raises(OutsideCorpus):
        inside(tmp_path, name)


def test_a_manifest_pointing_outside_is_refused_with_one_line(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    produce(corpus, [get_format("torch_zip")], specs={"tied": corpus_specs()["tied"]}, objects=False)
    (tmp_path / "secret.pt").write_bytes(b"not yours")
    (corpus / "tied" / "link.pt").symlink_to(tmp_path / "secret.pt")
    for name in ("../secret.pt", "tied/link.pt"):
        manifest = json.loads((corpus / MANIFEST).read_text())
        manifest["entries"][0]["file"] = name
        (corpus / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ManifestError, match=r"outside the corpus|not a path inside"):
            Manifest.read(corpus)
        done = _verify(str(corpus), "--no-fixtures", "--out", str(tmp_path / "r.json"))
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert name in done.stderr


def test_truncated_files_never_load_as_ok(tmp_path: Path) -> None:
    """Every 97th truncation point and the last 40 of three formats, through verify's own loaders
    in the contained worker, untrusted: each is a failed cell, none passes as ok."""
    from ckpt_compat.results import Outcome
    from ckpt_compat.verify import Task, Worker

    formats = [get_format(n) for n in ("torch_zip", "torch_legacy", "safetensors_file")]
    corpus = tmp_path / "c"
    produce(corpus, formats, specs={"tied": corpus_specs()["tied"]}, objects=False)
    entries = [(i, e) for i, e in enumerate(Manifest.read(corpus).entries) if e.file]
    judged = tried = 0
    with Worker(timeout=120) as worker:
        for index, entry in entries:
            path = corpus / str(entry.file)
            data = path.read_bytes()
            cuts = sorted({*range(0, len(data), 97), *range(max(len(data) - 40, 0), len(data))})
            tried += len(cuts)
            for cut in cuts:
                path.write_bytes(data[:cut])
                answer = worker.run(Task(str(corpus), index, False, ("cpu",)))
                assert not isinstance(answer, tuple) or answer[1].type != "CheckerError", answer
                if isinstance(answer, list):
                    ok = [c for c in answer if c["outcome"] == Outcome.OK.value]
                    assert not ok, f"{entry.format} cut at {cut} of {len(data)} bytes loads as ok"
                    judged += 1
            path.write_bytes(data)
    # torch_zip and torch_legacy always write a file (safetensors refuses the tie on some torch);
    # every cut came back as cells, not as a dead worker.
    assert len(entries) >= 2 and judged == tried >= 2 * 40


def test_what_a_read_blocks_on_is_refused_before_any_load(tmp_path: Path) -> None:
    """A FIFO, a device, or a link inside a checkpoint folder: a loader would block on it, never
    end, or read what the corpus does not hold (measured before: 120 s and a `timeout` cell per
    FIFO). The manifest is refused with one line naming the member, before any worker starts."""
    import os

    corpus = tmp_path / "c"
    formats = [get_format(n) for n in ("torch_zip", "dcp") if not get_format(n).why_not_usable()]
    produce(corpus, formats, specs={"tied": corpus_specs()["tied"]}, objects=False)
    zipped = corpus / "tied" / "torch_zip.pt"
    zipped.unlink()
    os.mkfifo(zipped)
    with pytest.raises(ManifestError, match=r"'tied/torch_zip\.pt' is a FIFO, not a checkpoint file"):
        Manifest.read(corpus)
    done = _verify(str(corpus), "--no-fixtures", "--out", str(tmp_path / "r.json"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "is a FIFO" in done.stderr and not (tmp_path / "r.json").exists()
    zipped.unlink()
    zipped.symlink_to("/dev/zero")  # a link to a device leads outside the corpus as well
    with pytest.raises(ManifestError, match="leads outside the corpus"):
        Manifest.read(corpus)
    zipped.unlink()
    if get_format("dcp").why_not_usable():
        return
    folder = corpus / "tied" / "dcp.dcp"
    member = next(p for p in folder.iterdir() if p.suffix == ".distcp")
    member.rename(tmp_path / member.name)
    member.symlink_to(tmp_path / member.name)
    with pytest.raises(ManifestError, match=rf"'tied/dcp\.dcp/{member.name}' is a symbolic link"):
        Manifest.read(corpus)
