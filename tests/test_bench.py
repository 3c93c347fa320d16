"""The measurement helpers measure what they say (no wall-clock assertions: benchmarks print figures)."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpt_compat import bench


@pytest.fixture
def scratch() -> Iterator[Path]:
    d = bench.scratch_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("kind", ["transformer", "lora", "cnn"])
def test_workloads_have_their_size_and_shape_and_no_zeros(kind: str) -> None:
    state = bench.workload(kind, 4 * 2**20)
    assert 0.8 * 4 * 2**20 <= bench.nbytes(state) <= 4 * 2**20
    assert all(bool((t != 0).all()) and not t.isnan().any() for t in state.values() if t.numel() > 1)
    counts = {"transformer": (4, 100), "lora": (256, 10**6), "cnn": (20, 5000)}[kind]
    assert counts[0] <= len(state) <= counts[1]
    assert torch.equal(
        next(iter(bench.workload(kind, 2**16).values())), next(iter(bench.workload(kind, 2**16).values()))
    )


def test_workload_dtypes() -> None:
    cnn = bench.workload("cnn", 2**20, torch.bfloat16)
    assert cnn["blocks.0.conv.weight"].dtype == torch.bfloat16
    assert cnn["blocks.0.bn.running_var"].dtype == torch.float32  # as BatchNorm keeps them
    assert cnn["blocks.0.bn.num_batches_tracked"].dtype == torch.int64
    sweep = bench.workload("sweep", 2**20, tensors=64)
    assert len(sweep) == 64 and bench.nbytes(sweep) == 2**20
    with pytest.raises(ValueError, match="tensors >= 1, got tensors=0"):
        bench.workload("sweep", 2**20)


def test_unknown_names_are_refused(scratch: Path) -> None:
    with pytest.raises(ValueError, match="unknown workload 'moe'"):
        bench.workload("moe", 1)
    with pytest.raises(ValueError, match="unknown op 'read:load'"):
        bench.fresh("read:load", scratch / "x", scratch / "y")


def test_touch_reads_every_byte() -> None:
    """Its checksum changes with any one byte: nothing is skipped (a one-byte-per-page touch would)."""
    t = torch.zeros(3 * bench.PAGE + 3, dtype=torch.uint8)
    for view in (t, t[1:], t[:-3]):  # aligned words, unaligned, and words with no tail
        base = bench.touch({"t": view, "empty": view[:0]})
        for position in (5, bench.PAGE + 17, view.numel() - 1):
            changed = view.clone()
            changed[position] += 1
            assert bench.touch({"t": changed}) != base, position


def test_fit_recovers_the_cost_per_tensor_and_the_bandwidth() -> None:
    a, gbps, size = 50e-6, 2.0, 64 * 2**20
    points = [(n, size, a * n + size / (gbps * bench.GB)) for n in (1, 64, 1024, 8192)]
    fit = bench.Fit.of(points)
    assert fit.seconds_per_tensor == pytest.approx(a, rel=1e-6)
    assert fit.gbps == pytest.approx(gbps, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two different tensor counts"):
        bench.Fit.of(points[:1] * 3)


def test_summary_quartiles() -> None:
    s = bench.Summary.of([5.0, 1.0, 2.0, 3.0, 4.0])
    assert (s.median, s.q1, s.q3, s.iqr, s.rounds) == (3.0, 2.0, 4.0, 2.0, 5)
    with pytest.raises(ValueError, match="no rounds"):
        bench.Summary.of([])


def test_limits(scratch: Path) -> None:
    limits = bench.physical_limits(2**20, scratch)
    assert all(v > 0 for v in limits.to_json().values())
    assert limits.for_op(bench.OPS["torch_zip:save"], False)[0] == "write_fsync"
    assert limits.for_op(bench.OPS["torch_zip:into"], False)[0] == "read_preallocated"
    assert limits.for_op(bench.OPS["torch_zip:load"], True)[0] == "read_cold"
    assert not list(scratch.iterdir())  # its scratch file is gone


def test_every_op_runs_in_an_isolated_process(scratch: Path) -> None:
    """Each save writes the workload, each load returns every tensor (a subset: 1 key in 10), every
    byte. All ops in one isolated child, the one `fresh` starts per round (that it starts one per
    round is tested below): a new interpreter per op would cost ~70 s of imports here."""
    from ckpt_compat.bench.child import ARGV
    from ckpt_compat.isolation import Child, Failure

    state = bench.workload("cnn", 2**20)
    reference = bench.write_reference(state, scratch / "ref.pt")
    subset = list(state)[:: bench.SUBSET]
    with Child(ARGV, timeout=600, memory=None) as child:

        def run(op: bench.Op, path: Path, cold: bool = False) -> dict[str, Any]:
            if op.saves:
                bench.remove(path)
            else:
                (bench.make_cold if cold else bench.make_warm)(path)
            answer = child.request({"op": op.id, "path": str(path), "reference": str(reference), "rounds": None})
            assert not isinstance(answer, Failure), f"{op.id}: {answer.message}"
            return dict(answer)

        for op in bench.OPS.values():
            if op.saves and bench.why_unavailable(op) is None:
                path = scratch / f"cnn{bench.suffix(op.format)}"
                assert run(op, path)["bytes"] == bench.size_on_disk(path) >= bench.nbytes(state), op.id
        for op in bench.OPS.values():
            if op.saves or bench.why_unavailable(op):
                continue
            path = reference if op.format == "torch_zip" else scratch / f"cnn{bench.suffix(op.format)}"
            cold_too = ("torch_zip:load", "safetensors_file:load_touch", "dcp:into", "raw:read")
            for cold in (False, True) if op.id in cold_too else (False,):
                got = run(op, path, cold)
                keys = subset if op.name == "subset" else list(state)
                expected = (1 if op.is_limit else len(keys), bench.nbytes({k: state[k] for k in keys}))
                assert (got["tensors"], got["bytes"]) == expected, op.id
                assert got["seconds"] > 0 and got["peak_rss_reset"], op.id


def test_peak_rss_covers_the_operation_only(scratch: Path) -> None:
    state = bench.workload("transformer", 32 * 2**20)
    reference = bench.write_reference(state, scratch / "ref.pt")
    eager = bench.fresh("torch_zip:load", reference, reference)
    lazy = bench.fresh("torch_zip:mmap_lazy", reference, reference)
    over = {name: (r["peak_rss_kib"] - r["rss_before_kib"]) * 1024 for name, r in (("eager", eager), ("lazy", lazy))}
    assert over["eager"] >= 0.95 * bench.nbytes(state)  # every byte landed in new memory
    assert over["lazy"] < 0.5 * bench.nbytes(state)  # an untouched mmap read almost nothing


def test_verify_op_fails_on_a_corrupt_file(scratch: Path) -> None:
    state = bench.workload("transformer", 2**20)
    reference = bench.write_reference(state, scratch / "ref.pt")
    assert bench.fresh("torch_zip:verify", reference, reference)["tensors"] == len(state)
    torch.save({**state, "layers.0.attn.out.weight": state["layers.0.attn.out.weight"] + 1}, reference)
    with pytest.raises(RuntimeError, match=r"torch_zip:verify of .*ref.pt failed in the child: .*differs"):
        bench.fresh("torch_zip:verify", reference, reference)


def test_same_process_repeats(scratch: Path) -> None:
    reference = bench.write_reference(bench.workload("lora", 2**20), scratch / "ref.pt")
    seconds = bench.same_process("torch_zip:load", reference, reference, 3)
    assert len(seconds) == 3 and all(s > 0 for s in seconds)


def test_interleaved_takes_one_round_of_every_trial_per_pass_in_a_seeded_order() -> None:
    log: list[str] = []
    trials = {key: (lambda key=key: log.append(key) or len(log)) for key in "abcd"}
    wants = {"a": 3, "b": 3, "c": 1, "d": 0}
    rounds = bench.interleaved(trials, lambda key, done: wants[key], seed=1).rounds
    assert {key: len(done) for key, done in rounds.items()} == wants
    # Pass by pass: no trial gets its k+1-th round before every trial due gets its k-th.
    assert sorted(log[:3]) == ["a", "b", "c"] and sorted(log[3:5]) == ["a", "b"] and sorted(log[5:]) == ["a", "b"]
    assert rounds["a"] == sorted(rounds["a"])  # each trial's rounds in the order they ran
    again: list[str] = []
    bench.interleaved({k: (lambda k=k: again.append(k)) for k in "abcd"}, lambda key, done: wants[key], seed=1)
    assert again == log  # the same seed, the same order
    orders = set()
    clock = itertools.count()
    for seed in range(20):
        trials = {k: (lambda k=k: next(clock)) for k in "abcd"}
        rounds = bench.interleaved(trials, lambda key, done: 1, seed=seed).rounds
        orders.add(tuple(sorted(rounds, key=lambda k: rounds[k][0])))
    assert len(orders) > 1  # the order is shuffled, not the dict's


def test_interleaved_asks_again_as_rounds_come_in() -> None:
    """A trial that proves fast after its first round can ask for more (what ms-scale loads do)."""
    trials = {"fast": lambda: 0.001, "slow": lambda: 1.0}
    rounds = bench.interleaved(trials, lambda key, done: 5 if done and done[0] < 0.01 else 2).rounds
    assert len(rounds["fast"]) == 5 and len(rounds["slow"]) == 2


def test_a_round_takes_its_limit_in_its_own_child_from_the_same_cache_state(scratch: Path) -> None:
    """The limit a round is judged against is measured in the round's child right after the
    operation, on its own file, put in the round's page cache state first; a written one is removed."""
    reference = bench.write_reference(bench.workload("transformer", 2**20), scratch / "t.pt")
    limit_file = bench.save_here(bench.RAW, torch.load(reference, weights_only=True), scratch / "limit.bin")
    size = limit_file.stat().st_size
    warm = bench.fresh("torch_zip:load", reference, reference, limit=("raw:read", limit_file))
    assert warm["limit"]["bytes"] == size and warm["limit"]["seconds"] > 0
    assert warm["limit"]["tensors"] == 1 and warm["tensors"] == len(torch.load(reference, weights_only=True))
    assert warm["limit"]["resident_before"] == 1.0
    written = scratch / "limit-written.bin"
    saved = bench.fresh("torch_zip:save", scratch / "saved.pt", reference, limit=("raw:write", written))
    assert saved["limit"]["bytes"] == size and not written.exists()
    with pytest.raises(ValueError, match="unknown limit op 'raw:nope'"):
        bench.fresh("torch_zip:load", reference, reference, limit=("raw:nope", limit_file))
    cold = bench.fresh("torch_zip:load", reference, reference, cold=True, limit=("raw:read", limit_file))
    if cold["limit"]["resident_before"] is None or cold["resident_before"]:
        pytest.skip(f"{scratch} cannot drop its page cache, or there is no mincore")
    assert cold["limit"]["resident_before"] == 0.0
    # ... and it read the limit file from the disk (pgpgin: KiB the system read in, during the limit).
    assert cold["limit"]["kernel"].get("pgpgin", size) >= 0.9 * size / 1024


