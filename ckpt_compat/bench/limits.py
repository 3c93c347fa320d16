"""The machine's limits: what it reaches at all, so every result is also a fraction of it.

Two kinds. The session's figures (`physical_limits`: memcpy, first-touch allocation, raw write and
read, best of 3 in this process) describe the machine once. The **round limits** are what a result
is judged against: a ``raw`` op (`ops.LIMIT_OPS`) of a file of the workload's size, in the same
page cache state, taken in each round's child right after the operation (`child.run_op`). Taken in
a child of its own in the same pass (schema 2), a limit shared none of a shared VM's second-to-second
noise with the round (docs/benchmarks/repeatability.md).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ckpt_compat.bench.ops import Op
from ckpt_compat.bench.pagecache import make_cold
from ckpt_compat.bench.stats import GB


def limit_for(op: Op, cache: str) -> tuple[str, str]:
    """The limit ``op`` is judged against, as (raw op id, cache): a save writes with
    fsync, a load into preallocated memory reads into it, any other load reads into fresh memory
    (cold for a cold round)."""
    if op.saves:
        return "raw:write", "-"
    if op.name == "into" and cache == "warm":
        return "raw:read_into", "warm"
    return "raw:read", cache


# The session's figure for each round limit (raw op, cache).
SESSION_FIGURE = {
    ("raw:write", "-"): "write_fsync",
    ("raw:read", "cold"): "read_cold",
    ("raw:read_into", "warm"): "read_preallocated",
    ("raw:read", "warm"): "read_fresh",
}


@dataclass(frozen=True)
class Limits:
    """GB/s the machine reaches at all, measured in this session on ``nbytes``."""

    memcpy_preallocated: float
    alloc_first_touch: float
    write: float
    write_fsync: float
    read_fresh: float
    read_preallocated: float
    read_cold: float  # into fresh memory, the file's pages evicted first

    def for_op(self, op: Op, cold: bool) -> tuple[str, float]:
        """The session figure of the round limit `limit_for` names."""
        name = SESSION_FIGURE[limit_for(op, "cold" if cold else "warm")]
        return name, getattr(self, name)

    def to_json(self) -> dict[str, float]:
        return dict(self.__dict__)


def _best(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def physical_limits(size: int, directory: Path) -> Limits:
    """memcpy, allocation + first touch, raw write (with and without fsync), raw read, in GB/s."""
    src = torch.randint(0, 255, (size,), dtype=torch.uint8)
    dst = torch.empty_like(src)
    gb = size / GB
    memcpy = gb / _best(lambda: dst.copy_(src))
    first_touch = gb / _best(lambda: torch.empty_like(src).copy_(src))
    data = src.numpy().tobytes()
    path = directory / "limits.bin"

    def write(sync: bool) -> None:
        with open(path, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())

    write_plain = gb / _best(lambda: write(False))
    write_sync = gb / _best(lambda: write(True))
    buffer = bytearray(size)

    def read_into() -> None:
        with open(path, "rb") as f:
            f.readinto(buffer)

    def read_fresh() -> None:
        with open(path, "rb") as f:
            f.read()

    def read_cold() -> float:
        make_cold(path)
        start = time.perf_counter()
        read_fresh()
        return time.perf_counter() - start

    read_pre = gb / _best(read_into)
    read_new = gb / _best(read_fresh)
    read_evicted = gb / min(read_cold() for _ in range(3))
    path.unlink()
    return Limits(memcpy, first_touch, write_plain, write_sync, read_new, read_pre, read_evicted)


def hash_throughput(data: torch.Tensor, repeat: int = 3) -> dict[str, float]:
    """GB/s of what verify does to every loaded byte, next to memcpy: the manifest digest (xxh3),
    the bitwise comparison (compare_tensors), and sha256 for reference."""
    from ckpt_compat.compare import compare_tensors, digest

    gb = data.numel() * data.element_size() / GB
    other = data.clone()
    target = torch.empty_like(data)
    return {
        "memcpy": gb / _best(lambda: target.copy_(data), repeat),
        "compare_tensors": gb / _best(lambda: compare_tensors(data, other, ("x",)), repeat),
        "digest_xxh3": gb / _best(lambda: digest(data), repeat),
        "sha256": gb / _best(lambda: hashlib.sha256(data.numpy().data).hexdigest(), repeat),
    }
