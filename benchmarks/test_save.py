"""Save throughput per format: from memory to a file on disk, fsync included, in a fresh process
each round (what a training job pays per checkpoint). Figures in ``extra_info``, as for loads."""

from __future__ import annotations

import pytest

from benchmarks.conftest import PROGRAMS, SIZE_MIB, FileFactory, rounds_for, skip_unless_available
from ckpt_compat import bench

# Programs, not checkpoints: TorchScript and torch.export hold a model, not 30k loose adapters.
CASES = [
    (kind, op.id)
    for kind in ("transformer", "lora", "cnn")
    for op in bench.OPS.values()
    if op.saves and not (kind == "lora" and op.format in PROGRAMS)
]


@pytest.mark.parametrize(("kind", "op_id"), CASES)
def test_save(benchmark, workload_file: FileFactory, limits: bench.Limits, kind: str, op_id: str) -> None:  # type: ignore[no-untyped-def]
    op = bench.OPS[op_id]
    skip_unless_available(op)
    _, reference = workload_file(kind, "float32", "torch_zip")
    target = reference.with_name(f"{kind}-saved{bench.SUFFIX[op.format]}")
    rounds: list[dict[str, object]] = []
    benchmark.pedantic(
        lambda: rounds.append(bench.fresh(op_id, target, reference)), rounds=rounds_for(benchmark), iterations=1
    )
    bench.remove(target)
    info = bench.result_info(op, rounds, workload=kind, dtype="float32", cache="-", limits=limits, size_mib=SIZE_MIB)
    benchmark.extra_info.update(info)
    assert len({r["bytes"] for r in rounds}) == 1  # every round wrote the same file
    assert info["bytes"] >= 0.9 * SIZE_MIB * 2**20
