"""Fresh contained children at the cost of a fork: a *fork server* imports a module's packages
once (its ``preload()``: torch, every format's packages), then forks each child `isolation.Child`
asks it for.

Why: every worker of every command, every restart after a crash, and every hostile payload's
fresh child paid the imports again: 1-3 s for torch, about 5 s with MLflow, ONNX and DCP, per
process. A forked child is as fresh as an exec'd one where it matters: nothing but imports ran in
the server (no file was read, no payload ran, CUDA was not initialised, which `_fork` checks), and
the child contains itself as an exec'd one does (`isolation`): a session of its own,
PR_SET_PDEATHSIG (on the server, which has it on the command), its memory limit, its private
TMPDIR, the standard streams its parent gave it. The server keeps the environment its parent's
children get (the hash seed and the OpenMP thread count are read at startup, so the server is
started with them; a server forked from its caller, below, has its caller's hash seed, one for
every child still, and sets the thread count).

A child may itself ask the server for children (`Forkserver.inherited`): a worker's fresh
process for training resumes, DCP's ranks. The server forks them too, and kills those a child
asked for when it goes (its connection closes), so they live no longer than it does.

Where the platform lacks what this needs (fork, SCM_RIGHTS, pidfd_open: Linux >= 5.3) or the
server cannot start or answer, `Forkserver.spawn` returns None and the caller starts an
interpreter as before: slower, never different.

The server itself is a fresh interpreter, or, for a caller that asks (``fork_here``: the CLI, whose
process has imported nothing but torch and the command line's modules when its pool starts), a
fork of the caller: the server then skips the import of torch the caller already paid (1-1.5 s
of a core per command, of ~5 s). Only from the main thread of a process running no other Python
thread and with CUDA not initialised; otherwise an interpreter as before.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence
from typing import IO, Any

PRELOAD_TIMEOUT = 600.0  # seconds the server may take to import before a spawn gives up on it
MESSAGE_BYTES = 2**20  # a spawn request carries the child's whole environment (a CI runner's is large)


def supported() -> bool:
    """Whether this platform can fork children from a server and watch them from here."""
    if sys.platform != "linux" or not hasattr(socket, "send_fds") or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))  # ENOSYS before Linux 5.3
    except OSError:
        return False
    return True


# In a forked child: its own connection to the server that forked it (a descriptor), if it asked
# for one. A module global, not the environment: an interpreter this child execs must not inherit it.
_connection: int | None = None
_inherited: Forkserver | None = None


class Stopped(RuntimeError):
    """A spawn asked of a stopped `Forkserver`."""


class Forked:
    """A child the server forked, as `isolation.Child` uses a `subprocess.Popen`: ``pid``,
    ``stdin`` / ``stdout`` (its protocol, text), `poll` and `wait`. This process is not its
    parent, so it watches it through a pidfd and asks the server for its exit status."""

    def __init__(self, server: Forkserver, pid: int, stdin: IO[str], stdout: IO[str]) -> None:
        self.server, self.pid, self.stdin, self.stdout = server, pid, stdin, stdout
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)  # a zombie until the server reaps it: the pid cannot be reused
        # As Popen's: two threads may wait at once (a pool's owner stopping it on an error, the
        # thread whose request found the child dead); one reaps and closes the pidfd, once. Twice
        # would close whatever descriptor took its number meanwhile.
        self._waiting = threading.Lock()

    def poll(self) -> int | None:
        if not self._waiting.acquire(blocking=False):
            return self.returncode  # another thread is waiting: the child is not known to have exited
        try:
            if self.returncode is None and select.select([self._pidfd], [], [], 0)[0]:
                self._reap()
        finally:
            self._waiting.release()
        return self.returncode

    def wait(self) -> int:
        with self._waiting:
            if self.returncode is None:
                select.select([self._pidfd], [], [])  # readable once the process has exited
                self._reap()
        assert self.returncode is not None
        return self.returncode

    def _reap(self) -> None:
        self.returncode = self.server.reap(self.pid)
        os.close(self._pidfd)
        for stream in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                stream.close()


class Forkserver:
    """The server process for children running ``module``, started with ``env`` added to this
    process's environment (on `start` or the first `spawn`) and stopped by `stop`."""

    def __init__(
        self,
        module: str,
        *,
        env: dict[str, str] | None = None,
        serves_children: bool = False,
        fork_here: Sequence[str] = (),
    ) -> None:
        """``serves_children``: each child gets a connection of its own to the server, through
        which it asks for children of its own (`inherited`). ``fork_here``: the server is a fork
        of this process where it can be (`_can_fork_here`), after this process imported these
        modules (which it would import anyway); the caller vouches that nothing else it holds in
        memory may reach the children (no registered plugin, no patched function)."""
        self.module, self.env, self.serves_children = module, dict(env or {}), serves_children
        self.fork_here = tuple(fork_here)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | _ForkedHere | None = None
        self._sock: socket.socket | None = None
        self._broken = not supported()
        self._stopped = threading.Event()

    @classmethod
    def inherited(cls) -> Forkserver | None:
        """In a child forked by a server that ``serves_children``: that server, to fork this
        process's own children (they go when this process goes); else None."""
        global _inherited
        if _inherited is None and _connection is not None:
            _inherited = cls("", serves_children=True)
            _inherited._sock = socket.socket(fileno=_connection)
        return _inherited

    def __enter__(self) -> Forkserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server now (it imports while this process works); never waits for it."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._proc is not None or self._sock is not None or self._broken or self._stopped.is_set():
            return
        from ckpt_compat.isolation import _janitor

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.settimeout(PRELOAD_TIMEOUT)
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        forked = (
            _fork_here(theirs, ours, self.module, env) if self.fork_here and _can_fork_here(self.fork_here) else None
        )
        if forked is not None:
            self._proc = _ForkedHere(forked)
        else:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "ckpt_compat.forkserver", str(theirs.fileno()), self.module],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # its children get their own; a server that fails is not used
                env=env,
                start_new_session=True,
            )
        theirs.close()
        _janitor.tell("group", self._proc.pid)
        self._sock = ours

    def _ask(self, request: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any] | None:
        """The server's answer, or None (then it is broken for good, and stopped)."""
        self._start()
        if self._sock is not None and not self._broken:
            try:
                socket.send_fds(self._sock, [json.dumps(request).encode()], list(fds))
                answer = self._sock.recv(65536)
                if answer:
                    decoded: dict[str, Any] = json.loads(answer)
                    return decoded
            except (OSError, ValueError):
                pass
        self._broken = True
        self._stop()
        return None

    def spawn(self, argv: Sequence[str], *, env: dict[str, str], memory: int | None, stderr: int) -> Forked | None:
        """A forked child running ``python -m argv...`` with exactly ``env``, ``memory`` as its heap
        limit and ``stderr`` (a descriptor) as its standard error; None where forking is not possible
        (the caller starts an interpreter instead). Raises `Stopped` once `stop` was called: a pool
        that stops while its workers wait for the server's imports starts nothing more."""
        child_in, to_child = os.pipe()
        from_child, child_out = os.pipe()
        try:
            with self._lock:
                request = {"argv": list(argv), "env": env, "memory": memory, "connection": self.serves_children}
                answer = self._ask(request, (child_in, child_out, stderr))
        finally:
            os.close(child_in)
            os.close(child_out)
        if answer is None or "pid" not in answer:
            os.close(to_child)
            os.close(from_child)
            if self._stopped.is_set():
                raise Stopped(f"the fork server for {self.module} was stopped")
            return None
        stdin = open(to_child, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the child
        stdout = open(from_child, encoding="utf-8")  # noqa: SIM115
        return Forked(self, int(answer["pid"]), stdin, stdout)

    def reap(self, pid: int) -> int:
        """The exit status of ``pid`` (exited: its pidfd said so), as `subprocess.Popen.returncode`."""
        with self._lock:
            answer = self._ask({"reap": pid})
        # A server that is gone took its children with it (PR_SET_PDEATHSIG: SIGKILL).
        return int(answer["code"]) if answer is not None else -signal.SIGKILL

    def stop(self) -> None:
        """Stop the server, and with it any spawn waiting on its imports (without waiting for them)."""
        self._stopped.set()
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # a spawn blocked on its answer gets end of file
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        sock, proc = self._sock, self._proc
        self._sock, self._proc = None, None
        if sock is not None:
            sock.close()  # the server's end of file: it exits, its remaining children with it
        if proc is not None:
            from ckpt_compat.isolation import _janitor

            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _janitor.tell("done", proc.pid)


class _ForkedHere:
    """A server forked from this process, as `Forkserver` uses a `subprocess.Popen`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def wait(self) -> int:
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:  # reaped already
            return -signal.SIGKILL
        return os.waitstatus_to_exitcode(status)


def _can_fork_here(imports: Sequence[str]) -> bool:
    """Whether this process may be the template of a server: the main thread of a process with no
    other Python thread (a fork copies only the forking thread: a lock another thread held stays
    held), CUDA not initialised, and ``imports`` import here."""
    if not supported() or threading.current_thread() is not threading.main_thread():
        return False
    if threading.active_count() != 1:
        return False
    try:
        for name in imports:
            importlib.import_module(name)
    except Exception:  # the server imports them again, and says what failed as it always does
        return False
    torch = sys.modules.get("torch")
    return torch is None or not torch.cuda.is_initialized()


def _fork_here(theirs: socket.socket, ours: socket.socket, module: str, env: dict[str, str]) -> int | None:
    """Fork the server from this process: what `_serve` needs of an exec'd one (a session of its
    own, no standard streams, ``env``; OpenMP's thread count, which the runtime read from the
    environment when torch loaded here, set as that environment says) and nothing of the work
    this process does after the fork. Returns its pid, or None where the fork failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        with warnings.catch_warnings():  # Python >= 3.12 on OpenBLAS's thread: it forks cleanly (see `_serve`)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:  # out of processes or memory: an interpreter may still start, or say why not
        return None
    if pid:
        return pid
    code = 1
    try:
        ours.close()
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(devnull, target)
        os.close(devnull)
        os.environ.clear()
        os.environ.update(env)
        torch = sys.modules.get("torch")
        threads = env.get("OMP_NUM_THREADS", "")
        if torch is not None and threads.isdigit():
            torch.set_num_threads(int(threads))
        _serve(theirs.fileno(), module)
        code = 0
    finally:
        os._exit(code)  # never back into the caller's code


