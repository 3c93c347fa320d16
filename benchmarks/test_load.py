"""Load throughput per format and op, each round in a fresh process, warm and cold page cache.

pytest-benchmark's own timer includes the child's interpreter start; the figures to read are in
``extra_info`` (``ckpt_compat.bench.result_info``): the child-measured rounds, median and IQR, GB/s,
each round's ratio to its limit (a raw read taken in the same child right after it), and the
child's peak RSS over the operation.
Run: ``python -m pytest benchmarks --benchmark-json out.json`` (``CKPT_COMPAT_BENCH_MIB=256`` for
the published sizes), then ``ckpt-compat bench-report out.json``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest

from benchmarks.conftest import (
    HEADLINE,
    LOAD_ROUNDS,
    PROGRAMS,
    SIZE_MIB,
    FileFactory,
    limit_of,
    skip_unless_available,
)
from ckpt_compat import bench

LOADS = [op for op in bench.OPS.values() if not op.saves and not op.is_limit]
# More rounds where a median of LOAD_ROUNDS would not repeat: a few milliseconds jitter by a
# millisecond or two, and some loads spread wide here (a cold eager torch.load takes 125 to
# 870 ms on this VM). A result gets MORE_ROUNDS once its first rounds prove it fast or noisy.
FAST_SECONDS, NOISY_IQR = 0.05, 0.10
MORE_ROUNDS = int(os.environ.get("CKPT_COMPAT_BENCH_MORE_ROUNDS", "1"))
SEED = 20261125  # the interleaving order: fixed, so two runs of the suite take the same one
# Cold-cache rounds where the page cache changes the answer most: the headline, the loads into
# preallocated memory and the lazy subsets (a cold subset reads only what it needs).
COLD = (*HEADLINE, "torch_zip:into", "safetensors_file:into", "torch_zip:subset", "safetensors_file:subset")
Case = tuple[str, str, str, str]  # workload, dtype, op id, cache


def _cases() -> list[Case]:
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


def _wanted(case: Case, done: list[dict[str, Any]]) -> int:
    """Rounds taken in the interleaved passes; the test itself takes one more, live."""
    if not done:
        return LOAD_ROUNDS - 1
    summary = bench.Summary.of(r["seconds"] for r in done)
    fast = summary.median < FAST_SECONDS
    noisy = len(done) >= LOAD_ROUNDS - 1 and summary.iqr > NOISY_IQR * summary.median
    return (MORE_ROUNDS if fast or noisy else LOAD_ROUNDS) - 1


Schedule = bench.Schedule[Case, dict[str, Any]]


@pytest.fixture(scope="session")
def interleaved_rounds(
    request: pytest.FixtureRequest, workload_file: FileFactory, limits: bench.Limits, limit_file: tuple[Path, Path]
) -> Schedule:
    """Every selected load's rounds but one, taken interleaved across all of them
    (``bench.interleaved``): a burst of noise on the machine then costs each result a round, not
    a whole result. Each round takes its own limit in its child (`limit_of`). Nothing under
    ``--benchmark-disable`` (the smoke run takes its one round live).
    ``limits`` first: the session's figures are measured before the rounds, not in between."""
    if request.config.getoption("benchmark_disable", False):
        return bench.Schedule()
    selected: list[Case] = [
        tuple(item.callspec.params[name] for name in ("kind", "dtype", "op_id", "cache"))  # type: ignore[attr-defined,misc]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_load"
    ]
    trials = {}
    for kind, dtype, op_id, cache in selected:
        op = bench.OPS[op_id]
        if bench.why_unavailable(op) is None:
            path, reference = workload_file(kind, dtype, op.format)
            limit = limit_of(limit_file, op_id, cache)
            trials[kind, dtype, op_id, cache] = functools.partial(
                bench.fresh, op_id, path, reference, cold=cache == "cold", limit=limit
            )
    return bench.interleaved(trials, _wanted, seed=SEED)


@pytest.mark.parametrize(("kind", "dtype", "op_id", "cache"), _cases())
def test_load(  # type: ignore[no-untyped-def]
    benchmark,
    interleaved_rounds: Schedule,
    workload_file: FileFactory,
    limits: bench.Limits,
    limit_file: tuple[Path, Path],
    kind: str,
    dtype: str,
    op_id: str,
    cache: str,
) -> None:
    op = bench.OPS[op_id]
    skip_unless_available(op)
    path, reference = workload_file(kind, dtype, op.format)
    rounds = list(interleaved_rounds.rounds.get((kind, dtype, op_id, cache), []))

    def live() -> None:
        """The last round runs here, so pytest-benchmark's own table times a child too (its figure
        includes the interpreter start; the ones to read are in extra_info)."""
        limit = limit_of(limit_file, op_id, cache)
        rounds.append(bench.fresh(op_id, path, reference, cold=cache == "cold", limit=limit))

    benchmark.pedantic(live, rounds=1, iterations=1)
    info = bench.result_info(
        op,
        rounds,
        workload=kind,
        dtype=dtype,
        cache=cache,
        limits=limits,
        size_mib=SIZE_MIB,
        limit_rounds=[r["limit"] for r in rounds],
    )
    benchmark.extra_info.update(info, schedule={"interleaved_rounds": len(rounds) - 1, "seed": SEED})
    # Every round loaded the same thing: all its tensors (or its subset), every byte.
    assert len({(r["tensors"], r["bytes"]) for r in rounds}) == 1
    assert info["bytes"] > 0 and info["median_s"] > 0 and len(info["pass_ratios"]) == len(rounds)
    # And every round (and its limit round) started from the page cache it claims: all of the file,
    # or none of it.
    resident = [r["resident_before"] for r in rounds + [r["limit"] for r in rounds] if r["resident_before"] is not None]
    wrong = [f for f in resident if (f < 0.999 if cache == "warm" else f > 0.001)]
    assert not wrong, (
        f"{cache} rounds of {path} started with {wrong} of its pages in the page cache; a disk "
        "that cannot drop its cache (tmpfs?) cannot measure cold loads: set CKPT_COMPAT_BENCH_DIR"
    )
