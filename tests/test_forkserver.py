"""The fork server: a pool's workers and their restarts are forks of one process that imported
once, contained exactly as an exec'd child is; where forking is not possible, an exec'd child."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from ckpt_compat.forkserver import Forked, Forkserver, Stopped, supported
from ckpt_compat.isolation import MEMORY_LIMIT, Child, Failure, Pool
from tests.processes import alive, sigkill, start_parent, wait_gone

SLEEPER = ["tests.sleeper"]
pytestmark = pytest.mark.skipif(not supported(), reason="no fork server on this platform (Linux >= 5.3 only)")


def _preloads(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_workers_and_restarts_are_forks_of_one_server_that_imported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "preloads"
    monkeypatch.setenv("CKPT_COMPAT_TEST_PRELOAD_LOG", str(log))
    with Pool(SLEEPER, jobs=2, timeout=60, memory=2**30, env={"CKPT_COMPAT_TEST_MARKER": "pool"}).start() as pool:
        first = pool.map([{"do": "contained"}] * 4)
        died = pool.request({"do": "die"})
        again = pool.map([{"do": "contained"}] * 4)
        server = pool.forkserver._proc
        assert server is not None
    assert isinstance(died, Failure) and "exit code 7" in died.message and "dying on purpose" in died.message
    pids = {a["pid"] for a in first + again}
    assert len(pids) == 3  # two workers, one of them restarted after it died
    assert _preloads(log) == [server.pid]  # one import for all three
    for answer in first + again:
        assert answer["parent"] == server.pid and answer["session"] == answer["pid"]  # forked, own session
        assert answer["tempdir"] == answer["tmp"] and Path(answer["tmp"]).name.startswith("ckpt-compat-")
        assert answer["marker"] == "pool" and answer["heap"] == 2**30
        assert answer["stdin"].startswith("pipe:")
    assert not alive(server.pid) and not any(alive(p) for p in pids)


def test_a_workers_own_children_are_forks_of_its_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's fresh process (training resumes, DCP's ranks) is forked, not imported again."""
    log = tmp_path / "preloads"
    monkeypatch.setenv("CKPT_COMPAT_TEST_PRELOAD_LOG", str(log))
    with Pool(SLEEPER, jobs=1, timeout=60, memory=2**30).start() as pool:
        answer = pool.request({"do": "child"})
        worker = pool.request({"do": "contained"})
        server = pool.forkserver._proc
        assert server is not None
    nested = answer["child"]
    assert answer["forked"] and nested["parent"] == server.pid and nested["pid"] != worker["pid"]
    assert nested["session"] == nested["pid"] and nested["heap"] == MEMORY_LIMIT  # contained as any child
    assert nested["tempdir"] == nested["tmp"] != worker["tmp"]
    assert _preloads(log) == [server.pid]
    assert not alive(nested["pid"]) and not alive(server.pid)


def test_outside_a_forked_worker_there_is_no_server_to_inherit() -> None:
    """The test process, and an exec'd child (which must not take a descriptor number from its
    environment), start their children as interpreters."""
    assert Forkserver.inherited() is None
    with Child(SLEEPER, timeout=60) as child:
        answer = child.request({"do": "child"})
        assert not answer["forked"] and answer["child"]["parent"] == child.proc.pid  # type: ignore[union-attr]


def test_a_workers_children_go_with_it() -> None:
    """The server kills what a worker asked for when the worker ends, however it ends."""
    with Pool(SLEEPER, jobs=1, timeout=60).start() as pool:
        kept = pool.request({"do": "keep a child"})
        assert alive(kept["pid"])
        died = pool.request({"do": "die"})
        assert isinstance(died, Failure)
        assert wait_gone([kept["pid"]]), "a dead worker's child lives on"
        assert pool.request({"do": "child"})["forked"]  # the server serves on


def test_a_large_environment_still_forks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spawn request carries the child's whole environment; a CI runner's can be 100 KB."""
    for i in range(15):
        monkeypatch.setenv(f"CKPT_COMPAT_TEST_LARGE_{i}", "x" * 10_000)
    with Forkserver(SLEEPER[0]) as server, Child(SLEEPER, timeout=60, forkserver=server) as child:
        answer = child.request({"do": "contained"})
        assert server._proc is not None and answer["parent"] == server._proc.pid


def test_a_forked_child_fails_as_an_execd_one_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash, out of memory and timeout come back as the same `Failure`s, and the child's private
    temp dir goes with it."""
    monkeypatch.setenv("CKPT_COMPAT_TEST_PRELOAD_LOG", str(tmp_path / "preloads"))
    with Forkserver(SLEEPER[0]) as server, Child(SLEEPER, timeout=60, memory=2**30, forkserver=server) as child:
        answer = child.request({"do": "contained"})
        assert server._proc is not None and answer["parent"] == server._proc.pid
        oom = child.request({"do": "allocate", "bytes": 4 * 2**30})
        assert isinstance(oom, Failure) and oom.kind == "out_of_memory", oom
        assert not Path(answer["tmp"]).exists()
        assert child.request({"do": "allocate", "bytes": 2**20}) == 2**20
        child.timeout = 0.5
        hung = child.request({"do": "hang"})
        assert isinstance(hung, Failure) and hung.kind == "timeout"
        child.timeout = 60
        assert child.request({"do": "echo"})["pid"] != answer["pid"]


