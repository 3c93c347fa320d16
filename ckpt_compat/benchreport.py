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

from ckpt_compat import versions
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
    return sorted((read_run(p) for p in paths), key=lambda r: (versions.key(r.torch), r.torch))


def key(result: dict[str, Any]) -> tuple[str, ...]:
    """Like with like: the same measurement on the same workload (torch version left out, so a
    baseline under one torch gates another)."""
    fields = ("kind", "format", "op", "workload", "dtype", "cache", "size_mib", "tensors")
    return tuple(str(result.get(k, "")) for k in fields)


# --- the report --------------------------------------------------------------------------------


def _short(torch: str) -> str:
    return versions.release(torch)


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
        "defer, not as loads. Peak RSS over op is the child's VmHWM growth during the operation (reset "
        "just before it; mapped file pages count once read); for `into` ops, on top of the preallocated "
        "state dict they fill.",
        "",
    ]
    for run in runs:
        first = next((r for r in run.results if r.get("kind") in ("load", "save")), run.results[0])
        lines.append(
            f"- torch {run.torch} (Python {first.get('python', '?')}): {run.machine}; {run.datetime}; "
            f"{first.get('size_mib', '?')} MiB workloads; THP {first.get('transparent_hugepage', '?')}; "
            f"THP_MEM_ALLOC_ENABLE={first.get('THP_MEM_ALLOC_ENABLE') or 'unset'}; "
            f"{first.get('torch_threads', '?')} threads; {_rounds_note(run)}; `{run.path.name}`"
        )
    lines.append("")
    lines += _limits_section(runs)
    loads = _index(runs, "load")
    lines += _per_format_section(runs, loads)
    lines += _honest_section(runs, loads)
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


def _rounds_note(run: Run) -> str:
    """How the load rounds were taken, and the page cache they started from (mincore)."""
    loads = [r for r in run.results if r.get("kind") == "load"]
    seeds = {r["schedule"]["seed"] for r in loads if r.get("schedule", {}).get("interleaved_rounds")}
    note = f"load rounds interleaved (seed {', '.join(map(str, sorted(seeds)))})" if seeds else "rounds back to back"
    resident = {
        cache: [f for r in loads if r.get("cache") == cache for f in r.get("resident_before") or [] if f is not None]
        for cache in ("warm", "cold")
    }
    if not resident["warm"] and not resident["cold"]:
        return note + ", page cache not recorded"
    warm = f"warm rounds from >= {min(resident['warm']):.1%} resident" if resident["warm"] else ""
    cold = f"cold from <= {max(resident['cold']):.1%}" if resident["cold"] else ""
    return ", ".join(x for x in (note, warm, cold) if x)


# Each format's complete load: what a user of that format waits for before every byte is in memory.
FORMAT_LOADS = (
    "torch_zip:load",
    "torch_zip:mmap_touch",
    "torch_legacy:load",
    "torch_module:load",
    "safetensors:load_touch",
    "dcp:into",
    "torchscript:load",
    "torch_export:load",
)


def _per_format_section(runs: Sequence[Run], loads: dict[tuple[str, ...], dict[str, dict[str, Any]]]) -> list[str]:
    """One line per format: its complete load as GB/s and fraction of the raw-read limit, newest torch."""
    last = runs[-1].torch
    columns = [(kind, cache) for kind in ("transformer", "lora", "cnn") for cache in ("warm", "cold")]
    found: dict[tuple[str, ...], dict[str, Any] | None] = {
        (k[1], k[2], k[3], k[5]): v.get(last) for k, v in loads.items() if k[4] == "float32"
    }
    columns = [c for c in columns if any((*op.split(":"), *c) in found for op in FORMAT_LOADS)]
    rows = []
    for op in FORMAT_LOADS:
        cells = [_gbps(found.get((*op.split(":"), *c))) for c in columns]
        if any(c != "n/a" for c in cells):
            rows.append([op, *cells])
    if not rows:
        return []
    lines = [
        f"## Per format: load + touch vs the raw-read limit (torch {_short(last)}, float32)",
        "",
        "GB/s (fraction of the raw read of the same bytes into fresh memory, warm or cold as the column says).",
        "",
    ]
    return [*lines, *_table(["op", *(f"{k} {c}" for k, c in columns)], rows), ""]


HONEST = (("torch_zip", "mmap_touch"), ("safetensors", "load_touch"), ("torch_zip", "load"))


