from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt_compat import bench

SIZE_MIB = int(os.environ.get("CKPT_COMPAT_BENCH_MIB", "16"))  # 256 and 1024 for the published tables
ROUNDS = int(os.environ.get("CKPT_COMPAT_BENCH_ROUNDS", "5"))


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    d = bench.scratch_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def limits(scratch: Path) -> bench.Limits:
    """The machine's limits, measured once per session on the same size as the workloads."""
    return bench.physical_limits(SIZE_MIB * 2**20, scratch)
