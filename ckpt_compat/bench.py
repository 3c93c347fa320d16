"""Measurement helpers for the format benchmarks (``benchmarks/``): honest numbers, near the machine.

- Workloads are random, non-zero data (all-zero tensors compress and page in for free).
- Loads are measured in a **fresh process**: eager loads are bound by page faults on new memory,
  and repeating a load in one process reuses freed memory and flatters it. The child reports its
  own time and peak RSS (VmHWM).
- A lazy mmap is not a load until its bytes are read: "touch" variants read one byte per page of
  every tensor.
- The **cold** page cache is made per file with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (no root).
- Physical limits measured in the same session (memcpy, first-touch allocation, raw file write and
  read) give every throughput a ratio to what the machine can do at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PAGE = 4096
WORKLOADS = ("transformer", "lora", "cnn")


def workload(kind: str, nbytes: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of about ``nbytes`` shaped like a real model of that ``kind``.

    transformer: few large tensors; lora: thousands of small ones (rank 8 adapters); cnn: many
    mid-size conv weights with BatchNorm buffers.
    """
    if kind not in WORKLOADS:
        raise ValueError(f"unknown workload {kind!r}; known: {', '.join(WORKLOADS)}")
    gen = torch.Generator().manual_seed(seed)
    item = torch.empty(0, dtype=dtype).element_size()
    elements = max(1, nbytes // item)
    shapes: list[tuple[str, tuple[int, ...]]] = []
    if kind == "transformer":
        width = max(8, int((elements / 12) ** 0.5))
        layer = 0
        while sum(_numel(s) for _, s in shapes) + 12 * width * width <= elements or not shapes:
            shapes += [
                (f"layers.{layer}.attn.qkv.weight", (3 * width, width)),
                (f"layers.{layer}.attn.out.weight", (width, width)),
                (f"layers.{layer}.mlp.up.weight", (4 * width, width)),
                (f"layers.{layer}.mlp.down.weight", (width, 4 * width)),
            ]
            layer += 1
    elif kind == "lora":
        width, rank = 256, 8
        count = max(1, elements // (2 * width * rank))
        for i in range(count):
            shapes += [(f"adapters.{i}.lora_A", (rank, width)), (f"adapters.{i}.lora_B", (width, rank))]
    else:
        channels = 64
        count = max(1, elements // (channels * channels * 9 + 4 * channels))
        for i in range(count):
            shapes += [(f"blocks.{i}.conv.weight", (channels, channels, 3, 3))]
            shapes += [(f"blocks.{i}.bn.{n}", (channels,)) for n in ("weight", "bias", "running_mean", "running_var")]
    out = {}
    for name, shape in shapes:
        bits = torch.randint(-(2**15), 2**15, (_numel(shape) * item // 2,), dtype=torch.int16, generator=gen)
        t = bits.view(torch.uint8)[: _numel(shape) * item].view(dtype).reshape(shape)
        out[name] = t.nan_to_num(0.5, 0.5, -0.5) if dtype.is_floating_point else t
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def nbytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def touch(state: Any) -> int:
    """Read one byte of every page of every tensor (what a lazy mmap load owes); returns a checksum."""
    total = 0
    for t in state.values():
        if isinstance(t, torch.Tensor) and t.numel():
            flat = (
                t.reshape(-1).view(torch.uint8) if t.is_contiguous() else t.contiguous().reshape(-1).view(torch.uint8)
            )
            total += int(flat[::PAGE].sum())
    return total


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (cold reads, no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def peak_rss_kib() -> int:
    """This process's peak resident set size (VmHWM), in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def allocator_settings() -> dict[str, str]:
    """The settings that change eager-load results: transparent huge pages, torch's THP switch."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return {
        "transparent_hugepage": thp.read_text().strip() if thp.exists() else "unknown",
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
        "torch_threads": str(torch.get_num_threads()),
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
    gb = size / 1e9
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

    read_pre = gb / _best(read_into)
    read_new = gb / _best(read_fresh)
    path.unlink()
    return Limits(memcpy, first_touch, write_plain, write_sync, read_new, read_pre)


# safetensors' load_file maps the file lazily too (0.8): without "touch" it is not a load.
LOAD_OPS = (
    "torch_load",
    "torch_load_mmap",
    "torch_load_mmap_touch",
    "safetensors_load",
    "safetensors_load_touch",
    "safetensors_lazy_subset",
)

_CHILD = r"""
import json, sys, time
op, path, keys = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
import torch
from ckpt_compat.bench import peak_rss_kib, touch
start = time.perf_counter()
if op == "torch_load":
    state = torch.load(path, weights_only=True)
elif op.startswith("torch_load_mmap"):
    state = torch.load(path, weights_only=True, mmap=True)
    if op.endswith("touch"):
        touch(state)
elif op.startswith("safetensors_load"):
    from safetensors.torch import load_file
    state = load_file(path)
    if op.endswith("touch"):
        touch(state)
elif op == "safetensors_lazy_subset":
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        state = {k: f.get_tensor(k) for k in keys}
    touch(state)
else:
    raise SystemExit(f"unknown op {op}")
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss_kib": peak_rss_kib(), "tensors": len(state)}))
"""


def fresh_load(
    op: str, path: Path, *, cold: bool, keys: list[str] | None = None, timeout: float = 600
) -> dict[str, Any]:
    """Run one load ``op`` of ``path`` in a fresh Python process; its own timing and peak RSS.

    The clock starts after torch is imported, so interpreter start-up is not counted.
    """
    if op not in LOAD_OPS:
        raise ValueError(f"unknown load op {op!r}; known: {', '.join(LOAD_OPS)}")
    if cold:
        evict(path)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, op, str(path), json.dumps(keys or [])],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{op} of {path} failed in the child: {done.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def save(fmt: str, state: dict[str, torch.Tensor], path: Path) -> float:
    """Save ``state`` as ``fmt`` (torch_zip or safetensors) to ``path``; seconds, fsync included."""
    start = time.perf_counter()
    if fmt == "torch_zip":
        torch.save(state, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        raise ValueError(f"unknown format {fmt!r}; known: torch_zip, safetensors")
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - start


def scratch_dir() -> Path:
    """A directory on the disk under test (not tmpfs): $CKPT_COMPAT_BENCH_DIR or the system temp."""
    root = os.environ.get("CKPT_COMPAT_BENCH_DIR")
    return Path(tempfile.mkdtemp(prefix="ckpt-compat-bench-", dir=root))