def test_limit_ops_are_raw_reads_and_writes_of_the_same_bytes(scratch: Path) -> None:
    state = bench.workload("transformer", 2**20)
    reference = bench.write_reference(state, scratch / "ref.pt")
    written = bench.fresh("raw:write", scratch / "limit.bin", reference)
    assert written["bytes"] == bench.size_on_disk(scratch / "limit.bin") == bench.nbytes(state)
    for op_id in ("raw:read", "raw:read_into"):
        got = bench.fresh(op_id, scratch / "limit.bin", reference)
        assert (got["tensors"], got["bytes"]) == (1, bench.nbytes(state)), op_id
    assert bench.limit_for(bench.OPS["torch_zip:load"], "cold") == ("raw:read", "cold")
    assert bench.limit_for(bench.OPS["torch_zip:into"], "warm") == ("raw:read_into", "warm")
    assert bench.limit_for(bench.OPS["dcp:save"], "-") == ("raw:write", "-")
    # Each round says what the kernel did meanwhile (the cold spread's evidence).
    assert {"major_faults", "minor_faults", "system_s"} <= set(got["kernel"])


def test_ops_come_from_the_format_registry() -> None:
    """Every registered format is benchmarked (a save and a load) unless it says why not."""
    from ckpt_compat.formats import all_formats

    for fmt in all_formats().values():
        ops = [op for op in bench.OPS.values() if op.format == fmt.name]
        if fmt.bench_note is None:
            assert any(op.saves for op in ops) and any(not op.saves for op in ops), fmt.name
            assert bench.suffix(fmt.name).endswith(fmt.suffix)
        else:
            assert not ops, fmt.name
    assert len({bench.suffix(op.format) for op in bench.OPS.values()}) == len({op.format for op in bench.OPS.values()})


