"""Why a cold eager ``torch.load`` spreads here: an experiment, not a benchmark suite.

    python benchmarks/cold_spread.py [--mib 256] [--rounds 8] [--hold-reporting]

The slow rounds of a cold ``torch_zip:load`` (and of the cold raw read it is judged against) are
system time in the guest's first writes to new memory (``clear_page_erms`` zeroing a fresh page,
``_copy_to_iter`` filling it): the same instructions and the same number of faults as a fast round,
several times slower. This VM's kernel reports free memory to the host (``page_reporting``,
``min_free_ms`` 0: a freed 2 MiB block is handed back within one reporting pass), so a page that
was reported faults again on the host when the guest first writes it, which the guest bills as its
own system time. A round is slow when a reporting pass ran between the previous round freeing its
memory and this round allocating it.

Takes rounds in fresh children under two conditions, alternating: right after the previous round,
and after waiting for the next reporting pass. With ``--hold-reporting`` (root) a third condition
sets ``min_free_ms`` to 60 s for its rounds (freed memory is then reused before it is reported) and
puts the setting back. Prints every round with its system time and the memory reported since the round before it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ckpt_compat import bench
from ckpt_compat.bench.child import REPORTING

CONDITIONS = ("right after the last round", "after a reporting pass", "reporting held off")


def _counter(name: str) -> int:
    return int((REPORTING / name).read_text())


def _wait_for_pass(limit: float = 15.0) -> None:
    passes, until = _counter("passes"), time.monotonic() + limit
    while _counter("passes") == passes and time.monotonic() < until:
        time.sleep(0.05)


@contextmanager
def _held(hold: bool) -> Iterator[None]:
    if not hold:
        yield
        return
    setting = REPORTING / "min_free_ms"
    before = setting.read_text().strip()
    setting.write_text("60000")
    try:
        yield
    finally:
        setting.write_text(before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--hold-reporting", action="store_true", help="third condition: min_free_ms 60 s (root)")
    args = parser.parse_args(argv)
    if not REPORTING.is_dir():
        print(f"{REPORTING} does not exist: this kernel reports no free pages to a host; nothing to test")
        return 0
    conditions = CONDITIONS if args.hold_reporting else CONDITIONS[:2]
    scratch = bench.scratch_dir()
    reference = bench.write_reference(bench.workload("transformer", args.mib * 2**20), scratch / "t.pt")
    found: dict[tuple[str, str], list[float]] = {}
    last = _counter("reported_kib")
    for i in range(args.rounds):
        for condition in conditions[i % len(conditions) :] + conditions[: i % len(conditions)]:
            with _held(condition == "reporting held off"):
                for op_id in ("torch_zip:load", "raw:read"):
                    if condition == "after a reporting pass":
                        _wait_for_pass()
                    done = bench.fresh(op_id, reference, reference, cold=True)
                    # since the last round freed its memory: what this round's allocations may meet
                    now = _counter("reported_kib")
                    reported, last = now - last, now
                    system = done["kernel"].get("system_s", 0) * 1e3
                    found.setdefault((op_id, condition), []).append(system)
                    print(
                        f"{op_id:15} {condition:27} {done['seconds'] * 1e3:7.1f} ms, system {system:6.1f} ms, "
                        f"reported since the last round {reported / 1024:6.0f} MiB",
                        flush=True,
                    )
    print()
    for (op_id, condition), system in sorted(found.items()):
        system.sort()
        print(
            f"{op_id:15} {condition:27} system median {statistics.median(system):6.1f} ms, "
            f"range {system[0]:6.1f}-{system[-1]:6.1f} ms"
        )
    bench.remove(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
