"""Save throughput per format: from memory to a file on disk, fsync included, in a fresh process
each round (what a training job pays per checkpoint). Figures in ``extra_info``, as for loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.conftest import PROGRAMS, SIZE_MIB, FileFactory, limit_of, rounds_for, skip_unless_available
from ckpt_compat import bench

# Programs, not checkpoints: TorchScript and torch.export hold a model, not 30k loose adapters.
CASES = [
    (kind, op.id)
    for kind in ("transformer", "lora", "cnn")
    for op in bench.OPS.values()
    if op.saves and not op.is_limit and not (kind == "lora" and op.format in PROGRAMS)
]


@pytest.mark.parametrize(("kind", "op_id"), CASES)
def test_save(  # type: ignore[no-untyped-def]
    benchmark, workload_file: FileFactory, limits: bench.Limits, limit_file: tuple[Path, Path], kind: str, op_id: str
) -> None:
    op = bench.OPS[op_id]
    skip_unless_available(op)
    _, reference = workload_file(kind, "float32", "torch_zip")
    target = reference.with_name(f"{kind}-saved{bench.suffix(op.format)}")
    rounds: list[dict[str, Any]] = []

    def save() -> None:
        """The save, then in the same child a write + fsync of as many bytes (its limit)."""
        rounds.append(bench.fresh(op_id, target, reference, limit=limit_of(limit_file, op_id, "-")))

    benchmark.pedantic(save, rounds=rounds_for(benchmark), iterations=1)
    bench.remove(target)
    info = bench.result_info(
        op,
        rounds,
        workload=kind,
        dtype="float32",
        cache="-",
        limits=limits,
        size_mib=SIZE_MIB,
        limit_rounds=[r["limit"] for r in rounds],
    )
    benchmark.extra_info.update(info)
    assert len({r["bytes"] for r in rounds}) == 1  # every round wrote the same file
    assert info["bytes"] >= 0.9 * SIZE_MIB * 2**20
