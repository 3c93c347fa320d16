"""Shared fixtures of the benchmark suites: the scratch disk, the machine's limits, workload files.

The defaults are the **quick run**: every table and plot from one round per result at 16 MiB (and
the real-delay gate test), in 4 min 46 s here, for CI; its figures are indicative, not repeatable.
The published run sets the sizes and rounds up (``nox -s bench``: 256 MiB; 5 rounds per load, 9 for fast or noisy ones,
3 per save and sweep point).
Sizes: ``CKPT_COMPAT_BENCH_MIB`` (default 16; 256 for the published tables, 1024 opt-in).
Rounds (one fresh process each): ``CKPT_COMPAT_BENCH_LOAD_ROUNDS`` (default 1) for every load,
all but the last taken interleaved across the whole suite with the limits in every pass
(test_load.py), and ``CKPT_COMPAT_BENCH_MORE_ROUNDS`` (default 1) for loads that prove fast or
noisy; ``CKPT_COMPAT_BENCH_ROUNDS`` (default 1) for saves and the per-tensor sweep: every round costs
an interpreter start (about 1 to 3 s). With ``--benchmark-disable`` (the smoke run) each result gets
one round.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from ckpt_compat import bench

SIZE_MIB = int(os.environ.get("CKPT_COMPAT_BENCH_MIB", "16"))
ROUNDS = int(os.environ.get("CKPT_COMPAT_BENCH_ROUNDS", "1"))
LOAD_ROUNDS = int(os.environ.get("CKPT_COMPAT_BENCH_LOAD_ROUNDS", "1"))
# The honest comparison people ask for: torch.load(mmap=True) + touch vs safetensors + touch.
HEADLINE = ("torch_zip:load", "torch_zip:mmap_touch", "safetensors_file:load_touch")
# Programs, not checkpoints: TorchScript and torch.export hold a model, not 30k loose adapters.
PROGRAMS = ("torchscript_script", "torch_export")


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    d = bench.scratch_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def limits(scratch: Path) -> bench.Limits:
    """The machine's limits, measured once per session on the same size as the workloads."""
    return bench.physical_limits(SIZE_MIB * 2**20, scratch)


FileFactory = Callable[[str, str, str], tuple[Path, Path]]


@pytest.fixture(scope="session")
def workload_file(scratch: Path) -> FileFactory:
    """``(workload, dtype, format) -> (file, reference)``: the workload saved in ``format`` (made
    once per session, in this process: the save rounds are test_save's) and its torch_zip reference."""
    references: dict[tuple[str, str], Path] = {}
    files: dict[tuple[str, str, str], Path] = {}

    def get(kind: str, dtype: str, fmt: str) -> tuple[Path, Path]:
        if (kind, dtype) not in references:
            state = bench.workload(kind, SIZE_MIB * 2**20, getattr(torch, dtype))
            references[kind, dtype] = bench.write_reference(state, scratch / f"{kind}-{dtype}.reference.pt")
        reference = references[kind, dtype]
        if fmt == "torch_zip":
            return reference, reference
        if (kind, dtype, fmt) not in files:
            path = scratch / f"{kind}-{dtype}{bench.suffix(fmt)}"
            files[kind, dtype, fmt] = bench.save_here(fmt, torch.load(reference, weights_only=True), path)
        return files[kind, dtype, fmt], reference

    return get


@pytest.fixture(scope="session")
def limit_file(workload_file: FileFactory) -> tuple[Path, Path]:
    """``(file, reference)``: the read limits' file, as many bytes as the workloads."""
    _, reference = workload_file("transformer", "float32", "torch_zip")
    path = reference.with_name(f"limit{bench.suffix(bench.RAW)}")
    return bench.save_here(bench.RAW, torch.load(reference, weights_only=True), path), reference


def limit_of(limit_file: tuple[Path, Path], op_id: str, cache: str) -> tuple[str, Path]:
    """The limit a round of ``op_id`` in ``cache`` is judged against, as `bench.fresh` takes it
    (taken in the round's own child, right after the operation): a read of the limit file, or a
    write of as many bytes to a file of its own."""
    limit_op, _ = bench.limit_for(bench.OPS[op_id], cache)
    path, _ = limit_file
    if bench.OPS[limit_op].saves:
        return limit_op, path.with_name(f"limit-written{bench.suffix(bench.RAW)}")
    return limit_op, path


def rounds_for(benchmark: object) -> int:
    return ROUNDS if getattr(benchmark, "enabled", True) else 1


def skip_unless_available(op: bench.Op) -> None:
    why = bench.why_unavailable(op)
    if why:
        pytest.skip(why)
