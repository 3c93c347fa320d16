"""Load throughput per format and op, each round in a fresh process, warm and cold page cache.

pytest-benchmark's own timer includes the child's interpreter start; the figures to read are in
``extra_info`` (``ckpt_compat.bench.result_info``): the child-measured rounds, median and IQR, GB/s,
the ratio to the limit measured in the same session, and the child's peak RSS over the operation.
Run: ``python -m pytest benchmarks --benchmark-json out.json`` (``CKPT_COMPAT_BENCH_MIB=256`` for
the published sizes), then ``ckpt-compat bench-report out.json``.
"""

from __future__ import annotations

import pytest

from benchmarks.conftest import HEADLINE, PROGRAMS, SIZE_MIB, FileFactory, rounds_for, skip_unless_available
from ckpt_compat import bench

LOADS = [op for op in bench.OPS.values() if not op.saves]
FAST_SECONDS, FAST_ROUNDS = 0.05, 11
# Cold-cache rounds where the page cache changes the answer most: the headline, the loads into
# preallocated memory and the lazy subsets (a cold subset reads only what it needs).
COLD = (*HEADLINE, "torch_zip:into", "safetensors:into", "torch_zip:subset", "safetensors:subset")


def _cases() -> list[tuple[str, str, str, str]]:
    cases = []
    for kind in ("transformer", "lora", "cnn"):
        for op in LOADS:
            if kind == "lora" and op.format in PROGRAMS:
                continue
            if kind == "cnn" and not op.complete:
                continue
            caches = ("warm", "cold") if op.id in COLD and kind != "cnn" else ("warm",)
            cases += [(kind, "float32", op.id, cache) for cache in caches]
    cases += [("transformer", "bfloat16", op_id, cache) for op_id in HEADLINE for cache in ("warm", "cold")]
    return cases


@pytest.mark.parametrize(("kind", "dtype", "op_id", "cache"), _cases())
def test_load(  # type: ignore[no-untyped-def]
    benchmark, workload_file: FileFactory, limits: bench.Limits, kind: str, dtype: str, op_id: str, cache: str
) -> None:
    op = bench.OPS[op_id]
    skip_unless_available(op)
    path, reference = workload_file(kind, dtype, op.format)
    rounds: list[dict[str, object]] = []
    benchmark.pedantic(
        lambda: rounds.append(bench.fresh(op_id, path, reference, cold=cache == "cold")),
        rounds=rounds_for(benchmark, op_id),
        iterations=1,
    )
    if benchmark.enabled and bench.Summary.of(float(r["seconds"]) for r in rounds).median < FAST_SECONDS:  # type: ignore[arg-type]
        # A few milliseconds jitter by a millisecond or two: more rounds keep the median repeatable.
        rounds += [bench.fresh(op_id, path, reference, cold=cache == "cold") for _ in range(FAST_ROUNDS - len(rounds))]
    info = bench.result_info(op, rounds, workload=kind, dtype=dtype, cache=cache, limits=limits, size_mib=SIZE_MIB)
    benchmark.extra_info.update(info)
    # Every round loaded the same thing: all its tensors (or its subset), every byte.
    assert len({(r["tensors"], r["bytes"]) for r in rounds}) == 1
    assert info["bytes"] > 0 and info["median_s"] > 0