def _honest_section(runs: Sequence[Run], loads: dict[tuple[str, ...], dict[str, dict[str, Any]]]) -> list[str]:
    """torch.load(mmap=True) + touch vs safetensors + touch (and eager torch.load), per workload,
    dtype and cache state, side by side for every torch version."""
    cases = sorted(
        {(k[3], k[4], k[5]) for k in loads if (k[1], k[2]) in HONEST},
        key=lambda c: (
            ("transformer", "lora", "cnn").index(c[0]) if c[0] in ("transformer", "lora", "cnn") else 9,
            c[1] != "float32",
            c[1],
            c[2] != "warm",
        ),
    )
    if not cases:
        return []
    header = ["workload", "dtype", "cache", "tensors"]
    for run in runs:
        header += [
            f"{_short(run.torch)} mmap+touch",
            f"{_short(run.torch)} safetensors+touch",
            f"{_short(run.torch)} torch.load",
        ]
    rows = []
    for workload, dtype, cache in cases:
        found = {(k[1], k[2]): v for k, v in loads.items() if (k[3], k[4], k[5]) == (workload, dtype, cache)}
        tensors = next((r["tensors"] for v in found.values() for r in v.values()), 0)
        row = [workload, dtype, cache, f"{tensors:,}"]
        for run in runs:
            row += [_gbps(found.get(h, {}).get(run.torch)) for h in HONEST]
        rows.append(row)
    lines = [
        "## The honest comparison: torch.load(mmap=True) + touch vs safetensors + touch",
        "",
        "Both map the file and read every byte; eager `torch.load` for reference. GB/s (fraction of the "
        "raw read into fresh memory). Above 100% in a warm cache is no error: a mapped file is read in "
        "the page cache, with no copy into new memory, so it can beat `read()` into fresh memory.",
        "",
    ]
    return [*lines, *_table(header, rows), ""]


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
    """PNG plots of each format's complete load (``FORMAT_LOADS``): throughput across torch
    versions (one panel per workload and cache state), and peak memory over the load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = _index(runs, "load")
    torches = [r.torch for r in runs]
    x = list(range(len(torches)))
    style = {op: (f"C{i}", "osD^v<>p"[i]) for i, op in enumerate(FORMAT_LOADS)}

    def series(kind: str, cache: str) -> dict[str, dict[str, dict[str, Any]]]:
        return {
            f"{k[1]}:{k[2]}": v
            for k, v in loads.items()
            if (k[3], k[4], k[5]) == (kind, "float32", cache) and f"{k[1]}:{k[2]}" in style
        }

    kinds = [k for k in ("transformer", "lora", "cnn") if series(k, "warm")]
    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 3.6 * len(kinds)), squeeze=False)
    for row, kind in zip(axes, kinds, strict=True):
        for ax, cache in zip(row, ("warm", "cold"), strict=True):
            found = series(kind, cache)
            if not found:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{kind}-like, {cache}: not measured", ha="center", va="center")
                continue
            for op, by_torch in sorted(found.items(), key=lambda item: FORMAT_LOADS.index(item[0])):
                ys = [by_torch[t]["gbps"] if t in by_torch else float("nan") for t in torches]
                color, marker = style[op]
                ax.plot(x, ys, marker=marker, color=color, label=op)
            ax.set_xticks(x, [_short(t) for t in torches])
            ax.set_yscale("log")
            ax.set_title(f"{kind}-like, {cache} cache")
            ax.set_ylabel("GB/s, every byte read (log)")
            ax.grid(True, which="both", alpha=0.3)
    handles = [
        plt.Line2D([], [], color=c, marker=m, label=op)  # type: ignore[attr-defined]
        for op, (c, m) in style.items()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle("Load throughput per format across torch versions")
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    written = [_save(fig, out / "throughput.png")]
    plt.close(fig)

    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.8), squeeze=False)
    width = 0.8 / max(1, len(torches))
    for ax, kind in zip(axes[0], kinds, strict=True):
        found = series(kind, "warm")
        ops = [op for op in FORMAT_LOADS if op in found]
        for i, t in enumerate(torches):
            ys = [found[op][t]["peak_over_op_mib"] if t in found[op] else 0.0 for op in ops]
            ax.bar([j + i * width for j in range(len(ops))], ys, width, label=f"torch {_short(t)}")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ops))], ops, rotation=45, ha="right", fontsize=8)
        size = next((r["bytes"] / 2**20 for v in found.values() for r in v.values()), 0.0)
        ax.axhline(size, color="grey", linestyle="--", linewidth=1, label="checkpoint size")
        ax.set_title(f"{kind}-like, warm cache")
        ax.set_ylabel("peak RSS over the load, MiB")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Peak memory of a load, per format (dcp:into: on top of the preallocated model it fills)")
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
