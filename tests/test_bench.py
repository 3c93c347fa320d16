"""The measurement helpers measure what they say (no wall-clock assertions: benchmarks print figures)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ckpt_compat import bench


@pytest.fixture
def scratch() -> Iterator[Path]:
    d = bench.scratch_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("kind", bench.WORKLOADS)
def test_workloads_have_their_size_and_shape_and_no_zeros(kind: str) -> None:
    state = bench.workload(kind, 4 * 2**20)
    assert 0.8 * 4 * 2**20 <= bench.nbytes(state) <= 4 * 2**20
    assert all(bool((t != 0).any()) and not t.isnan().any() for t in state.values())
    counts = {"transformer": (4, 100), "lora": (256, 10**6), "cnn": (20, 5000)}[kind]
    assert counts[0] <= len(state) <= counts[1]
    assert torch.equal(
        next(iter(bench.workload(kind, 2**16).values())), next(iter(bench.workload(kind, 2**16).values()))
    )


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown workload 'moe'"):
        bench.workload("moe", 1)
    with pytest.raises(ValueError, match="unknown load op 'read'"):
        bench.fresh_load("read", Path("x"), cold=False)


def test_touch_reads_every_page() -> None:
    t = torch.zeros(3 * bench.PAGE, dtype=torch.uint8)
    t[0], t[bench.PAGE], t[2 * bench.PAGE] = 1, 2, 3
    assert bench.touch({"t": t, "s": t[:0]}) == 6


def test_limits_and_fresh_loads(scratch: Path) -> None:
    limits = bench.physical_limits(2**20, scratch)
    assert all(v > 0 for v in limits.to_json().values())
    state = bench.workload("lora", 2**20)
    assert bench.save("torch_zip", state, scratch / "m.pt") > 0
    for op in ("torch_load", "torch_load_mmap_touch"):
        for cold in (False, True):
            result = bench.fresh_load(op, scratch / "m.pt", cold=cold)
            assert result["tensors"] == len(state) and result["seconds"] > 0
            assert result["peak_rss_kib"] > 50 * 1024  # a child with torch imported
    pytest.importorskip("safetensors")
    bench.save("safetensors", state, scratch / "m.safetensors")
    subset = bench.fresh_load("safetensors_lazy_subset", scratch / "m.safetensors", cold=True, keys=list(state)[:3])
    assert subset["tensors"] == 3
    assert bench.fresh_load("safetensors_load_touch", scratch / "m.safetensors", cold=False)["tensors"] == len(state)