def test_without_a_working_server_the_child_is_an_interpreter_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    (tmp_path / "failing_preload.py").write_text(
        "def preload():\n    raise RuntimeError('a preload that fails')\n"
        "if __name__ == '__main__':\n    from tests.sleeper import handle\n"
        "    from ckpt_compat.isolation import serve\n    serve(handle)\n"
    )
    with Forkserver("failing_preload") as server, Child(["failing_preload"], timeout=60, forkserver=server) as child:
        answer = child.request({"do": "contained"})
    assert answer["parent"] == os.getpid() and answer["session"] == answer["pid"]


def test_a_pool_stopped_while_its_server_imports_stops_now_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A usage error found while the workers' imports run (a bad --spec) must not wait for them."""
    monkeypatch.setenv("CKPT_COMPAT_TEST_PRELOAD_SECONDS", "3600")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    pool = Pool(SLEEPER, jobs=2, timeout=60).start()
    waiting = pool.submit({"do": "echo"})
    deadline = time.monotonic() + 60
    while pool.forkserver._proc is None and time.monotonic() < deadline:
        time.sleep(0.05)
    server = pool.forkserver._proc
    assert server is not None and alive(server.pid)
    stopping = threading.Thread(target=pool.stop)
    stopping.start()
    stopping.join(60)
    assert not stopping.is_alive(), "stop waited for the server's imports"
    with pytest.raises(Stopped):
        waiting.result(60)
    assert not alive(server.pid) and list(tmp_path.iterdir()) == []  # no worker, no temp dir


_PARENT = """
import json
from ckpt_compat.isolation import Pool
pool = Pool(["tests.sleeper"], jobs=1, timeout=600).start()
answer = pool.request({"do": "spawn"})
print(json.dumps({**answer, "server": pool.forkserver._proc.pid}), flush=True)
pool.request({"do": "hang"})
"""


def test_nothing_a_pool_forked_outlives_its_sigkilled_parent() -> None:
    parent, started = start_parent(_PARENT)
    assert started["parent"] == started["server"]
    processes = [started["pid"], started["grandchild"], started["server"]]
    assert all(alive(p) for p in processes)
    sigkill(parent)
    assert wait_gone(processes), "a forked worker, its child or the server outlived the parent"


_TEMPLATE = """
import json, os, sys, threading, time
import torch
from ckpt_compat.isolation import Pool, usable_cores
if sys.argv[1] == "thread":  # another thread runs: a fork would copy only this one
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
with Pool(["tests.sleeper"], jobs=2, timeout=60, fork_here=("torch",)).start() as pool:
    answers = pool.map([{"do": "inherited"}] * 2)
    server = pool.forkserver._proc.pid
    command = open(f"/proc/{server}/cmdline").read().split("\\0")
print(json.dumps({"answers": answers, "server": server, "command": command, "here": sys.argv[0],
                  "hash": hash("a string"), "threads": max(1, usable_cores() // 2), "pid": os.getpid()}))
"""


@pytest.mark.parametrize("thread", ["alone", "thread"])
def test_a_server_forked_from_its_pool_owner_skips_the_imports_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thread: str
) -> None:
    """``fork_here``: the server is a fork of the process that imported torch already (the CLI's),
    so it imports only the rest; its workers get the thread count their share of the cores says
    (OpenMP read the environment when torch loaded, before the share was known) and one hash
    seed. With another thread running, a fork is not safe: an interpreter of its own, as before."""
    import subprocess
    import sys

    log = tmp_path / "preloads"
    monkeypatch.setenv("CKPT_COMPAT_TEST_PRELOAD_LOG", str(log))
    ran = subprocess.run([sys.executable, "-c", _TEMPLATE, thread], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    got = json.loads(ran.stdout)
    assert _preloads(log) == [got["server"]]
    forked = got["command"][:2] == [sys.executable, "-c"]
    assert forked == (thread == "alone"), got["command"]
    assert forked or got["command"][1:3] == ["-m", "ckpt_compat.forkserver"]
    for answer in got["answers"]:
        assert answer["parent"] == got["server"]
        assert answer["torch"] == forked  # the sleeper's server imports no torch of its own
        assert answer["threads"] == (got["threads"] if forked else None)
        assert (answer["hash"] == got["hash"]) == forked  # a fork keeps this process's hash seed
    assert got["answers"][0]["hash"] == got["answers"][1]["hash"]  # one seed for every worker


def test_two_threads_waiting_for_one_child_reap_it_once() -> None:
    """A pool's owner stopping it on an error and the thread whose request found the child dead
    both wait: both get the exit status, and the child's pidfd is closed once, not twice (which
    failed with EBADF, or closed whatever descriptor had taken its number)."""
    with Forkserver(SLEEPER[0]) as server:
        for _ in range(5):
            child = server.spawn(SLEEPER, env=dict(os.environ), memory=None, stderr=2)
            assert child is not None
            os.kill(child.pid, 9)
            assert _wait_at_once(child, threads=3) == [-9, -9, -9]


def _wait_at_once(child: Forked, threads: int) -> list[int | OSError]:
    start, got = threading.Barrier(threads), []

    def wait() -> None:
        start.wait()
        try:
            got.append(child.wait())
        except OSError as exc:
            got.append(exc)

    waiting = [threading.Thread(target=wait) for _ in range(threads)]
    for t in waiting:
        t.start()
    for t in waiting:
        t.join(60)
    return got
