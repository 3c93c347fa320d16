"""Stored benchmark runs (pytest-benchmark JSON written by ``benchmarks/``): reading them, and
indexing their results like with like across torch versions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_compat import versions
from ckpt_compat.bench.result import READABLE, check, upgrade
from ckpt_compat.bench.stats import GB, Summary

TIMED = ("load", "save", "sweep")  # kinds whose rounds are seconds, compared by the gate


class BenchResultError(ValueError):
    """A results file that is not ckpt-compat pytest-benchmark JSON: one line, names the file."""


@dataclass
class Run:
    """One results file: one pytest-benchmark session under one torch version."""

    path: Path
    torch: str
    machine: str
    datetime: str
    results: list[dict[str, Any]] = field(default_factory=list)


def machine_class(info: dict[str, Any]) -> str:
    """What makes two runs comparable: CPU model, core count, architecture (not the host name)."""
    cpu = info.get("cpu", {}) if isinstance(info.get("cpu"), dict) else {}
    brand = cpu.get("brand_raw") or info.get("processor") or "unknown CPU"
    cores = cpu.get("count", "?")
    return f"{brand}, {cores} cores, {info.get('machine', '?')}"


def read_run(path: Path) -> Run:
    """One pytest-benchmark JSON file written by our suites."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BenchResultError(f"{path}: cannot read it ({exc.strerror})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BenchResultError(f"{path}: not JSON ({exc}); pass the file pytest --benchmark-json wrote") from exc
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise BenchResultError(f"{path}: not pytest-benchmark JSON (no 'benchmarks' list)")
    results = []
    for b in data["benchmarks"]:
        if isinstance(b, dict) and isinstance(b.get("extra_info"), dict) and b["extra_info"].get("schema") in READABLE:
            try:
                results.append(check(upgrade(b["extra_info"])))
            except ValueError as exc:
                raise BenchResultError(f"{path}: benchmark {str(b.get('name'))!r:.80}: {exc}") from None
    if not results:
        raise BenchResultError(f"{path}: no ckpt-compat results in it (run `python -m pytest benchmarks`)")
    versions = sorted({str(r.get("torch")) for r in results})
    if len(versions) != 1:
        raise BenchResultError(f"{path}: results from several torch versions ({', '.join(versions)}); one per file")
    machine = data.get("machine_info", {})
    return Run(
        path,
        versions[0],
        machine_class(machine if isinstance(machine, dict) else {}),
        data.get("datetime", ""),
        results,
    )


def read_runs(paths: Iterable[Path]) -> list[Run]:
    """Runs in torch version order."""
    return sorted((read_run(p) for p in paths), key=lambda r: (versions.key(r.torch), r.torch))


def key(result: dict[str, Any]) -> tuple[str, ...]:
    """Like with like: the same measurement on the same workload (torch version left out, so a
    baseline under one torch gates another)."""
    fields = ("kind", "format", "op", "workload", "dtype", "cache", "size_mib", "tensors")
    return tuple(str(result.get(k, "")) for k in fields)


def short(torch: str) -> str:
    return versions.release(torch)


def index(runs: Sequence[Run], kind: str) -> dict[tuple[str, ...], dict[str, dict[str, Any]]]:
    """key -> torch -> result, for the results of ``kind``."""
    out: dict[tuple[str, ...], dict[str, dict[str, Any]]] = {}
    for run in runs:
        for r in run.results:
            if r.get("kind") == kind:
                out.setdefault(key(r), {})[run.torch] = r
    return out


# Each format's complete load: what a user of that format waits for before every byte is in memory.
FORMAT_LOADS = (
    "torch_zip:load",
    "torch_zip:mmap_touch",
    "torch_legacy:load",
    "torch_module:load",
    "safetensors_file:load_touch",
    "dcp:into",
    "torchscript_script:load",
    "torch_export:load",
)


def limit_figures(run: Run) -> dict[str, Summary]:
    """GB/s of each limit over the run (``raw:read warm``, ...), from the limit rounds its results
    carry (in a schema 2 file one round served every result of its pass: each is counted once)."""
    rounds: dict[str, set[tuple[float, int]]] = {}
    for r in run.results:
        for limit in r.get("limit_rounds") or []:
            name = f"{r['limit_op']} {r['limit_cache']}".removesuffix(" -")
            rounds.setdefault(name, set()).add((limit["seconds"], limit["bytes"]))
    return {name: Summary.of(b / GB / s for s, b in found) for name, found in sorted(rounds.items())}
