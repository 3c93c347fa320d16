"""The merged benchmark report across torch versions (Markdown, with the plots beside it).

Every figure comes from a result's stored rounds (see `result`): the rounds the fresh child
measured itself, not pytest-benchmark's own timer, which includes interpreter start.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ckpt_compat.atomic import write_text
from ckpt_compat.bench import spread
from ckpt_compat.bench.ops import OPS
from ckpt_compat.bench.plots import plot
from ckpt_compat.bench.runs import FORMAT_LOADS, Run, index, key, limit_figures, short
from ckpt_compat.bench.stats import Fit


def _gbps(r: dict[str, Any] | None, *, ratio: bool = True) -> str:
    """GB/s, then (in brackets) the median of the per-round ratios to the round's limit with half
    their inter-quartile range (schema 1: the ratio to the session's limit); ±x% after the GB/s is
    half the inter-quartile range of the times where it is 10% or more."""
    if r is None:
        return "n/a"
    spread = (r["q3_s"] - r["q1_s"]) / r["median_s"] if r.get("median_s") else 0.0
    text = f"{r['gbps']:.2f}" + (f" ±{spread / 2:.0%}" if spread >= 0.1 else "")
    if ratio and "ratio_median" in r:
        half = (r["ratio_q3"] - r["ratio_q1"]) / 2
        text += f" ({percent(r['ratio_median'])}" + (f" ±{percent(half)})" if len(r["pass_ratios"]) > 1 else ")")
    elif ratio:
        text += f" ({percent(r['ratio_to_limit'])})"
    return text


def percent(fraction: float) -> str:
    """Two significant digits below 10% (a LoRA-like load at 0.4% of the limit is not "0%")."""
    if fraction == 0 or abs(fraction) >= 0.1:
        return f"{fraction:.0%}"
    return f"{fraction * 100:.2g}%"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


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
    heads = [f"torch {short(t)}" for t in torches]
    lines = ["# ckpt-compat format benchmarks", ""]
    lines += [
        "Each figure is the median of fresh-process rounds, timed inside the child after its imports: "
        "GB/s (±x%: half the inter-quartile range of the times, where it is 10% or more), then in brackets "
        "the median of the **per-round ratios** to the machine's limit, ± half their inter-quartile range. "
        "The limit is a raw read of a file of the same size into fresh memory (loads), into preallocated "
        "memory (warm `into`), in the same page cache state (cold loads), or a write + fsync (saves), taken "
        "in each round's own child right after the operation (schema 2 files: in a child of its own in the "
        "same pass of the interleaved schedule). The ratio takes out a change of the machine's speed, as a "
        "whole and, for loads bound by the same memory and disk as the limit, from one second to the next. "
        "`touch` reads every byte. "
        "Lazy ops (an untouched mmap) are listed to show what they defer, not as loads. Peak RSS over op "
        "is the child's VmHWM growth during the operation (reset just before it; mapped file pages count "
        "once read); for `into` ops, on top of the preallocated state dict they fill.",
        "",
    ]
    for run in runs:
        first = next((r for r in run.results if r.get("kind") in ("load", "save")), run.results[0])
        lines.append(
            f"- torch {run.torch} (Python {first.get('python', '?')}): {run.machine}; {run.datetime}; "
            f"{first.get('size_mib', '?')} MiB workloads; THP {first.get('transparent_hugepage', '?')}; "
            f"THP_MEM_ALLOC_ENABLE={first.get('THP_MEM_ALLOC_ENABLE') or 'unset'}; "
            f"free page reporting {first.get('free_page_reporting', 'not recorded')}; "
            f"{first.get('torch_threads', '?')} threads; {_rounds_note(run)}; `{run.path.name}`"
        )
    lines.append("")
    lines += _limits_section(runs)
    loads = index(runs, "load")
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
        lines += [*_table(["op", "dtype", "cache", *heads, f"peak RSS over op, torch {short(last)}"], rows), ""]
    saves = index(runs, "save")
    if saves:
        lines += ["## Save (from memory, fsync included)", ""]
        keys = sorted(saves, key=lambda k: (k[3], _op_order(k[1], k[2])))
        rows = [[k[3], k[1], *(_gbps(saves[k].get(t)) for t in torches)] for k in keys]
        lines += [*_table(["workload", "format", *heads], rows), ""]
    lines += _fit_section(runs)
    lines += _harness_section(runs)
    if rows := spread.spread_rows(runs):
        lines += ["## Where the spread results' time went", "", spread.EXPLAINED, ""]
        lines += [*_table(spread.HEADER, rows), ""]
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
        f"## Per format: load + touch vs the raw-read limit (torch {short(last)}, float32)",
        "",
        "GB/s (median per-round ratio to the raw read of a file of the same size taken with each round, "
        "warm or cold as the column says).",
        "",
    ]
    return [*lines, *_table(["op", *(f"{k} {c}" for k, c in columns)], rows), ""]


HONEST = (("torch_zip", "mmap_touch"), ("safetensors_file", "load_touch"), ("torch_zip", "load"))


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
            f"{short(run.torch)} mmap+touch",
            f"{short(run.torch)} safetensors+touch",
            f"{short(run.torch)} torch.load",
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
            rows.append([short(run.torch), *(f"{limits.get(n, float('nan')):.2f}" for n in names)])
    lines = ["## The machine's limits, measured in each session (GB/s)", "", *_table(["torch", *names], rows), ""]
    taken = {run.torch: limit_figures(run) for run in runs}
    found = sorted({name for limits in taken.values() for name in limits})
    if not found:
        return lines if rows else []
    lines += [
        "The limits the results are judged against: a raw read or write of a file of the workload's size, "
        "taken with every round (schema 2: one round in every pass of the schedule); median GB/s over those "
        "rounds (± half the inter-quartile range).",
        "",
    ]
    cells = [
        [
            short(torch),
            *(f"{s.median:.2f} ±{s.spread / 2:.0%}" if (s := limits.get(name)) else "n/a" for name in found),
        ]
        for torch, limits in taken.items()
    ]
    return [*lines, *_table(["torch", *found], cells), ""]


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
    return lines + _table(["op", *(f"torch {short(r.torch)}" for r in runs)], rows) + [""]


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
                short(run.torch),
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


def write_report(runs: Sequence[Run], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(runs, out)
    report = out / "benchmarks.md"
    write_text(report, markdown(runs, plots) + "\n")
    return [report, *plots]
