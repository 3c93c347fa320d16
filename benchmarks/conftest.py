"""Shared fixtures of the benchmark suites: the scratch disk, the machine's limits, workload files.

Sizes: ``CKPT_COMPAT_BENCH_MIB`` (default 16; 256 for the published tables, 1024 opt-in).
Rounds (one fresh process each): ``CKPT_COMPAT_BENCH_LOAD_ROUNDS`` (default 5) for every load,
whose repeatability is checked, taken interleaved across the whole suite (test_load.py), and
``CKPT_COMPAT_BENCH_MORE_ROUNDS`` (default 11) for loads that prove fast or noisy;
``CKPT_COMPAT_BENCH_ROUNDS`` (default 3) for saves and the per-tensor sweep: every round costs an
interpreter start (about 1 to 3 s), and the suite has to fit a CI job. With
``--benchmark-disable`` (the smoke run) each result gets one round.
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
ROUNDS = int(os.environ.get("CKPT_COMPAT_BENCH_ROUNDS", "3"))
LOAD_ROUNDS = int(os.environ.get("CKPT_COMPAT_BENCH_LOAD_ROUNDS", "5"))
# The honest comparison people ask for: torch.load(mmap=True) + touch vs safetensors + touch.
HEADLINE = ("torch_zip:load", "torch_zip:mmap_touch", "safetensors:load_touch")
# Programs, not checkpoints: TorchScript and torch.export hold a model, not 30k loose adapters.
PROGRAMS = ("torchscript", "torch_export")


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
    once per session, by a save in a fresh process) and its torch_zip reference."""
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
            path = scratch / f"{kind}-{dtype}{bench.SUFFIX[fmt]}"
            bench.fresh(f"{fmt}:save", path, reference)
            files[kind, dtype, fmt] = path
        return files[kind, dtype, fmt], reference

    return get


def rounds_for(benchmark: object) -> int:
    return ROUNDS if getattr(benchmark, "enabled", True) else 1


def skip_unless_available(op: bench.Op) -> None:
    why = bench.why_unavailable(op)
    if why:
        pytest.skip(why)
