"""A child for tests/test_isolation.py: answers, hangs, dies, allocates or spawns on request."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from ckpt_compat.isolation import serve


def preload() -> None:
    """What a fork server for sleepers runs once: it says so in the file its test names."""
    log = os.environ.get("CKPT_COMPAT_TEST_PRELOAD_LOG")
    if log:
        with open(log, "a") as out:
            out.write(f"{os.getpid()}\n")
    time.sleep(float(os.environ.get("CKPT_COMPAT_TEST_PRELOAD_SECONDS", "0")))  # imports that take long


_kept: list[Any] = []  # children kept alive between requests


def handle(message: dict[str, Any]) -> Any:
    action = message["do"]
    if action == "echo":
        return {"pid": os.getpid(), "tmp": os.environ.get("TMPDIR")}
    if action == "contained":  # what a contained child should be, as this process finds itself
        import resource
        import tempfile

        return {
            "pid": os.getpid(),
            "parent": os.getppid(),
            "session": os.getsid(0),
            "tempdir": tempfile.gettempdir(),
            "tmp": os.environ.get("TMPDIR"),
            "marker": os.environ.get("CKPT_COMPAT_TEST_MARKER"),
            "heap": resource.getrlimit(resource.RLIMIT_DATA)[0],
            "stdin": os.readlink("/proc/self/fd/0"),
        }
    if action == "inherited":  # what a child got from the process its server was forked from, if any
        torch = sys.modules.get("torch")
        return {
            "parent": os.getppid(),
            "torch": torch is not None,
            "threads": torch.get_num_threads() if torch is not None else None,
            "hash": hash("a string"),
        }
    if action == "say":  # a warning on stderr, as torch prints them, and an answer
        print(message["text"], file=sys.stderr, flush=True)
        return "said"
    if action == "hang":
        time.sleep(3600)
    if action == "die":
        print("dying on purpose", file=sys.stderr, flush=True)
        os._exit(7)
    if action == "allocate":
        return len(bytearray(message["bytes"]))
    if action == "spawn":  # a grandchild, as torch.multiprocessing starts them
        grandchild = subprocess.Popen(["sleep", "3600"])
        return {"pid": os.getpid(), "grandchild": grandchild.pid, "parent": os.getppid()}
    if action == "child":  # a child of its own, forked by this process's server where it has one
        from ckpt_compat.forkserver import Forkserver
        from ckpt_compat.isolation import call_once

        server = Forkserver.inherited()
        answer = call_once(["tests.sleeper"], {"do": "contained"}, timeout=60, forkserver=server)
        return {"forked": server is not None, "child": answer}
    if action == "keep a child":  # one that stays, for this process's end to take with it
        from ckpt_compat.forkserver import Forkserver
        from ckpt_compat.isolation import Child

        _kept.append(Child(["tests.sleeper"], timeout=60, forkserver=Forkserver.inherited()))
        return _kept[-1].request({"do": "contained"})
    if action == "write to stdout":  # as C++ (Gloo) and forked processes (DCP's ranks) do
        os.write(1, b"[Gloo] Rank 1 is connected to 1 peer ranks\n")
        pid = os.fork()
        if pid == 0:
            os.write(1, b"a forked process says hello\n")
            os._exit(0)
        os.waitpid(pid, 0)
        print("a print")
        return "answered"
    raise ValueError(action)


if __name__ == "__main__":
    if sys.argv[1:] == ["--garbage"]:  # a process that answers with something else than JSON
        for _ in sys.stdin:
            print("not json", flush=True)
    serve(handle)