def test_a_delay_in_the_child_slows_that_op_only(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the gate's test injects: a real busy wait in the child, inside the clock."""
    reference = bench.write_reference(bench.workload("transformer", 4 * 2**20), scratch / "ref.pt")
    monkeypatch.setenv("CKPT_COMPAT_BENCH_DELAY", "torch_zip:load=1.0")
    slowed = bench.fresh("torch_zip:load", reference, reference)
    other = bench.fresh("torch_zip:mmap_touch", reference, reference)
    assert slowed["kernel"]["user_s"] >= 0.4 * slowed["seconds"]  # half of it a busy wait
    assert other["kernel"]["user_s"] < other["seconds"] + 0.05


def test_page_cache_residency_follows_make_cold_and_make_warm(scratch: Path) -> None:
    """What proves a warm round warm and a cold one cold (on a disk that can drop its cache)."""
    file = scratch / "data.bin"
    file.write_bytes(torch.randint(0, 255, (3 * 2**20 + 5,), dtype=torch.uint8).numpy().tobytes())
    directory = scratch / "dir"
    directory.mkdir()
    (directory / "a").write_bytes(b"x" * 10_000)
    (directory / "empty").write_bytes(b"")
    for path in (file, directory):
        bench.evict(path)
        if bench.resident_fraction(path) is None:
            pytest.skip("no mincore on this platform")
        if bench.resident_fraction(path) != 0.0:
            pytest.skip(f"{scratch} cannot drop its page cache (tmpfs?)")
        bench.make_warm(path)
        assert bench.resident_fraction(path) == 1.0
        bench.make_warm(path)  # from warm, too
        assert bench.resident_fraction(path) == 1.0
        bench.make_cold(path)
        assert bench.resident_fraction(path) == 0.0
        bench.make_cold(path)
        assert bench.resident_fraction(path) == 0.0


def test_fresh_rounds_record_their_page_cache_state(scratch: Path) -> None:
    reference = bench.write_reference(bench.workload("transformer", 2**20), scratch / "t.pt")
    warm = bench.fresh("torch_zip:load", reference, reference)
    cold = bench.fresh("torch_zip:load", reference, reference, cold=True)
    if cold["resident_before"] is None or cold["resident_before"] > 0:
        pytest.skip(f"{scratch} cannot drop its page cache, or there is no mincore")
    assert warm["resident_before"] == 1.0 and cold["resident_before"] == 0.0


def test_a_result_pairs_each_round_with_its_own_limit_round(scratch: Path) -> None:
    """What the report and the gate read: per-round ratios from real rounds, each over its own limit."""
    import statistics

    reference = bench.write_reference(bench.workload("transformer", 2**20), scratch / "t.pt")
    op = bench.OPS["torch_zip:load"]
    assert bench.limit_for(op, "warm") == ("raw:read", "warm")
    rounds = [bench.fresh(op.id, reference, reference, limit=("raw:read", reference)) for _ in range(3)]
    limit_rounds = [r["limit"] for r in rounds]
    info = bench.result_info(
        op,
        rounds,
        workload="transformer",
        dtype="float32",
        cache="warm",
        limits=bench.physical_limits(2**20, scratch),
        size_mib=1,
        limit_rounds=limit_rounds,
    )
    ratios = [
        (r["bytes"] / r["seconds"]) / (lim["bytes"] / lim["seconds"])
        for r, lim in zip(rounds, limit_rounds, strict=True)
    ]
    assert info["pass_ratios"] == pytest.approx(ratios)
    assert info["ratio_median"] == pytest.approx(statistics.median(ratios))
    assert info["ratio_q1"] <= info["ratio_median"] <= info["ratio_q3"]
    assert info["child_seconds"] == [r["seconds"] for r in rounds]
    assert info["limit_rounds"] == [{"seconds": r["seconds"], "bytes": r["bytes"]} for r in limit_rounds]
    assert (info["limit_op"], info["limit_cache"], info["schema"]) == ("raw:read", "warm", bench.SCHEMA)


def test_results_record_how_the_kernel_reports_free_memory_to_a_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VM that hands freed memory back to its host spreads cold reads into new memory: the
    settings go with every result (docs/benchmarks/repeatability.md)."""
    from ckpt_compat.bench import child

    monkeypatch.setattr(child, "REPORTING", tmp_path / "absent")
    assert child.allocator_settings()["free_page_reporting"] == "none"
    reporting = tmp_path / "parameters"
    reporting.mkdir()
    monkeypatch.setattr(child, "REPORTING", reporting)
    assert child.free_page_reporting() == "on"
    (reporting / "page_reporting_order").write_text("9\n")
    (reporting / "min_free_ms").write_text("0\n")
    assert child.allocator_settings()["free_page_reporting"] == "min_free_ms 0, page_reporting_order 9"
