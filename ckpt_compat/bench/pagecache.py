"""The page cache state of a benchmark file: put it in the same state before every round, and prove
it (``mincore``)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

PAGE = 4096


def evict(path: Path) -> None:
    """Drop the pages of ``path`` (a file, or every file below a directory) from the page cache.

    Everything dirty is written back first (``os.sync``), not only this file, so no write-back of
    files written just before runs under a cold round.
    """
    os.sync()
    for file in files(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_through(path: Path) -> None:
    """Read every byte of ``path`` (or of every file below it) once, sequentially."""
    buffer = bytearray(8 * 2**20)  # here, not at import: every benchmark child imports this module
    for file in files(path):
        with open(file, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def make_warm(path: Path) -> None:
    """Put ``path`` in the page cache the same way before every warm round: evicted, then read
    once, sequentially. Both halves matter on this VM:

    - reading it in: a host may reclaim idle page cache behind the benchmark's back (this VM's
      DAMON pages out file pages idle for 60 s), and a "warm" round would partly read from disk;
    - evicting first: how the cache was filled changes a warm mmap load. Here, a 256 MiB file
      read sequentially mmap-loads + touches in 8-10 ms; the same file cached by a cold mmap
      load's page faults takes 15 ms, freshly written 12-13 ms (likely the page cache's folio sizes).
    """
    evict(path)
    read_through(path)
    _until(path, lambda resident: resident >= WARM, read_through)


def make_cold(path: Path) -> None:
    """Take ``path`` out of the page cache the same way before every cold round: read once, then
    evicted. The read first puts the storage *below* the page cache in the same state every
    round: on this VM a cold read of a file the host still caches runs at about 2 GB/s, of one it
    does not at 0.5, and which files the host keeps is not ours to see. Cold means "not in this
    OS's page cache", as on a machine whose drive has a cache of its own."""
    read_through(path)
    evict(path)
    _until(path, lambda resident: resident == 0.0, evict)


WARM = 0.999  # the resident fraction from which a round counts as warm


def _until(path: Path, done: Callable[[float], bool], again: Callable[[Path], None], tries: int = 3) -> None:
    """Put the state right again while it is not: the host may take page cache back between the
    read and the round (this VM's DAMON pageout took 1-2% of a just-read 256 MiB file in 3 of ~450
    warm rounds), and a "warm" round must not start on a partly cold file."""
    for _ in range(tries):
        resident = resident_fraction(path)
        if resident is None or done(resident):
            return
        again(path)


def resident_fraction(path: Path) -> float | None:
    """The fraction of the pages of ``path`` (every file below a directory) in the page cache, by
    ``mincore(2)``: proof that a warm round was warm and a cold one cold. None where the platform
    has no mincore."""
    mincore = _mincore()
    if mincore is None:
        return None
    resident = total = 0
    for file in files(path):
        size = file.stat().st_size
        if not size:
            continue
        pages = -(-size // PAGE)
        fd = os.open(file, os.O_RDONLY)
        try:
            resident += mincore(fd, size, pages)
        finally:
            os.close(fd)
        total += pages
    return resident / total if total else 1.0


@functools.cache  # once per process, not once per round
def _mincore() -> Callable[[int, int, int], int] | None:
    """``(fd, size, pages) -> resident pages`` through libc's mmap and mincore, or None."""
    import ctypes
    import ctypes.util
    import mmap

    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]

    def count(fd: int, size: int, pages: int) -> int:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            vector = (ctypes.c_ubyte * pages)()
            if libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return sum(byte & 1 for byte in bytes(vector))
        finally:
            libc.munmap(address, size)

    return count


def files(path: Path) -> list[Path]:
    """``path`` itself, or every file below it (DCP checkpoints are directories)."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def size_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in files(path))


def fsync_files(path: Path) -> None:
    for file in files(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