def _fork(request: dict[str, Any], fds: list[int], connections: dict[socket.socket, set[int]]) -> dict[str, Any]:
    """In the server: fork the requested child (with a connection of its own if it asks); its pid."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # a forked child could not use CUDA
        return {"refused": "CUDA is initialised in the fork server"}
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) if request.get("connection") else None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        if pair is not None:
            pair[1].close()
            connections[pair[0]] = set()
        return {"pid": pid}
    code = 1
    try:
        for connection in connections:
            connection.close()
        if pair is not None:
            global _connection
            pair[0].close()
            _connection = pair[1].detach()
        os.setsid()
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        import tempfile

        tempfile.tempdir = None  # found again, from this child's TMPDIR
        sys.modules.pop(request["argv"][0], None)  # the server imported it; the child runs it as __main__
        from ckpt_compat.isolation import run_contained

        run_contained(request["argv"], request["memory"])
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # never back into the server's loop


def _answer(
    request: dict[str, Any], fds: list[int], asker: socket.socket, connections: dict[socket.socket, set[int]]
) -> dict[str, Any]:
    """In the server: one request of ``asker`` (a connection): a spawn, or a reap of its own child."""
    mine = connections[asker]
    if "reap" not in request:
        answer = _fork(request, fds, connections)
        if "pid" in answer:
            mine.add(answer["pid"])
        return answer
    pid = int(request["reap"])
    if pid not in mine:  # not its child, or reaped already: the caller's bug, said as a kill
        return {"code": -signal.SIGKILL}
    mine.discard(pid)
    _, status = os.waitpid(pid, 0)
    return {"code": os.waitstatus_to_exitcode(status)}


def _drop(connection: socket.socket, children: set[int]) -> None:
    """In the server: a child's connection closed (it ended): the children it asked for go too."""
    connection.close()
    for pid in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:  # not yet in its own session
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _serve(fd: int, module: str) -> None:
    """The server: preload ``module``, then answer spawn and reap requests, from its parent and
    from the children it gave a connection, until its parent's end of file."""
    from ckpt_compat.isolation import die_with_parent

    die_with_parent()
    # Python >= 3.12 warns on forking a process with threads; numpy's OpenBLAS has one, and
    # forks cleanly (its pthread_atfork handlers), as torch's DataLoader workers rely on.
    warnings.filterwarnings("ignore", message=r".*multi-threaded.*fork", category=DeprecationWarning)
    preload = getattr(importlib.import_module(module), "preload", None)
    if callable(preload):
        preload()
    # What the imports made lives as long as every child: kept out of the children's collections,
    # which would otherwise walk (and so copy) every page of it again in each child.
    gc.freeze()
    parent = socket.socket(fileno=fd)
    connections: dict[socket.socket, set[int]] = {parent: set()}  # each with the children it asked for
    while True:
        for asker in select.select(list(connections), [], [])[0]:
            try:
                data, fds, _, _ = socket.recv_fds(asker, MESSAGE_BYTES, 3)
            except OSError:
                data, fds = b"", []
            if not data:
                if asker is parent:
                    return  # the parent stopped the pool, or died: every child dies with this process
                _drop(asker, connections.pop(asker))
                continue
            answer = _answer(json.loads(data), fds, asker, connections)
            for received in fds:
                os.close(received)
            asker.send(json.dumps(answer).encode())


if __name__ == "__main__":
    # Served from the module as imported, not from __main__: a child's `_connection` must be the
    # global its own code (`Forkserver.inherited`) reads.
    from ckpt_compat import forkserver

    forkserver._serve(int(sys.argv[1]), sys.argv[2])
