"""Measurement helpers for the format benchmarks (``benchmarks/``): honest numbers, near the machine.

- Workloads are random, non-zero data (all-zero tensors compress and page in for free).
- Every save and load round runs in a **fresh process** (a new interpreter): eager loads are
  bound by page faults on new memory, and repeating a load in one process reuses freed memory and
  flatters it. The child reports its own time, from after its imports, and its peak RSS over the
  operation (VmHWM, reset through ``/proc/self/clear_refs`` just before the clock starts).
- A lazy mmap is not a load until its bytes are read: a load op is "complete" when it ends with
  every byte in memory (``touch`` reads every byte); lazy ops say so in their name.
- The page cache is put in the same state before every load round: **cold** is read once, then
  evicted with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (no root); **warm** is evicted, then read
  once. Every round records the fraction of the file's pages that were resident (``mincore``)
  when its child started.
- Physical limits measured in the same session (memcpy, first-touch allocation, raw file write and
  read) give every throughput a ratio to what the machine can do at all.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

PAGE = 4096
WORKLOADS = ("transformer", "lora", "cnn", "sweep")
GB = 1e9
Key = TypeVar("Key")
Round = TypeVar("Round")


# --- workloads ---------------------------------------------------------------------------------


def workload(
    kind: str, nbytes: int, dtype: torch.dtype = torch.float32, seed: int = 0, tensors: int = 0
) -> dict[str, torch.Tensor]:
    """A state dict of about ``nbytes`` shaped like a real model of that ``kind``.

    transformer: few large tensors; lora: thousands of small ones (rank 8 adapters); cnn: many
    mid-size conv weights with BatchNorm buffers (``num_batches_tracked`` is int64, as in torch);
    sweep: ``tensors`` equal 1-d tensors (the per-tensor cost fit).
    """
    if kind not in WORKLOADS:
        raise ValueError(f"unknown workload {kind!r}; known: {', '.join(WORKLOADS)}")
    gen = torch.Generator().manual_seed(seed)
    item = torch.empty(0, dtype=dtype).element_size()
    elements = max(1, nbytes // item)
    shapes: list[tuple[str, tuple[int, ...], torch.dtype]] = []
    if kind == "transformer":
        width = max(8, int((elements / 12) ** 0.5))
        layer = 0
        while sum(_numel(s) for _, s, _ in shapes) + 12 * width * width <= elements or not shapes:
            shapes += [
                (f"layers.{layer}.attn.qkv.weight", (3 * width, width), dtype),
                (f"layers.{layer}.attn.out.weight", (width, width), dtype),
                (f"layers.{layer}.mlp.up.weight", (4 * width, width), dtype),
                (f"layers.{layer}.mlp.down.weight", (width, 4 * width), dtype),
            ]
            layer += 1
    elif kind == "lora":
        width, rank = 256, 8
        count = max(1, elements // (2 * width * rank))
        for i in range(count):
            shapes += [(f"adapters.{i}.lora_A", (rank, width), dtype), (f"adapters.{i}.lora_B", (width, rank), dtype)]
    elif kind == "cnn":
        channels = 64
        count = max(1, elements // (channels * channels * 9 + 4 * channels))
        for i in range(count):
            shapes += [(f"blocks.{i}.conv.weight", (channels, channels, 3, 3), dtype)]
            shapes += [(f"blocks.{i}.bn.{n}", (channels,), dtype) for n in ("weight", "bias")]
            shapes += [(f"blocks.{i}.bn.{n}", (channels,), torch.float32) for n in ("running_mean", "running_var")]
            shapes += [(f"blocks.{i}.bn.num_batches_tracked", (), torch.int64)]
    else:
        if tensors < 1:
            raise ValueError(f"the sweep workload needs tensors >= 1, got tensors={tensors!r}")
        shapes = [(f"t.{i}", (max(1, elements // tensors),), dtype) for i in range(tensors)]
    out = {}
    for name, shape, dt in shapes:
        size = torch.empty(0, dtype=dt).element_size()
        bits = torch.randint(-(2**15), 2**15, ((_numel(shape) * size + 1) // 2,), dtype=torch.int16, generator=gen)
        t = bits.view(torch.uint8)[: _numel(shape) * size].view(dt).reshape(shape)
        out[name] = t.nan_to_num(0.5, 0.5, -0.5) if dt.is_floating_point else t.abs() + 1
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def nbytes(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class WorkloadModule(nn.Module):
    """A module holding a workload's tensors under their own dotted names (for whole-model pickle,
    TorchScript and torch.export). ``running_*`` and integer tensors are buffers, as in BatchNorm."""

    def __init__(self, state: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        for name, t in (state or {}).items():
            *parents, leaf = name.split(".")
            module: nn.Module = self
            for part in parents:
                if not hasattr(module, part):
                    module.add_module(part, WorkloadModule())
                module = getattr(module, part)
            if leaf.startswith("running_") or not t.is_floating_point():
                module.register_buffer(leaf, t)
            else:
                module.register_parameter(leaf, nn.Parameter(t, requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def touch(state: Any) -> int:
    """Read every byte of every tensor (what a lazy mmap load owes before it is a load), as int64
    words where the bytes allow it (memory bandwidth, not an elementwise sum); returns a checksum."""
    total = 0
    for t in state.values():
        if isinstance(t, torch.Tensor) and t.numel():
            flat = t.detach().reshape(-1) if t.is_contiguous() else t.detach().contiguous().reshape(-1)
            raw = flat.view(torch.uint8)
            words = raw.numel() // 8
            if words and raw.storage_offset() % 8 == 0:
                total += int(raw[: words * 8].view(torch.int64).sum()) + int(raw[words * 8 :].sum())
            else:
                total += int(raw.sum())
    return total


def evict(path: Path) -> None:
    """Drop the pages of ``path`` (a file, or every file below a directory) from the page cache.

    Everything dirty is written back first (``os.sync``), not only this file, so no write-back of
    files written just before runs under a cold round.
    """
    os.sync()
    for file in _files(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_through(path: Path) -> None:
    """Read every byte of ``path`` (or of every file below it) once, sequentially."""
    buffer = bytearray(8 * 2**20)  # here, not at import: every benchmark child imports this module
    for file in _files(path):
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


def make_cold(path: Path) -> None:
    """Take ``path`` out of the page cache the same way before every cold round: read once, then
    evicted. The read first puts the storage *below* the page cache in the same state every
    round: on this VM a cold read of a file the host still caches runs at about 2 GB/s, of one it
    does not at 0.5, and which files the host keeps is not ours to see. Cold means "not in this
    OS's page cache", as on a machine whose drive has a cache of its own."""
    read_through(path)
    evict(path)


