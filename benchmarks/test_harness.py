"""Our own cost, and the check that a fresh process per round matters.

- harness: GB/s of the bitwise comparison and the manifest digest next to memcpy and sha256 (in
  process, best of 3: these are CPU-bound and do not depend on fresh memory);
- verify's per-load overhead is in the load suite (``torch_zip:verify`` next to ``torch_zip:load``);
- fresh_check: one load repeated in one process vs the fresh-process rounds of the load suite.
"""

from __future__ import annotations

import torch

from benchmarks.conftest import SIZE_MIB, FileFactory, rounds_for
from ckpt_compat import bench


def test_harness_throughput(benchmark, limits: bench.Limits) -> None:  # type: ignore[no-untyped-def]
    data = bench.workload("transformer", SIZE_MIB * 2**20)["layers.0.mlp.up.weight"]
    figures = benchmark.pedantic(lambda: bench.hash_throughput(data), rounds=1, iterations=1)
    benchmark.extra_info.update(
        {
            "schema": bench.SCHEMA,
            "kind": "harness",
            "bytes": data.numel() * data.element_size(),
            "gbps_by_step": figures,
            "limits_gbps": limits.to_json(),
            "torch": torch.__version__,
        }
    )
    assert set(figures) == {"memcpy", "compare_tensors", "digest_xxh3", "sha256"}
    assert all(v > 0 for v in figures.values())


def test_fresh_process_matters(benchmark, workload_file: FileFactory) -> None:  # type: ignore[no-untyped-def]
    """The same eager load, repeated in one process (reusing the memory the last round freed) and in a
    fresh process per round: the gap is why every other result starts a process per round."""
    path, reference = workload_file("transformer", "float32", "torch_zip")
    rounds = rounds_for(benchmark)
    fresh: list[float] = []
    repeated: list[float] = []

    def measure() -> None:
        fresh.extend(bench.fresh("torch_zip:load", path, reference)["seconds"] for _ in range(max(rounds, 2)))
        repeated.extend(bench.same_process("torch_zip:load", path, reference, max(rounds, 2) + 1)[1:])

    benchmark.pedantic(measure, rounds=1, iterations=1)
    size = path.stat().st_size
    benchmark.extra_info.update(
        {
            "schema": bench.SCHEMA,
            "kind": "fresh_check",
            "format": "torch_zip",
            "op": "load",
            "workload": "transformer",
            "bytes": size,
            "fresh_seconds": fresh,
            "same_process_seconds": repeated,
            "fresh_gbps": size / bench.GB / bench.Summary.of(fresh).median,
            "same_process_gbps": size / bench.GB / bench.Summary.of(repeated).median,
            "torch": torch.__version__,
        }
    )
    assert len(fresh) == len(repeated) >= 2
