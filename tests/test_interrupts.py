"""Killed, starved of disk, interrupted: the previous outputs survive, nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckpt_compat.forkserver import supported
from ckpt_compat.manifest import MANIFEST
from tests.processes import alive, cmdline, descendants

CLI = [sys.executable, "-m", "ckpt_compat.cli"]


def _private_temp(tmp_path: Path) -> Path:
    """A temp dir of the test's own: what appears in it is this command's, whatever else runs."""
    (tmp_path / "tmp").mkdir()
    return tmp_path / "tmp"


def _with_temp(temp: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(temp)}


def _leftovers(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def _produce(out: Path, *extra: str, limit_kib: int | None = None) -> subprocess.Popen[str]:
    command = [*CLI, "produce", "--out", str(out), "--formats", "torch_zip,safetensors_file", "-q", *extra]
    if limit_kib is not None:  # RLIMIT_FSIZE: writes past it fail with EFBIG, as on a full disk
        command = ["bash", "-c", f'ulimit -f {limit_kib}; exec "$@"', "bash", *command]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def old_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("interrupts") / "corpus"
    done = _produce(out)
    assert done.wait(600) == 0, done.stderr.read() if done.stderr else ""
    return out


def test_a_full_disk_is_an_error_and_the_old_corpus_survives(old_corpus: Path) -> None:
    before = (old_corpus / MANIFEST).read_bytes()
    proc = _produce(old_corpus, limit_kib=16)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    assert len(err.strip().splitlines()) == 1 and f"writing {old_corpus} failed" in err, err
    assert "File too large" in err or "over a size limit" in err, err
    assert (old_corpus / MANIFEST).read_bytes() == before
    assert _leftovers(old_corpus.parent) == []


def test_a_sigkilled_produce_leaves_the_old_corpus_and_no_temp_dir(old_corpus: Path) -> None:
    before = (old_corpus / MANIFEST).read_bytes()
    proc = _produce(old_corpus)
    deadline = time.monotonic() + 120
    while not _leftovers(old_corpus.parent) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _leftovers(old_corpus.parent), "produce never started writing"
    time.sleep(1.0)  # some files written into the new corpus
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while _leftovers(old_corpus.parent) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _leftovers(old_corpus.parent) == []
    assert (old_corpus / MANIFEST).read_bytes() == before


def test_a_sigkilled_verify_leaves_no_process_and_no_temp_dir(old_corpus: Path, tmp_path: Path) -> None:
    temp = _private_temp(tmp_path)
    before = set(temp.glob("ckpt-compat-*"))
    out = tmp_path / "results.json"
    command = [*CLI, "verify", str(old_corpus), "--no-fixtures", "-q", "--out", str(out)]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=_with_temp(temp)
    )
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline:
        # An exec'd worker runs ckpt_compat.isolation; a forked one, and its server, show the server's
        # command: ckpt_compat.forkserver, or the CLI's own where the server is a fork of it.
        workers = [p for p in descendants(proc.pid) if "ckpt_compat" in cmdline(p)]
        if workers and set(temp.glob("ckpt-compat-*")) - before:
            break
        time.sleep(0.05)
    assert workers, "verify never started its worker"
    if supported():  # the command's workers' server is a fork of it (it imported torch already)
        assert any(cmdline(p) == cmdline(proc.pid) for p in workers), [cmdline(p) for p in workers]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while (any(alive(w) for w in workers) or set(temp.glob("ckpt-compat-*")) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers)
    assert set(temp.glob("ckpt-compat-*")) - before == set()
    assert not out.exists()


def test_leftovers_of_a_dead_writer_are_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    from ckpt_compat.atomic import atomic_dir

    target = tmp_path / "corpus"
    dead = tmp_path / f".corpus.{2**22 + 12345}.abc.tmp"  # above any pid_max: no such process
    live = tmp_path / f".corpus.{os.getpid()}.def.tmp"
    for leftover in (dead, live):
        leftover.mkdir()
        (leftover / "half-written.pt").write_bytes(b"PK")
    with atomic_dir(target) as work:
        (work / "manifest.json").write_text("{}")
    assert not dead.exists() and live.exists() and (target / "manifest.json").is_file()


def test_a_sigkilled_run_leaves_no_process_and_no_temp_dir(tmp_path: Path) -> None:
    temp = _private_temp(tmp_path)
    before = set(temp.glob("ckpt-compat-*"))
    command = [*CLI, "run", "--examples", "30", "--formats", "torch_zip,torchscript_script", "--out", str(tmp_path)]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=_with_temp(temp)
    )
    deadline = time.monotonic() + 120
    while not set(temp.glob("ckpt-compat-*")) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(temp.glob("ckpt-compat-*")) - before, "run never made its scratch directory"
    time.sleep(2.0)  # well into the property check
    started = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while (set(temp.glob("ckpt-compat-*")) - before or any(map(alive, started))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(temp.glob("ckpt-compat-*")) - before == set()
    assert not [p for p in started if alive(p) and "ckpt_compat" in cmdline(p)]
    assert not (tmp_path / "report.json").exists()
