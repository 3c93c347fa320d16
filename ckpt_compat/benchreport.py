"""Benchmark results (pytest-benchmark JSON written by ``benchmarks/``): the merged report across
torch versions (Markdown and PNG plots) and the regression gate.

Every figure comes from ``extra_info`` (see ``ckpt_compat.bench.result_info``): the rounds the
fresh child measured itself, not pytest-benchmark's own timer, which includes interpreter start.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from ckpt_compat.atomic import write_bytes, write_text
from ckpt_compat.bench import OPS, Fit, Summary

SCHEMA = "ckpt-compat/bench/1"
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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchResultError(f"{path}: not JSON ({exc}); pass the file pytest --benchmark-json wrote") from exc
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise BenchResultError(f"{path}: not pytest-benchmark JSON (no 'benchmarks' list)")
    results = [
        b["extra_info"]
        for b in data["benchmarks"]
        if isinstance(b, dict) and isinstance(b.get("extra_info"), dict) and b["extra_info"].get("schema") == SCHEMA
    ]
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
    return sorted((read_run(p) for p in paths), key=lambda r: _version_key(r.torch))


def _version_key(text: str) -> tuple[Version, str]:
    try:
        return Version(text.split("+")[0]), text
    except InvalidVersion:
        return Version("0"), text


def key(result: dict[str, Any]) -> tuple[str, ...]:
    """Like with like: the same measurement on the same workload (torch version left out, so a
    baseline under one torch gates another)."""
    fields = ("kind", "format", "op", "workload", "dtype", "cache", "size_mib", "tensors")
    return tuple(str(result.get(k, "")) for k in fields)


# --- the report --------------------------------------------------------------------------------


def _short(torch: str) -> str:
    return torch.split("+")[0]


def _gbps(r: dict[str, Any] | None, *, ratio: bool = True) -> str:
    if r is None:
        return "n/a"
    spread = (r["q3_s"] - r["q1_s"]) / r["median_s"] if r.get("median_s") else 0.0
    text = f"{r['gbps']:.2f}"
    if ratio:
        text += f" ({r['ratio_to_limit']:.0%})"
    return text + (f" ±{spread / 2:.0%}" if spread >= 0.1 else "")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _index(runs: Sequence[Run], kind: str) -> dict[tuple[str, ...], dict[str, dict[str, Any]]]:
    """key -> torch -> result, for the results of ``kind``."""
    out: dict[tuple[str, ...], dict[str, dict[str, Any]]] = {}
    for run in runs:
        for r in run.results:
            if r.get("kind") == kind:
                out.setdefault(key(r), {})[run.torch] = r
    return out


def fits(run: Run) -> dict[str, Fit]:
    """``t = a·N + bytes/B`` per format:op, from the run's sweep results."""
    points: dict[str, list[tuple[int, int, float]]] = {}
    for r in run.results:
        if r.get("kind") == "sweep":
            points.setdefault(f"{r['format']}:{r['op']}", []).append((r["tensors"], r["bytes"], r["median_s"]))
    out = {}
    for op, rows in points.items():
        try:
            out[op] = Fit.of(rows)
        except ValueError:
            continue
    return out


