"""One benchmark round in a fresh interpreter, measured from inside: time after the imports, peak
RSS over the operation, and what the kernel did meanwhile (faults, waits, reclaim).

Every save and load round runs in a **fresh process**: eager loads are bound by page faults on new
memory, and repeating a load in one process reuses freed memory and flatters it. A new interpreter
per round, not a fork: children forked from a process that had imported torch measured warm mmap
loads 1.7 to 4.5x slower than exec'd ones here (cause not pinned down; gc.freeze() did not help).
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ckpt_compat.bench.ops import OPS, prepare_load, prepare_save
from ckpt_compat.bench.pagecache import fsync_files, make_cold, make_warm, resident_fraction, size_on_disk
from ckpt_compat.bench.workloads import nbytes

ARGV = ["ckpt_compat.bench.child", "--child"]  # what `isolation` runs: `_child` answers each request
# A real delay, for testing the gate: "<op id>=<fraction>" makes that op's rounds that much slower
# (a busy wait inside the clock, proportional to the op's own time).
DELAY_ENV = "CKPT_COMPAT_BENCH_DELAY"
# System-wide counters whose change during a round says where its time went (a slow cold round:
# more major faults or read-ahead misses? reclaim? compaction? another tenant's CPU?).
VMSTAT = (
    "pgpgin",
    "pgmajfault",
    "pgfault",
    "thp_fault_alloc",
    "thp_fault_fallback",
    "compact_stall",
    "pgscan_direct",
    "pgsteal_direct",
    "pgscan_kswapd",
    "workingset_refault_file",
)


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_kib() -> int:
    """This process's peak resident set size (VmHWM), in KiB."""
    return _status("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak covers what follows only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


REPORTING = Path("/sys/module/page_reporting/parameters")


def allocator_settings() -> dict[str, str]:
    """The settings that change eager-load results: transparent huge pages, torch's THP switch,
    and the kernel's free page reporting (`free_page_reporting`)."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return {
        "transparent_hugepage": thp.read_text().strip() if thp.exists() else "unknown",
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
        "torch_threads": str(torch.get_num_threads()),
        "free_page_reporting": free_page_reporting(),
    }


def free_page_reporting() -> str:
    """How this kernel hands free memory back to a host: ``page_reporting``'s parameters, or
    "none". In a VM that reports, a page handed back faults again on the host at its next first
    write, billed to the guest as system time: the spread of cold reads into new memory
    (docs/benchmarks/repeatability.md, ``benchmarks/cold_spread.py``)."""
    if not REPORTING.is_dir():
        return "none"
    names = ("min_free_ms", "page_reporting_order")  # min_free_ms: this VM's kernel only
    settings = [f"{name} {(REPORTING / name).read_text().strip()}" for name in names if (REPORTING / name).is_file()]
    return ", ".join(settings) or "on"


def _kernel_counters() -> dict[str, float]:
    """This process's faults, context switches, CPU and run-queue wait; the system's steal time and
    the `VMSTAT` counters. Missing files (not Linux) give fewer keys, never an error."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out: dict[str, float] = {
        "minor_faults": usage.ru_minflt,
        "major_faults": usage.ru_majflt,
        "voluntary_switches": usage.ru_nvcsw,
        "involuntary_switches": usage.ru_nivcsw,
        "user_s": usage.ru_utime,
        "system_s": usage.ru_stime,
    }
    try:
        out["runqueue_wait_s"] = int(Path("/proc/self/schedstat").read_text().split()[1]) / 1e9
        cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        out["steal_s"] = int(cpu[8]) / os.sysconf("SC_CLK_TCK")
        for line in Path("/proc/vmstat").read_text().splitlines():
            name, value = line.split()
            if name in VMSTAT:
                out[name] = int(value)
    except (OSError, IndexError, ValueError):
        pass
    return out


def _delay(op_id: str) -> float:
    wanted = os.environ.get(DELAY_ENV, "")
    name, _, fraction = wanted.partition("=")
    return float(fraction) if name == op_id and fraction else 0.0


def run_op(op_id: str, path: str, reference: str, limit: tuple[str, str] | None = None) -> dict[str, Any]:
    """Run ``op_id`` once in this process and measure it: what a fresh child does.

    ``reference``: the torch_zip file of the workload (a save op saves what it holds; a load op
    reads its layout from ``<reference>.layout.json``). Returns seconds, bytes, tensor count, RSS,
    and the kernel counters' change over the operation. ``limit``: (raw op id, its file), measured
    the same way right after the operation, under ``"limit"``: the round's own limit, taken within
    a second of it in the same process (a limit round in another child, minutes away, shared none
    of this VM's second-to-second noise: docs/benchmarks/repeatability.md).
    """
    measured, result = _measure(op_id, path, reference)
    if limit is not None:
        # The operation's result stays alive meanwhile: the limit's fresh memory is new memory
        # too, not the pages the operation just freed.
        measured["limit"], _ = _measure(limit[0], limit[1], reference)
    del result
    return measured


