"""Work in another interpreter, contained: every child ckpt-compat starts comes from here.

A child gets a time limit, a memory limit (RLIMIT_DATA), its own session (so its whole process
group can be killed), dies with its parent (PR_SET_PDEATHSIG on Linux), and a private temp dir
(``TMPDIR``). A crash, a timeout or running out of memory comes back as a value with the tail of
the child's stderr, never as an exception.

What must go away even when ckpt-compat itself is SIGKILLed (children, their own children, temp
dirs and half-written files) is registered with the *janitor*: a tiny process, in a session of
its own, that holds the read end of a pipe. When the pipe closes, however the parent ended, it
kills the registered process groups and removes the registered paths.

A `Pool`'s workers, their restarts and the children a worker starts are forks of one
`forkserver.Forkserver` that imported the workers' packages once; a lone `Child` or `call_once`
is one only when given a server (a worker gives its own children `Forkserver.inherited()`,
`security` its attacks one; the benchmarks' rounds are fresh interpreters on purpose).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import ctypes
import json
import os
import queue
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ckpt_compat.forkserver import Forkserver

TEMP_PREFIX = "ckpt-compat-"
MEMORY_LIMIT = 16 * 2**30  # default data (heap) limit of a child: generous for a checkpoint load
_PR_SET_PDEATHSIG = 1
_MEMORY_ENV = "CKPT_COMPAT_CHILD_MEMORY"

_JANITOR = r"""
import os, shutil, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
groups, paths = [], []
for line in sys.stdin:
    kind, _, value = line.rstrip("\n").partition(" ")
    if kind == "group":
        groups.append(int(value))
    elif kind == "path":
        paths.append(value)
    elif kind == "done":
        paths = [p for p in paths if p != value]
        groups = [g for g in groups if str(g) != value]
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
for path in reversed(paths):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass
"""


class _Janitor:
    """The cleanup process of this ckpt-compat process (started on first use)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[str] | None = None
        self.pid = 0

    def _pipe(self) -> IO[str] | None:
        if self.proc is None or self.pid != os.getpid():  # a forked child starts its own
            self.pid = os.getpid()
            self.proc = subprocess.Popen(
                [sys.executable, "-S", "-c", _JANITOR],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
            atexit.register(self.close)
        return self.proc.stdin

    def tell(self, kind: str, value: str | int, *, start: bool = True) -> None:
        if "\n" in str(value):
            raise ValueError(f"a path with a newline cannot be registered for cleanup: {value!r}")
        with self.lock:
            if not start and (self.proc is None or self.pid != os.getpid()):
                return  # nobody started one in this process: a library call, cleaned up by its caller
            pipe = self._pipe()
            if pipe is not None:
                pipe.write(f"{kind} {value}\n")
                pipe.flush()

    def close(self) -> None:
        with self.lock:
            if self.proc is not None and self.pid == os.getpid() and self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
                self.proc.wait()
            self.proc = None


_janitor = _Janitor()


def start_janitor() -> None:
    """Start this process's janitor now (the CLI does, before any work)."""
    with _janitor.lock:
        _janitor._pipe()


def remove_on_exit(path: Path, *, start: bool = True) -> None:
    """Remove ``path`` when this process ends, however it ends (unless `forget` is called).
    ``start=False``: only if a janitor already runs in this process."""
    _janitor.tell("path", str(path.absolute()), start=start)


def forget(path: Path, *, start: bool = True) -> None:
    """``path`` is finished (renamed into place): the janitor must leave it alone."""
    _janitor.tell("done", str(path.absolute()), start=start)


@contextlib.contextmanager
def scratch_dir(prefix: str = TEMP_PREFIX) -> Iterator[Path]:
    """A temporary directory removed on every exit path, SIGKILL included."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    remove_on_exit(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; a no-op elsewhere).
    Called first thing in every child, including those torch.multiprocessing spawns."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent or parent == 1:  # the parent died before the request took effect
        os._exit(1)


def _limit_memory(limit: int | None) -> None:
    """RLIMIT_DATA (heap and private anonymous memory, Linux >= 4.7), not RLIMIT_AS: CUDA builds of
    torch map gigabytes of address space for their libraries at import, which RLIMIT_AS counts."""
    kind = getattr(resource, "RLIMIT_DATA", resource.RLIMIT_AS)
    if limit is not None:
        _, hard = resource.getrlimit(kind)
        cap = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(kind, (cap, hard))


class _Process(Protocol):
    """What `Child` uses of its process: a `subprocess.Popen` or a `forkserver.Forked`."""

    @property
    def pid(self) -> int: ...

    @property
    def stdin(self) -> IO[str] | None: ...

    @property
    def stdout(self) -> IO[str] | None: ...

    def poll(self) -> int | None: ...

    def wait(self) -> int: ...


@dataclass(frozen=True)
class Failure:
    """A child that did not answer: ``kind`` is crash, timeout or out_of_memory."""

    kind: str
    message: str

    @property
    def error_type(self) -> str:
        """The ErrorInfo type a result records for it."""
        return {"timeout": "Timeout", "crash": "ProcessDied", "out_of_memory": "OutOfMemory"}[self.kind]


class Child:
    """One contained interpreter that serves JSON-lines requests: one line in, one line out.

    ``argv`` is a module and its arguments (``["ckpt_compat.workers"]``), run as
    ``python -m`` after the child has contained itself; the module must call `serve`.
    Restarted on the next request after it crashed or timed out. With a ``forkserver`` (a
    `forkserver.Forkserver` for the same module) each start is a fork of it where possible.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        memory: int | None = MEMORY_LIMIT,
        env: dict[str, str] | None = None,
        forkserver: Forkserver | None = None,
    ) -> None:
        self.argv, self.timeout, self.memory, self.env = list(argv), timeout, memory, dict(env or {})
        self.forkserver = forkserver
        self.proc: _Process | None = None
        self.stderr: IO[str] | None = None
        self.tmp: Path | None = None
        self._stopping = threading.Lock()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> _Process:
        self.tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        remove_on_exit(self.tmp)
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the child
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.tmp)}
        forked = None
        if self.forkserver is not None:
            try:
                forked = self.forkserver.spawn(self.argv, env=env, memory=self.memory, stderr=self.stderr.fileno())
            except BaseException:  # the pool stopped meanwhile: nothing to start, nothing left behind
                self.stop()
                raise
        # Else the child contains itself (`run_contained`) before it imports anything: no
        # preexec_fn, which is unsafe in a parent that runs threads (torch's).
        self.proc = forked or subprocess.Popen(
            [sys.executable, "-m", "ckpt_compat.isolation", *self.argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env={**env, _MEMORY_ENV: str(self.memory or 0)},
            start_new_session=True,
        )
        _janitor.tell("group", self.proc.pid)
        return self.proc

    def stop(self) -> None:
        # Two threads may stop a child at once (the pool's owner on an error, the thread whose
        # request just found it dead): each takes what is left, under the lock, and stops that.
        with self._stopping:
            proc, stderr, tmp = self.proc, self.stderr, self.tmp
            self.proc, self.stderr, self.tmp = None, None, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the child and whatever it started
                except ProcessLookupError:  # a forked child not yet in its own session
                    os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            _janitor.tell("done", proc.pid)
        if stderr is not None:
            stderr.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            forget(tmp)

    def stderr_tail(self, lines: int = 5, *, since: int = 0) -> str:
        """The last ``lines`` non-blank lines the process wrote to stderr after byte ``since``."""
        stderr = self.stderr
        if stderr is None:
            return ""
        try:
            fd = stderr.fileno()
            end = os.fstat(fd).st_size
            start = max(since, end - 2**16)  # the tail: a process may have written megabytes of warnings
            # Read by offset, never seek: the process writes through the same open file.
            text = os.pread(fd, end - start, start).decode(errors="replace")
            kept = [line for line in text.splitlines() if line.strip()]
        except (ValueError, OSError):  # closed meanwhile: another thread stopped the child
            return ""
        return " | ".join(kept[-lines:])

    def start(self) -> None:
        """Start the process now rather than on the first request (it imports while the parent works)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()

    def request(self, message: Any) -> Any | Failure:
        """Send ``message`` (JSON); the child's JSON answer, or a `Failure`, whose message quotes
        what the process wrote to stderr during this request only: a warning an earlier task
        printed is not why this one failed (nor is an earlier, handled MemoryError a sign that
        this one ran out of memory)."""
        running = self.proc is not None and self.proc.poll() is None
        proc = self.proc if running and self.proc is not None else self._start()
        assert proc.stdin is not None and proc.stdout is not None and self.stderr is not None
        since = os.fstat(self.stderr.fileno()).st_size if running else 0  # a new process's start is this request's
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout)
        if not ready:
            tail = self.stderr_tail(since=since)
            self.stop()
            return Failure("timeout", f"no answer within {self.timeout:g}s; the process was killed. {tail}".strip())
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            tail = self.stderr_tail(since=since)
            self.stop()
            oom = "MemoryError" in tail or "std::bad_alloc" in tail or "Cannot allocate memory" in tail
            if oom:
                return Failure("out_of_memory", f"the process ran out of memory (limit {_gib(self.memory)}): {tail}")
            return Failure("crash", f"the process died ({exit_reason(code)}): {tail}")
        try:
            return json.loads(line)
        except ValueError:  # not an answer: the protocol is lost with this process
            tail = self.stderr_tail(since=since)
            self.stop()
            return Failure("crash", f"the process wrote {line[:200]!r} instead of an answer: {tail}".strip())


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


class Pool:
    """``jobs`` contained workers (`Child`, default: one per usable core) serving one module side
    by side. Answers come back in task order whatever the number of workers, so a run's results do
    not depend on it; a worker that crashes or hangs costs the task it was on (its `Failure`) and is
    restarted for the next one."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        jobs: int | None = None,
        timeout: float,
        memory: int | None = MEMORY_LIMIT,
        env: dict[str, str] | None = None,
        fork_here: Sequence[str] = (),
    ) -> None:
        """``fork_here``: the fork server is a fork of this process after it imported these
        (`forkserver.Forkserver`); for a caller that holds nothing the workers must not see."""
        from ckpt_compat.forkserver import Forkserver

        cores = usable_cores()
        self.jobs = max(1, jobs or cores)
        # Workers side by side each get their share of the cores: OpenMP threads that outnumber
        # the cores spin and slow every worker down.
        threads = str(max(1, cores // self.jobs))
        share = {} if self.jobs == 1 else dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS"), threads)
        # One hash seed for every worker of the pool: messages that print a set (safetensors names
        # the tied tensors) then read the same whichever worker wrote them.
        inherited = os.environ.get("PYTHONHASHSEED", "random")
        share["PYTHONHASHSEED"] = inherited if inherited.isdigit() else str(random.randrange(1, 2**32))
        shared = {**share, **(env or {})}
        # The workers (and their restarts) are forks of one server that imported once; so are the
        # processes a worker starts (`Forkserver.inherited`).
        self.forkserver = Forkserver(argv[0], env=shared, serves_children=True, fork_here=fork_here)
        self.children = [
            Child(argv, timeout=timeout, memory=memory, env=shared, forkserver=self.forkserver)
            for _ in range(self.jobs)
        ]
        self._idle: queue.Queue[Child] = queue.Queue()
        for child in self.children:  # each starts its process on its first task
            self._idle.put(child)
        # The threads that wait on the workers live as long as the pool: a worker (re)started from
        # one of them dies with it (PR_SET_PDEATHSIG fires when the parent *thread* exits).
        self._executor = concurrent.futures.ThreadPoolExecutor(self.jobs)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Pool:
        """Start the fork server now, so it imports while this process prepares the work (the
        workers are forked on their first task)."""
        self.forkserver.start()
        return self

    def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for child in self.children:
            child.stop()
        self.forkserver.stop()

    def request(self, message: Any) -> Any | Failure:
        """One task on the next idle worker."""
        child = self._idle.get()
        try:
            return child.request(message)
        finally:
            self._idle.put(child)

    def map(
        self,
        messages: Sequence[Any],
        *,
        first: Sequence[int] = (),
        done: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """Every task's answer (or `Failure`), in task order. ``first``: indices to start before the
        rest (the longest tasks first keep the workers busy to the end); ``done(index, answer)`` is
        called in this thread as each task finishes, in the order they finish."""
        chosen = set(first)
        started = {i: self.submit(messages[i]) for i in [*first, *(i for i in range(len(messages)) if i not in chosen)]}
        return self.gather([started[i] for i in range(len(messages))], done=done)

    def submit(self, message: Any) -> concurrent.futures.Future[Any]:
        """Queue one task for the next idle worker; its answer (or `Failure`) comes in the future."""
        return self._executor.submit(self.request, message)

    def gather(
        self, futures: Sequence[concurrent.futures.Future[Any]], *, done: Callable[[int, Any], None] | None = None
    ) -> list[Any]:
        """The answers of `submit`ted tasks in the given order; ``done(index, answer)`` as each one
        finishes, in this thread."""
        answers: list[Any] = [None] * len(futures)
        try:
            positions = {future: i for i, future in enumerate(futures)}
            for future in concurrent.futures.as_completed(positions):
                index = positions[future]
                answers[index] = future.result()
                if done is not None:
                    done(index, answers[index])
        except BaseException:  # Ctrl-C or a failing callback: kill the workers, start nothing more
            self.stop()
            raise
        return answers


def _gib(limit: int | None) -> str:
    return "none" if limit is None else f"{limit / 2**30:g} GiB"


def exit_reason(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def serve(handle: Any) -> None:
    """The child's loop: answer each JSON line on stdin with ``handle(message)`` as a JSON line.

    The answers go out on a descriptor of their own: standard output, descriptor 1 included, is
    stderr from here on, so nothing the work writes there reaches the protocol: not a print, not
    C++ (Gloo logs "[Gloo] Rank 1 is connected to 1 peer ranks" to it from torch 2.8), not a
    process the work forks (DCP's ranks).
    """
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        answer = handle(json.loads(line))
        protocol.write(json.dumps(answer) + "\n")
        protocol.flush()


def call_once(
    argv: Sequence[str],
    message: Any,
    *,
    timeout: float,
    memory: int | None = MEMORY_LIMIT,
    forkserver: Forkserver | None = None,
) -> Any | Failure:
    """One request to a fresh child (a fork of ``forkserver`` where possible), which is then stopped."""
    with Child(argv, timeout=timeout, memory=memory, forkserver=forkserver) as child:
        return child.request(message)


def run_contained(argv: Sequence[str], memory: int | None) -> None:
    """Contain this process (it dies with its parent, its heap is limited), then run ``python -m
    argv...`` in it: an exec'd child does so first thing, a forked one right after the fork."""
    import runpy

    die_with_parent()
    _limit_memory(memory)
    sys.argv = list(argv)
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    run_contained(sys.argv[1:], int(os.environ.pop(_MEMORY_ENV, "0")) or None)