def markdown(runs: Sequence[Run], plots: Sequence[Path] = ()) -> str:
    torches = [r.torch for r in runs]
    heads = [f"torch {_short(t)}" for t in torches]
    lines = ["# ckpt-compat format benchmarks", ""]
    lines += [
        "Each figure is the median of fresh-process rounds, timed inside the child after its imports: "
        "GB/s, then (in brackets) the fraction of the machine's limit measured in the same session "
        "(raw read into fresh memory for loads, into preallocated memory for `into`, a cold raw read for "
        "cold loads, write + fsync for saves); ±x% is half the inter-quartile range where it is 10% or "
        "more. `touch` reads every byte. Lazy ops (an untouched mmap) are listed to show what they "
        "defer, not as loads.",
        "",
    ]
    for run in runs:
        first = next((r for r in run.results if r.get("kind") in ("load", "save")), run.results[0])
        lines.append(
            f"- torch {run.torch} (Python {first.get('python', '?')}): {run.machine}; {run.datetime}; "
            f"{first.get('size_mib', '?')} MiB workloads; THP {first.get('transparent_hugepage', '?')}; "
            f"{first.get('torch_threads', '?')} threads; `{run.path.name}`"
        )
    lines.append("")
    lines += _limits_section(runs)
    loads = _index(runs, "load")
    lines += ["## The honest comparison: torch.load(mmap=True) + touch vs safetensors + touch", ""]
    honest = [
        k
        for k in loads
        if (k[1], k[2]) in {("torch_zip", "mmap_touch"), ("safetensors", "load_touch"), ("torch_zip", "load")}
    ]
    rows = []
    for k in sorted(honest, key=lambda k: (k[3], k[4], k[5] != "warm", k[1], k[2])):
        r0 = next(iter(loads[k].values()))
        rows.append(
            [k[3], k[4], k[5], f"{k[1]}:{k[2]}", f"{r0['tensors']:,}", *(_gbps(loads[k].get(t)) for t in torches)]
        )
    lines += [*_table(["workload", "dtype", "cache", "op", "tensors", *heads], rows), ""]
    for kind in ("transformer", "lora", "cnn"):
        keys = sorted((k for k in loads if k[3] == kind), key=lambda k: (k[4], k[5] != "warm", _op_order(k[1], k[2])))
        if not keys:
            continue
        r0 = next(iter(loads[keys[0]].values()))
        lines += [f"## Load, {kind}-like ({r0['bytes'] / 2**20:.0f} MiB, {r0['tensors']:,} tensors)", ""]
        last = torches[-1]
        rows = [
            [
                f"{k[1]}:{k[2]}" + ("" if next(iter(loads[k].values())).get("complete", True) else " (lazy)"),
                k[4],
                k[5],
                *(_gbps(loads[k].get(t)) for t in torches),
                _mib(loads[k].get(last)),
            ]
            for k in keys
        ]
        lines += [*_table(["op", "dtype", "cache", *heads, f"peak RSS over op, torch {_short(last)}"], rows), ""]
    saves = _index(runs, "save")
    if saves:
        lines += ["## Save (from memory, fsync included)", ""]
        keys = sorted(saves, key=lambda k: (k[3], _op_order(k[1], k[2])))
        rows = [[k[3], k[1], *(_gbps(saves[k].get(t)) for t in torches)] for k in keys]
        lines += [*_table(["workload", "format", *heads], rows), ""]
    lines += _fit_section(runs)
    lines += _harness_section(runs)
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def _op_order(fmt: str, op: str) -> int:
    ids = list(OPS)
    return ids.index(f"{fmt}:{op}") if f"{fmt}:{op}" in ids else len(ids)


def _mib(r: dict[str, Any] | None) -> str:
    return "n/a" if r is None else f"{r['peak_over_op_mib']:.0f} MiB"


def _limits_section(runs: Sequence[Run]) -> list[str]:
    names = (
        "memcpy_preallocated",
        "alloc_first_touch",
        "write",
        "write_fsync",
        "read_fresh",
        "read_preallocated",
        "read_cold",
    )
    rows = []
    for run in runs:
        limits = next((r["limits_gbps"] for r in run.results if "limits_gbps" in r), None)
        if limits:
            rows.append([_short(run.torch), *(f"{limits.get(n, float('nan')):.2f}" for n in names)])
    if not rows:
        return []
    return ["## The machine's limits, measured in each session (GB/s)", "", *_table(["torch", *names], rows), ""]


def _fit_section(runs: Sequence[Run]) -> list[str]:
    by_run = {run.torch: fits(run) for run in runs}
    ops = sorted({op for f in by_run.values() for op in f}, key=lambda o: _op_order(*o.split(":")))
    if not ops:
        return []
    lines = [
        "## Fixed cost per tensor vs bandwidth",
        "",
        "The same bytes in 1 to 8,192 tensors, warm cache; least-squares fit of `t = a·N + bytes/B`: "
        "`a` in µs per tensor, `B` in GB/s, R² of the fit.",
        "",
    ]
    rows = []
    for op in ops:
        cells = []
        for run in runs:
            fit = by_run[run.torch].get(op)
            cells.append(
                "n/a" if fit is None else f"a={fit.seconds_per_tensor * 1e6:.1f} µs, B={fit.gbps:.2f} (R² {fit.r2:.3f})"
            )
        rows.append([op, *cells])
    return lines + _table(["op", *(f"torch {_short(r.torch)}" for r in runs)], rows) + [""]


def _harness_section(runs: Sequence[Run]) -> list[str]:
    lines = ["## The harness's own cost", ""]
    rows = []
    for run in runs:
        harness = next((r for r in run.results if r.get("kind") == "harness"), None)
        steps = harness["gbps_by_step"] if harness else {}
        ratios = []
        loads = {key(r): r for r in run.results if r.get("kind") == "load"}
        for k, r in sorted(loads.items()):
            if k[1:3] == ("torch_zip", "verify"):
                plain = loads.get((k[0], "torch_zip", "load", *k[3:]))
                if plain:
                    ratios.append(f"{k[3]} {k[4]} {k[5]}: {r['median_s'] / plain['median_s']:.2f}x")
        fresh = next((r for r in run.results if r.get("kind") == "fresh_check"), None)
        rows.append(
            [
                _short(run.torch),
                *(
                    f"{steps[s]:.1f}" if s in steps else "n/a"
                    for s in ("memcpy", "compare_tensors", "digest_xxh3", "sha256")
                ),
                "; ".join(ratios) or "n/a",
                f"{fresh['fresh_gbps']:.2f} vs {fresh['same_process_gbps']:.2f}" if fresh else "n/a",
            ]
        )
    header = [
        "torch",
        "memcpy GB/s",
        "compare_tensors GB/s",
        "xxh3 digest GB/s",
        "sha256 GB/s",
        "verify's load + manifest check / torch.load",
        "torch.load GB/s: fresh process vs repeated in one process",
    ]
    return lines + _table(header, rows) + [""]