def resident_fraction(path: Path) -> float | None:
    """The fraction of the pages of ``path`` (every file below a directory) in the page cache, by
    ``mincore(2)``: proof that a warm round was warm and a cold one cold. None where the platform
    has no mincore."""
    mincore = _mincore()
    if mincore is None:
        return None
    resident = total = 0
    for file in _files(path):
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


def _files(path: Path) -> list[Path]:
    """``path`` itself, or every file below it (DCP checkpoints are directories)."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def size_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in _files(path))


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_kib() -> int:
    """This process's peak resident set size (VmHWM), in KiB."""
    return _status("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak covers what follows only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def allocator_settings() -> dict[str, str]:
    """The settings that change eager-load results: transparent huge pages, torch's THP switch."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return {
        "transparent_hugepage": thp.read_text().strip() if thp.exists() else "unknown",
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
        "torch_threads": str(torch.get_num_threads()),
    }


# --- physical limits ---------------------------------------------------------------------------


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
        """The limit an op's throughput is a fraction of: a save writes with fsync, a load into
        preallocated memory reads into it, any other load reads into fresh memory."""
        if op.saves:
            return "write_fsync", self.write_fsync
        if cold:
            return "read_cold", self.read_cold
        if op.name == "into":
            return "read_preallocated", self.read_preallocated
        return "read_fresh", self.read_fresh

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


# --- operations --------------------------------------------------------------------------------

SUFFIX = {
    "torch_zip": ".pt",
    "torch_legacy": ".legacy.pt",
    "torch_module": ".module.pt",
    "safetensors": ".safetensors",
    "dcp": ".dcp",
    "torchscript": ".ts.pt",
    "torch_export": ".pt2",
}
SUBSET = 10  # lazy subset ops read every SUBSET-th key


@dataclass(frozen=True)
class Op:
    """One measured operation on one format. ``complete``: it ends with every byte it returns in
    memory (a real load); lazy ops (an untouched mmap) are measured to show what they defer."""

    format: str
    name: str
    description: str
    complete: bool = True

    @property
    def id(self) -> str:
        return f"{self.format}:{self.name}"

    @property
    def saves(self) -> bool:
        return self.name == "save"


OPS = {
    op.id: op
    for op in [
        *(Op(f, "save", "save from memory, fsync included") for f in SUFFIX),
        Op("torch_zip", "load", "torch.load(weights_only=True)"),
        Op("torch_zip", "mmap_lazy", "torch.load(mmap=True, weights_only=True), bytes not read", complete=False),
        Op("torch_zip", "mmap_touch", "torch.load(mmap=True, weights_only=True) + touch (read every byte)"),
        Op("torch_zip", "into", "torch.load(mmap=True) + copy_ into a preallocated state dict"),
        Op("torch_zip", "subset", f"torch.load(mmap=True) + touch 1 key in {SUBSET}"),
        Op("torch_zip", "verify", "torch.load(weights_only=True) + compare with the manifest (verify's check)"),
        Op("torch_legacy", "load", "torch.load(weights_only=True) of a _use_new_zipfile_serialization=False file"),
        Op("torch_module", "load", "torch.load(weights_only=False) of a pickled nn.Module"),
        Op("safetensors", "load_lazy", "safetensors.torch.load_file, bytes not read (lazy since 0.7)", complete=False),
        Op("safetensors", "load_touch", "safetensors.torch.load_file + touch (read every byte)"),
        Op("safetensors", "into", "safetensors.torch.load_file + copy_ into a preallocated state dict"),
        Op("safetensors", "subset", f"safe_open + get_tensor of 1 key in {SUBSET}, touched"),
        Op("dcp", "into", "torch.distributed.checkpoint.load into a preallocated state dict"),
        Op("torchscript", "load", "torch.jit.load"),
        Op("torch_export", "load", "torch.export.load + touch the program's state dict"),
    ]
}


def why_unavailable(op: Op) -> str | None:
    """Why ``op`` cannot run with this torch (and installed packages), or None."""
    from ckpt_compat.formats.torch_save import load_supports

    if ("mmap" in op.name or (op.format == "torch_zip" and op.name in ("into", "subset"))) and not load_supports(
        "mmap"
    ):
        return f"torch {torch.__version__} has no torch.load(mmap=True) (added in 2.1)"
    if op.format == "safetensors":
        try:
            import safetensors.torch  # noqa: F401
        except ImportError:
            return 'safetensors is not installed (pip install "ckpt-compat[safetensors]")'
    if op.format == "dcp":
        from ckpt_compat.formats.dcp import _why_unavailable

        return _why_unavailable()
    exporter = getattr(torch, "export", None)
    if op.format == "torch_export" and not (hasattr(exporter, "save") and hasattr(exporter, "load")):
        return f"torch {torch.__version__} has no torch.export.save/load (added in 2.1)"
    return None


def _template(layout: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Preallocated tensors with every page already faulted in (a model waiting for its weights)."""
    return {k: torch.ones(v["shape"], dtype=getattr(torch, v["dtype"])) for k, v in layout.items()}


def _layout(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    return {k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for k, t in state.items()}


def _copy_into(template: dict[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():  # what load_state_dict does: copy_ each tensor into the model's own
        for k, t in template.items():
            t.copy_(state[k])
    return template


def _save(fmt: str, state: dict[str, torch.Tensor], path: Path) -> Callable[[], None]:
    """The timed part of saving ``state`` as ``fmt``; what happens before (compiling) is not timed."""
    if fmt == "torch_zip":
        return lambda: torch.save(state, path)
    if fmt == "torch_legacy":
        return lambda: torch.save(state, path, _use_new_zipfile_serialization=False)
    if fmt == "torch_module":
        module = WorkloadModule(state)
        return lambda: torch.save(module, path)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        return lambda: save_file(state, str(path))
    if fmt == "dcp":
        import torch.distributed.checkpoint as dcp

        return lambda: dcp.save(state, checkpoint_id=str(path))  # type: ignore[attr-defined]
    if fmt == "torchscript":
        scripted = torch.jit.script(WorkloadModule(state))
        return lambda: torch.jit.save(scripted, str(path))
    if fmt == "torch_export":
        program = torch.export.export(WorkloadModule(state), (torch.ones(1),))
        return lambda: torch.export.save(program, str(path))
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(SUFFIX)}")


def _load(op: Op, path: Path, reference: str) -> Callable[[], Mapping[str, torch.Tensor]]:
    """The timed part of ``op`` (a load); a preallocated template is made before the clock starts."""
    layout = json.loads(Path(reference + ".layout.json").read_text())
    template = _template(layout) if op.name == "into" else {}
    records = json.loads(Path(reference + ".records.json").read_text()) if op.name == "verify" else {}
    subset = list(layout)[::SUBSET]
    p = str(path)
    # Imports happen before the clock: a fresh process pays them once, not per checkpoint.
    if op.format == "safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file
    if op.format == "dcp":
        import torch.distributed.checkpoint as dcp
    if op.name == "verify":
        from ckpt_compat.compare import compare_records

    def run() -> Mapping[str, torch.Tensor]:
        if op.format in ("torch_zip", "torch_legacy"):
            if op.name == "load":
                return touched(torch.load(p, weights_only=True))
            if op.name == "verify":
                state = torch.load(p, weights_only=True)
                if differences := compare_records(records, state):
                    raise AssertionError(f"{path} differs from its manifest: {differences[0]}")
                return state  # type: ignore[no-any-return]
            state = torch.load(p, weights_only=True, mmap=True)
            if op.name == "mmap_lazy":
                return state  # type: ignore[no-any-return]
            if op.name == "mmap_touch":
                return touched(state)
            if op.name == "into":
                return touched(_copy_into(template, state))
            return touched({k: state[k] for k in subset})
        if op.format == "torch_module":
            return touched(torch.load(p, weights_only=False).state_dict())
        if op.format == "safetensors":
            if op.name == "subset":
                with safe_open(p, "pt") as f:
                    return touched({k: f.get_tensor(k) for k in subset})
            state = load_file(p)
            if op.name == "load_lazy":
                return state
            return touched(_copy_into(template, state) if op.name == "into" else state)
        if op.format == "dcp":
            dcp.load(template, checkpoint_id=p)  # type: ignore[attr-defined]
            return touched(template)
        if op.format == "torchscript":
            return touched(torch.jit.load(p).state_dict())  # type: ignore[no-untyped-call]
        return touched(torch.export.load(p).state_dict)

    return run


def touched(state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    touch(state)
    return state


def run_op(op_id: str, path: str, reference: str) -> dict[str, Any]:
    """Run ``op_id`` once in this process and measure it: what a fresh child does.

    ``reference``: the torch_zip file of the workload (a save op saves what it holds; a load op
    reads its layout from ``<reference>.layout.json``). Returns seconds, bytes, tensor count, RSS.
    """
    op = OPS[op_id]
    target = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecations (TorchScript, DCP) are for the report, not stderr
        if op.saves:
            timed: Callable[[], Any] = _save(op.format, torch.load(reference, weights_only=True), target)
        else:
            timed = _load(op, target, reference)
        peak_reset = reset_peak_rss()
        rss_before = _status("VmRSS")
        start = time.perf_counter()
        result = timed()
        if op.saves:
            _fsync(target)
        seconds = time.perf_counter() - start
    if op.saves:
        done, size = 0, size_on_disk(target)
    else:
        done, size = len(result), nbytes(result)
    return {
        "seconds": seconds,
        "bytes": size,
        "tensors": done,
        "rss_before_kib": rss_before,
        "peak_rss_kib": peak_rss_kib(),
        "peak_rss_reset": peak_reset,
    }


def _fsync(path: Path) -> None:
    for file in _files(path):
        fd = os.open(file, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def fresh(op_id: str, path: Path, reference: Path, *, cold: bool = False, timeout: float = 600) -> dict[str, Any]:
    """One round of ``op_id`` on ``path`` in a new ``python`` process. A load starts from the same
    page cache state every round (``make_cold`` or ``make_warm``); ``resident_before`` in its
    result is the fraction of the file's pages in the page cache just before the child starts. A
    save writes ``path`` (removed first, left for the caller).

    A new interpreter per round, not a fork: children forked from a process that had imported
    torch measured warm mmap loads 1.7 to 4.5x slower than exec'd ones here (cause not pinned
    down; gc.freeze() did not help), so a fork server is no fresh process. The clock starts after
    the imports.
    """
    op = OPS.get(op_id)
    if op is None:
        raise ValueError(f"unknown op {op_id!r}; known: {', '.join(OPS)}")
    if op.saves:
        remove(path)
    elif cold:
        make_cold(path)
    else:
        make_warm(path)
    resident = None if op.saves else resident_fraction(path)
    result: dict[str, Any] = _in_new_python(op_id, path, reference, rounds=None, timeout=timeout)
    result["resident_before"] = resident
    return result


def _in_new_python(op_id: str, path: Path, reference: Path, *, rounds: int | None, timeout: float) -> Any:
    """Run ``op_id`` in a new interpreter (`isolation`, no memory limit: workloads are large);
    one result, or a list of ``rounds``. A failure is one line."""
    from ckpt_compat.isolation import Failure, call_once

    request = {"op": op_id, "path": str(path), "reference": str(reference), "rounds": rounds}
    answer = call_once(["ckpt_compat.bench", "--child"], request, timeout=timeout, memory=None)
    if isinstance(answer, Failure):
        why = answer.message.rsplit(" | ", 1)[-1]
        raise RuntimeError(f"{op_id} of {path} failed in the child: {why}")
    return answer


def _child(request: dict[str, Any]) -> Any:
    """In the child: ``run_op`` once, or ``rounds`` times in this one process."""
    args = (request["op"], request["path"], request["reference"])
    if request["rounds"] is None:
        return run_op(*args)
    return [run_op(*args) for _ in range(int(request["rounds"]))]


def same_process(op_id: str, path: Path, reference: Path, rounds: int, *, timeout: float = 600) -> list[float]:
    """Seconds of ``rounds`` repeats of a load in **one** new process (the page cache warm): what
    a benchmark that does not start a process per round measures. The first round is a fresh one."""
    results = _in_new_python(op_id, path, reference, rounds=rounds, timeout=timeout)
    return [r["seconds"] for r in results]


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_reference(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Save the workload as the torch_zip reference every op starts from, with its layout and its
    manifest records (what ``verify`` compares a load with) beside it."""
    from ckpt_compat.compare import record

    torch.save(dict(state), path)
    _fsync(path)  # on disk before any round: no write-back running under a measurement
    Path(str(path) + ".layout.json").write_text(json.dumps(_layout(state)))
    Path(str(path) + ".records.json").write_text(json.dumps({k: record(t) for k, t in state.items()}))
    return path


# --- scheduling --------------------------------------------------------------------------------


def interleaved(
    trials: Mapping[Key, Callable[[], Round]], rounds: Callable[[Key, list[Round]], int], *, seed: int = 0
) -> dict[Key, list[Round]]:
    """Run every trial its number of rounds, **interleaved**: pass after pass, each pass one round
    of every trial that still wants one, in a new random order (seeded) each pass.

    Rounds of one result taken back to back share whatever the machine was doing in those seconds
    (a noisy neighbour, a host reclaiming memory) and the whole result shifts; spread over the
    session, such a burst costs each result a round or two, which its median drops. This is the
    randomized multiple interleaved trials method of Abedi and Brecht, "Conducting Repeatable
    Experiments in Highly Variable Cloud Computing Environments" (ICPE 2017).

    ``rounds(key, done)`` says how many rounds ``key`` wants, knowing its rounds so far (so a
    result can ask for more once it proves to be fast and jittery); it is asked again every pass.
    """
    import random

    order = random.Random(seed)
    done: dict[Key, list[Round]] = {key: [] for key in trials}
    while True:
        due = [key for key in trials if len(done[key]) < rounds(key, done[key])]
        if not due:
            return done
        order.shuffle(due)
        for key in due:
            done[key].append(trials[key]())


# --- statistics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Rounds of one result: median seconds and inter-quartile range."""

    median: float
    q1: float
    q3: float
    rounds: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Summary:
        data = sorted(seconds)
        if not data:
            raise ValueError("no rounds to summarise")
        median = statistics.median(data)
        q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive") if len(data) > 1 else (median, 0, median)
        return cls(median, q1, q3, len(data))


@dataclass(frozen=True)
class Fit:
    """``t = a·N + bytes/B``: fixed cost per tensor ``a`` and bandwidth ``B``, least squares."""

    seconds_per_tensor: float
    gbps: float
    r2: float

    @classmethod
    def of(cls, points: Iterable[tuple[int, int, float]]) -> Fit:
        """``points``: (tensor count N, bytes, seconds). Fits t = a·N + b·bytes (no free intercept:
        an empty load of nothing costs nothing beyond those two terms), minimising *relative*
        residuals: the 8,192-tensor points would otherwise drown the 1-tensor one, the only point
        where the bandwidth term is not small next to the per-tensor one."""
        rows = list(points)
        if len({n for n, _, _ in rows}) < 2:
            raise ValueError("the fit needs at least two different tensor counts")
        x = torch.tensor([[float(n), float(b)] for n, b, _ in rows], dtype=torch.float64)
        y = torch.tensor([t for _, _, t in rows], dtype=torch.float64)
        weight = (1 / y).unsqueeze(1)
        scale = x.abs().max(dim=0).values
        solution = (
            torch.linalg.lstsq(x * weight / scale, (y * weight.squeeze(1)).unsqueeze(1)).solution.squeeze(1) / scale
        )
        a, b = float(solution[0]), float(solution[1])
        predicted = x @ solution
        residual = float((((predicted - y) / y) ** 2).sum())
        total = float((((y - y.mean()) / y) ** 2).sum())
        return cls(a, 1 / b / GB if b > 0 else float("inf"), 1 - residual / total if total > 0 else 1.0)


# --- the harness's own cost --------------------------------------------------------------------


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


def scratch_dir() -> Path:
    """A directory on the disk under test (not tmpfs): $CKPT_COMPAT_BENCH_DIR or the system temp."""
    root = os.environ.get("CKPT_COMPAT_BENCH_DIR")
    return Path(tempfile.mkdtemp(prefix="ckpt-compat-bench-", dir=root))


def result_info(
    op: Op, rounds: list[dict[str, Any]], *, workload: str, dtype: str, cache: str, limits: Limits, size_mib: int
) -> dict[str, Any]:
    """Everything about one benchmark result, for pytest-benchmark's ``extra_info``: the rounds as
    the child measured them, so ``ckpt-compat bench-report`` can recompute any figure."""
    import platform

    summary = Summary.of(r["seconds"] for r in rounds)
    size = rounds[0]["bytes"]
    gbps = size / GB / summary.median
    limit_name, limit = limits.for_op(op, cache == "cold")
    peak = max(r["peak_rss_kib"] - r["rss_before_kib"] for r in rounds)
    return {
        "schema": "ckpt-compat/bench/1",
        "kind": "save" if op.saves else "load",
        "format": op.format,
        "op": op.name,
        "description": op.description,
        "complete": op.complete,
        "workload": workload,
        "dtype": dtype,
        "cache": cache,
        "size_mib": size_mib,
        "bytes": size,
        "tensors": rounds[0]["tensors"],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "child_seconds": [r["seconds"] for r in rounds],
        "median_s": summary.median,
        "q1_s": summary.q1,
        "q3_s": summary.q3,
        "gbps": gbps,
        "limit": limit_name,
        "ratio_to_limit": gbps / limit,
        "peak_over_op_mib": peak / 1024,
        "peak_rss_mib": max(r["peak_rss_kib"] for r in rounds) / 1024,
        "resident_before": [r.get("resident_before") for r in rounds],
        "limits_gbps": limits.to_json(),
        **allocator_settings(),
    }


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        from ckpt_compat.isolation import serve

        serve(_child)
    else:
        sys.exit("usage: python -m ckpt_compat.bench --child (used by the benchmark runner)")
