"""Fixed cost per tensor vs bandwidth: the same bytes in 1 to 8,192 tensors, warm cache, fresh
process per round. ``ckpt-compat bench-report`` fits ``t = a·N + bytes/B`` per format and op."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import pytest
import torch

from benchmarks.conftest import rounds_for, skip_unless_available
from ckpt_compat import bench

SWEEP_MIB = int(os.environ.get("CKPT_COMPAT_BENCH_SWEEP_MIB", "16"))  # nox -s bench: 64
COUNTS = (1, 64, 1024, 8192)
OPS = ("torch_zip:load", "torch_zip:mmap_touch", "torch_legacy:load", "safetensors_file:load_touch", "dcp:into")


@pytest.mark.parametrize("op_id", OPS)
@pytest.mark.parametrize("tensors", COUNTS)
def test_per_tensor(benchmark, scratch: Path, tensors: int, op_id: str) -> None:  # type: ignore[no-untyped-def]
    op = bench.OPS[op_id]
    skip_unless_available(op)
    reference = scratch / f"sweep-{tensors}.reference.pt"
    if not reference.exists():
        bench.write_reference(bench.workload("sweep", SWEEP_MIB * 2**20, tensors=tensors), reference)
    path = reference.with_name(f"sweep-{tensors}{bench.suffix(op.format)}")
    if op.format != "torch_zip" and not path.exists():
        bench.save_here(op.format, torch.load(reference, weights_only=True), path)
    path = reference if op.format == "torch_zip" else path
    rounds: list[dict[str, object]] = []
    benchmark.pedantic(
        lambda: rounds.append(bench.fresh(op_id, path, reference)), rounds=rounds_for(benchmark), iterations=1
    )
    seconds = [float(r["seconds"]) for r in rounds]  # type: ignore[arg-type]
    benchmark.extra_info.update(
        {
            "schema": bench.SCHEMA,
            "kind": "sweep",
            "format": op.format,
            "op": op.name,
            "workload": "sweep",
            "tensors": tensors,
            "bytes": rounds[0]["bytes"],
            "child_seconds": seconds,
            "median_s": statistics.median(seconds),
            "torch": torch.__version__,
        }
    )
    assert rounds[0]["tensors"] == tensors