def plot(runs: Sequence[Run], out: Path) -> list[Path]:
    """PNG plots: load throughput per format across torch versions (one panel per workload and
    cache state), and peak memory over the load per format."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = _index(runs, "load")
    torches = [r.torch for r in runs]
    x = list(range(len(torches)))
    panels = [(kind, cache) for kind in ("transformer", "lora", "cnn") for cache in ("warm", "cold")]
    panels = [p for p in panels if any(k[3] == p[0] and k[5] == p[1] and k[4] == "float32" for k in loads)]
    written = []
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (kind, cache) in zip(axes[0], panels, strict=True):
        for k in sorted(loads, key=lambda k: _op_order(k[1], k[2])):
            if k[3] != kind or k[5] != cache or k[4] != "float32":
                continue
            if not next(iter(loads[k].values())).get("complete", True):
                continue
            ys = [loads[k][t]["gbps"] if t in loads[k] else float("nan") for t in torches]
            ax.plot(x, ys, marker="o", label=f"{k[1]}:{k[2]}")
        ax.set_xticks(x, [_short(t) for t in torches])
        ax.set_yscale("log")
        ax.set_title(f"{kind}-like, {cache} cache")
        ax.set_xlabel("torch")
        ax.set_ylabel("load + touch, GB/s (log)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    written.append(_save(fig, out / "throughput.png"))
    plt.close(fig)

    last = torches[-1]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), squeeze=False)
    for ax, kind in zip(axes[0], ("transformer", "lora", "cnn"), strict=True):
        keys = sorted(
            (k for k in loads if k[3] == kind and k[5] == "warm" and k[4] == "float32"),
            key=lambda k: _op_order(k[1], k[2]),
        )
        width = 0.8 / max(1, len(torches))
        for i, t in enumerate(torches):
            ys = [loads[k][t]["peak_over_op_mib"] if t in loads[k] else 0.0 for k in keys]
            ax.bar([j + i * width for j in range(len(keys))], ys, width, label=f"torch {_short(t)}")
        ax.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(keys))],
            [f"{k[1]}:{k[2]}" for k in keys],
            rotation=60,
            ha="right",
            fontsize=7,
        )
        size = next((loads[k][last]["bytes"] / 2**20 for k in keys if last in loads[k]), 0.0)
        if size:
            ax.axhline(size, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{kind}-like: peak RSS over the load (dashed: checkpoint size)")
        ax.set_ylabel("MiB")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out / "memory.png"))
    plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    """Write a figure atomically (a reader never sees half a PNG)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_bytes(path, buffer.getvalue())
    return path


def write_report(runs: Sequence[Run], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(runs, out)
    report = out / "benchmarks.md"
    write_text(report, markdown(runs, plots) + "\n")
    return [report, *plots]


# --- the gate ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One result in both runs: how much slower the current one is, and how noisy both are."""

    key: tuple[str, ...]
    baseline: Summary
    current: Summary

    @property
    def slowdown(self) -> float:
        return self.current.median / self.baseline.median - 1

    @property
    def noise(self) -> float:
        """The larger relative inter-quartile range of the two: a shift inside it is not a change."""
        return max(self.baseline.iqr / self.baseline.median, self.current.iqr / self.current.median)

    def regressed(self, max_slowdown: float) -> bool:
        return self.slowdown > max_slowdown and self.slowdown > self.noise

    def label(self) -> str:
        kind, fmt, op, workload, dtype, cache, size, extra = self.key
        if kind == "sweep":
            return f"sweep {fmt}:{op} [{extra} tensors]"
        return f"{kind} {fmt}:{op} [{workload} {dtype} {cache}, {size} MiB]"


def compare(baseline: Run, current: Run) -> tuple[list[Change], list[tuple[str, ...]]]:
    """Changes for every timed result in both runs, and the keys only one of them has."""
    before = {key(r): r for r in baseline.results if r.get("kind") in TIMED}
    after = {key(r): r for r in current.results if r.get("kind") in TIMED}
    changes = [
        Change(k, Summary.of(before[k]["child_seconds"]), Summary.of(after[k]["child_seconds"]))
        for k in sorted(before.keys() & after.keys())
    ]
    return changes, sorted(before.keys() ^ after.keys())
