"""Atomic, durable writes: a reader sees the old file or the whole new one, never half of one,
after a crash, a SIGKILL or a power cut; a full disk is an error that says so.

A file is written inside a fresh temporary directory beside its destination, under its own name
(torch.save puts the file's stem into the archive, and some writers check the suffix), fsynced,
renamed into place, and the directory is fsynced. The temporary directory is registered with
the janitor (see `isolation`), so even a SIGKILL leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# What a disk says when it cannot take more: not a property of a format.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT, errno.EIO}
# torch's C++ writer (caffe2 PyTorchStreamWriter) turns those into RuntimeErrors with these words:
# "unexpected pos X vs Y" is its check that a write wrote everything, failed by a short write.
_STORAGE_WORDS = (
    "file write failed",
    "unexpected pos",
    "No space left on device",
    "File too large",
    "Read-only file system",
)


class WriteFailed(OSError):
    """The file system refused a write (full, over a size limit, read-only, failing)."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(errno.ENOSPC, f"writing {path} failed: {why}")
        self.why = why


def storage_failure(exc: BaseException) -> str | None:
    """Why ``exc`` (or what caused it) is the disk refusing a write, or None."""
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:  # contexts can form a cycle
        visited.add(id(seen))
        if isinstance(seen, WriteFailed):
            return seen.why
        if isinstance(seen, OSError) and seen.errno in _STORAGE_ERRNOS:
            return os.strerror(seen.errno or 0)
        if isinstance(seen, RuntimeError) and any(w in str(seen) for w in _STORAGE_WORDS):
            return f"a short write ({' '.join(str(seen).split())[:160]}): the disk is full or over a size limit"
        seen = seen.__cause__ or seen.__context__
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; a finished output gets the mode an ordinary open() would give it.
_FILE_MODE = 0o666 & ~_umask()


_DURABLE: contextvars.ContextVar[bool] = contextvars.ContextVar("ckpt_compat_durable", default=True)


@contextlib.contextmanager
def scratch_writes() -> Iterator[None]:
    """Writes in this block stay atomic but are not flushed to disk: for scratch files removed
    within seconds (a run's round trips), where an fsync only waits on the disk (a third of a
    run's time on a busy virtual disk)."""
    token = _DURABLE.set(False)
    try:
        yield
    finally:
        _DURABLE.reset(token)


def fsync_path(path: Path) -> None:
    """Flush what is about to be renamed into place to disk (not inside `scratch_writes`): a file,
    or a new directory tree: every file and every directory in it (their entries), then itself."""
    if not _DURABLE.get():
        return
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file() or (child.is_dir() and not child.is_symlink()):
                _fsync(child)
    _fsync(path)


def fsync_entries(directory: Path) -> None:
    """Flush ``directory``'s own entries (a name renamed into it) to disk, not its files: those
    are someone else's (the destination of ``--out results.json`` may be a whole repository)."""
    if _DURABLE.get():
        _fsync(directory)


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path with ``path``'s name; on success it replaces ``path``, durably."""
    from ckpt_compat.isolation import forget, remove_on_exit

    path = Path(path)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    remove_on_exit(scratch, start=False)
    tmp = scratch / path.name
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, _FILE_MODE)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_entries(path.parent)
    except BaseException as exc:
        why = storage_failure(exc)
        if why and not isinstance(exc, WriteFailed):
            raise WriteFailed(path, why) from exc
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        forget(scratch, start=False)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """A temporary directory beside ``path`` that replaces it on success (durably, see
    `swap_in`) and is removed otherwise."""
    from ckpt_compat.isolation import forget, remove_on_exit

    sweep_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    remove_on_exit(tmp, start=False)
    try:
        yield tmp
        swap_in(tmp, path)
    except BaseException as exc:
        why = storage_failure(exc)
        if why:  # named by the directory the caller asked for, not the temporary one
            raise WriteFailed(path, why) from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        forget(tmp, start=False)


def sweep_leftovers(path: Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` (``.<name>.<pid>.<random>.tmp``) that a writer
    left when it was killed where even the janitor could not clean up (both killed at once): those
    whose process is gone. Returns what was removed."""
    removed = []
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        pid = leftover.name[len(path.name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or _running(int(pid)):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours to judge
        return True
    return True


_RENAME_EXCHANGE = 2


def swap_in(new: Path, path: Path) -> None:
    """Put directory ``new`` at ``path`` in one step: fsynced first, then exchanged with the old
    one by renameat2(RENAME_EXCHANGE) where Linux has it (a kill at any moment leaves the old or
    the new directory at ``path``, never neither), and the old one removed."""
    fsync_path(new)
    if path.exists() and _exchange(new, path):
        shutil.rmtree(new)  # now the old directory
    else:
        if path.exists():
            shutil.rmtree(path)
        os.replace(new, path)
    fsync_entries(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return bool(renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