def _measure(op_id: str, path: str, reference: str) -> tuple[dict[str, Any], Any]:
    """One timed ``op_id`` and what it returned (a load's state, kept alive by the caller)."""
    op = OPS[op_id]
    target = Path(path)
    delay = _delay(op_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecations (TorchScript, DCP) are for the report, not stderr
        if op.saves:
            timed: Any = prepare_save(op.format, torch.load(reference, weights_only=True), target)
        else:
            timed = prepare_load(op, target, reference)
        peak_reset = reset_peak_rss()
        rss_before = _status("VmRSS")
        counters = _kernel_counters()
        start = time.perf_counter()
        result = timed()
        if op.saves:
            fsync_files(target)
        if delay:
            until = time.perf_counter() + delay * (time.perf_counter() - start)
            while time.perf_counter() < until:
                pass
        seconds = time.perf_counter() - start
    after = _kernel_counters()
    if op.saves:
        done, size = 0, size_on_disk(target)
    else:
        done, size = len(result), nbytes(result)
    measured = {
        "seconds": seconds,
        "bytes": size,
        "tensors": done,
        "rss_before_kib": rss_before,
        "peak_rss_kib": peak_rss_kib(),
        "peak_rss_reset": peak_reset,
        "kernel": {k: round(after[k] - v, 6) for k, v in counters.items() if k in after},
    }
    return measured, result


def _prepare_cache(op_id: str, path: Path, cold: bool) -> float | None:
    """Put ``path`` in the state a round of ``op_id`` starts from; the fraction of it resident."""
    if OPS[op_id].saves:
        remove(path)
        return None
    if cold:
        make_cold(path)
    else:
        make_warm(path)
    return resident_fraction(path)


def fresh(
    op_id: str,
    path: Path,
    reference: Path,
    *,
    cold: bool = False,
    limit: tuple[str, Path] | None = None,
    timeout: float = 600,
) -> dict[str, Any]:
    """One round of ``op_id`` on ``path`` in a new ``python`` process. A load starts from the same
    page cache state every round (``make_cold`` or ``make_warm``); ``resident_before`` in its
    result is the fraction of the file's pages in the page cache just before the child starts. A
    save writes ``path`` (removed first, left for the caller). The clock starts after the imports.
    ``limit``: (raw op id, file), taken in the same child right after the operation (`run_op`),
    its file in the same cache state (a written limit file is removed after).
    """
    op = OPS.get(op_id)
    if op is None:
        raise ValueError(f"unknown op {op_id!r}; known: {', '.join(OPS)}")
    if limit is not None and limit[0] not in OPS:
        raise ValueError(f"unknown limit op {limit[0]!r}; known: {', '.join(OPS)}")
    resident = _prepare_cache(op_id, path, cold)
    limit_resident = None if limit is None else _prepare_cache(limit[0], limit[1], cold)
    result: dict[str, Any] = _in_new_python(op_id, path, reference, rounds=None, timeout=timeout, limit=limit)
    result["resident_before"] = resident
    if limit is not None:
        result["limit"]["resident_before"] = limit_resident
        if OPS[limit[0]].saves:
            remove(limit[1])
    return result


def _in_new_python(
    op_id: str,
    path: Path,
    reference: Path,
    *,
    rounds: int | None,
    timeout: float,
    limit: tuple[str, Path] | None = None,
) -> Any:
    """Run ``op_id`` in a new interpreter (`isolation`, no memory limit: workloads are large);
    one result, or a list of ``rounds``. A failure is one line."""
    from ckpt_compat.isolation import Failure, call_once

    request = {
        "op": op_id,
        "path": str(path),
        "reference": str(reference),
        "rounds": rounds,
        "limit": None if limit is None else [limit[0], str(limit[1])],
    }
    answer = call_once(ARGV, request, timeout=timeout, memory=None)
    if isinstance(answer, Failure):
        why = answer.message.rsplit(" | ", 1)[-1]
        raise RuntimeError(f"{op_id} of {path} failed in the child: {why}")
    return answer


def _child(request: dict[str, Any]) -> Any:
    """In the child: ``run_op`` once, or ``rounds`` times in this one process."""
    args = (request["op"], request["path"], request["reference"])
    if request["rounds"] is None:
        limit = request.get("limit")
        return run_op(*args, limit=None if limit is None else (str(limit[0]), str(limit[1])))
    return [run_op(*args) for _ in range(int(request["rounds"]))]


def same_process(op_id: str, path: Path, reference: Path, rounds: int, *, timeout: float = 600) -> list[float]:
    """Seconds of ``rounds`` repeats of a load in **one** new process (the page cache warm): what
    a benchmark that does not start a process per round measures. The first round is a fresh one."""
    results = _in_new_python(op_id, path, reference, rounds=rounds, timeout=timeout)
    return [r["seconds"] for r in results]


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        from ckpt_compat.isolation import serve

        serve(_child)
    else:
        sys.exit("usage: python -m ckpt_compat.bench.child --child (used by the benchmark runner)")
