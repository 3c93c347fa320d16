"""PNG plots of stored benchmark runs: each format's complete load across torch versions, and the
peak memory of a load."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ckpt_compat.atomic import write_bytes
from ckpt_compat.bench.runs import FORMAT_LOADS, Run, index, short


def plot(runs: Sequence[Run], out: Path) -> list[Path]:
    """PNG plots of each format's complete load (``FORMAT_LOADS``): throughput across torch
    versions (one panel per workload and cache state), and peak memory over the load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = index(runs, "load")
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
    if not kinds:  # a run of other benchmarks only (`-k save`, a sweep): nothing to draw
        return []
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
            ax.set_xticks(x, [short(t) for t in torches])
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
            ax.bar([j + i * width for j in range(len(ops))], ys, width, label=f"torch {short(t)}")
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
