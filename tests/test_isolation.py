"""The isolation module: failures come back as values; nothing outlives a SIGKILLed parent."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ckpt_compat.isolation import Child, Failure, call_once, scratch_dir
from tests.processes import alive, sigkill, start_parent, wait_gone

SLEEPER = ["tests.sleeper"]


def test_answers_timeouts_crashes_and_memory_are_values() -> None:
    with Child(SLEEPER, timeout=60, memory=2**30) as child:
        answer = child.request({"do": "echo"})
        assert isinstance(answer, dict) and answer["pid"] != os.getpid()
        private = Path(answer["tmp"])
        assert private.is_dir() and private.name.startswith("ckpt-compat-")
        died = child.request({"do": "die"})
        assert isinstance(died, Failure) and died.kind == "crash"
        assert "exit code 7" in died.message and "dying on purpose" in died.message
        assert not private.exists()  # the private temp dir goes with the process
        oom = child.request({"do": "allocate", "bytes": 4 * 2**30})
        assert isinstance(oom, Failure) and oom.kind == "out_of_memory", oom
        assert child.request({"do": "allocate", "bytes": 2**20}) == 2**20  # restarted
        child.timeout = 0.5
        hung = child.request({"do": "hang"})
        assert isinstance(hung, Failure) and hung.kind == "timeout"
    assert call_once(SLEEPER, {"do": "allocate", "bytes": 10}, timeout=60) == 10


def test_a_failure_quotes_what_its_own_request_wrote_only() -> None:
    """A worker serves many tasks: a warning an earlier one printed (seen: an LSTM oneDNN warning in
    a timeout cell) is not why this one failed, and an earlier MemoryError, handled, does not make
    this crash an out-of-memory one."""
    with Child(SLEEPER, timeout=60) as child:
        assert child.request({"do": "say", "text": "UserWarning: an earlier task's"}) == "said"
        child.timeout = 0.5
        hung = child.request({"do": "hang"})
        assert isinstance(hung, Failure) and hung.kind == "timeout"
        assert hung.message == "no answer within 0.5s; the process was killed."
        child.timeout = 60
        assert child.request({"do": "say", "text": "MemoryError: caught by the task"}) == "said"
        died = child.request({"do": "die"})
        assert isinstance(died, Failure) and died.kind == "crash", died
        assert died.message == "the process died (exit code 7): dying on purpose"
        # A process started by the request: what it wrote while starting is the request's.
        assert child.request({"do": "say", "text": "a third task's"}) == "said"
        assert "a third task's" in child.stderr_tail()


def test_what_the_work_writes_to_stdout_never_reaches_the_protocol() -> None:
    """Gloo's C++ log, a forked process and a print all write to descriptor 1 (torch 2.8's DCP
    ranks broke the protocol so); a process that still answers garbage costs its own request."""
    with Child(SLEEPER, timeout=60) as child:
        assert child.request({"do": "write to stdout"}) == "answered"
        assert child.request({"do": "write to stdout"}) == "answered"
        tail = child.stderr_tail()
        assert "[Gloo] Rank 1" in tail and "a forked process says hello" in tail and "a print" in tail
    garbage = call_once([*SLEEPER, "--garbage"], {"do": "echo"}, timeout=60)
    assert isinstance(garbage, Failure) and garbage.kind == "crash"
    assert "wrote 'not json\\n' instead of an answer" in garbage.message


_PARENT = """
import json, sys
from ckpt_compat.isolation import Child, scratch_dir
child = Child(["tests.sleeper"], timeout=600)
answer = child.request({"do": "spawn"})
with scratch_dir() as scratch:
    print(json.dumps({**answer, "scratch": str(scratch), "tmp": str(child.tmp)}), flush=True)
    child.request({"do": "hang"})
"""


def test_nothing_outlives_a_sigkilled_parent() -> None:
    parent, started = start_parent(_PARENT)
    assert alive(started["pid"]) and alive(started["grandchild"])
    sigkill(parent)
    assert wait_gone([started["pid"], started["grandchild"]]), "a child outlived its SIGKILLed parent"
    deadline = time.monotonic() + 10
    while (Path(started["scratch"]).exists() or Path(started["tmp"]).exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(started["scratch"]).exists() and not Path(started["tmp"]).exists()


def test_scratch_dirs_are_removed_on_exceptions() -> None:
    try:
        with scratch_dir() as path:
            (path / "x").write_text("x")
            raise KeyError("boom")
    except KeyError:
        pass
    assert not path.exists()


def test_a_pool_answers_in_task_order_and_a_dead_worker_costs_only_its_task() -> None:
    from ckpt_compat.isolation import Pool

    tasks = [{"do": "echo"}, {"do": "die"}, *({"do": "allocate", "bytes": n} for n in range(1, 9))]
    finished: list[int] = []
    with Pool(SLEEPER, jobs=2, timeout=60, memory=2**30) as pool:
        answers = pool.map(tasks, first=[1], done=lambda i, _: finished.append(i))
        assert pool.jobs == 2 and len({c.env["PYTHONHASHSEED"] for c in pool.children}) == 1
    assert answers[0]["pid"] != os.getpid()
    assert isinstance(answers[1], Failure) and answers[1].kind == "crash" and "exit code 7" in answers[1].message
    assert answers[2:] == list(range(1, 9))  # the restarted worker and the other one did the rest, in order
    assert sorted(finished) == list(range(len(tasks))) and finished[0] in (0, 1)
