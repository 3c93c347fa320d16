"""Load throughput per format, in a fresh process each round, warm and cold page cache.

pytest-benchmark's own timer includes the child's interpreter start; the figures to read are in
``extra_info``: the child-measured median and IQR, GB/s, the ratio to the raw-read limit measured
in the same session, and the child's peak RSS. Run: ``python -m pytest benchmarks
--benchmark-json out.json`` (``CKPT_COMPAT_BENCH_MIB=256`` for the published sizes).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch

from benchmarks.conftest import ROUNDS, SIZE_MIB
from ckpt_compat import bench

FILES = {
    "torch_load": "pt",
    "torch_load_mmap": "pt",
    "torch_load_mmap_touch": "pt",
    "safetensors_load": "safetensors",
    "safetensors_load_touch": "safetensors",
}


@pytest.mark.parametrize("cache", ["warm", "cold"])
@pytest.mark.parametrize("op", list(FILES))
@pytest.mark.parametrize("kind", ["transformer", "lora"])
def test_load(benchmark, scratch: Path, limits: bench.Limits, kind: str, op: str, cache: str) -> None:  # type: ignore[no-untyped-def]
    if op.startswith("safetensors"):
        pytest.importorskip("safetensors")
    path = scratch / f"{kind}.{FILES[op]}"
    if not path.exists():
        state = bench.workload(kind, SIZE_MIB * 2**20)
        bench.save("torch_zip" if FILES[op] == "pt" else "safetensors", state, path)
    size = path.stat().st_size
    rounds = ROUNDS if benchmark.enabled else 1
    results = []
    benchmark.pedantic(
        lambda: results.append(bench.fresh_load(op, path, cold=cache == "cold")), rounds=rounds, iterations=1
    )
    seconds = sorted(r["seconds"] for r in results)
    median = statistics.median(seconds)
    q = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [median, median, median]
    gbps = size / 1e9 / median
    benchmark.extra_info.update(
        {
            "format": FILES[op],
            "op": op,
            "workload": kind,
            "dtype": "float32",
            "cache": cache,
            "bytes": size,
            "tensors": results[0]["tensors"],
            "torch": torch.__version__,
            "child_median_s": median,
            "child_iqr_s": q[2] - q[0],
            "gbps": gbps,
            "ratio_to_raw_read": gbps / limits.read_fresh,
            "peak_rss_kib": max(r["peak_rss_kib"] for r in results),
            "limits_gbps": limits.to_json(),
            **bench.allocator_settings(),
        }
    )
    assert results and all(r["tensors"] == results[0]["tensors"] for r in results)
