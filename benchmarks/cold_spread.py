"""Why a cold eager ``torch.load`` spreads here: an experiment, not a benchmark suite.

    python benchmarks/cold_spread.py [--mib 256] [--rounds 8]

Takes rounds of a cold ``torch_zip:load`` (and of the cold raw read it is judged against) in fresh
children, alternating two conditions: as the suite takes them, and right after this process
touched and freed as much memory as the round will need (page cache + the copy: twice the file).
On a VM whose balloon reports free pages to the host (``VIRTIO_BALLOON_F_REPORTING``), memory that
has been free a while is no longer backed by the host, and its first touch faults there too,
billed to the guest as system time; memory freed a moment ago is still backed. If that is the
spread, the second condition is fast and tight. Prints every round with its system time.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from ckpt_compat import bench


def _touch_and_free(nbytes: int) -> None:
    block = torch.ones(nbytes // 8, dtype=torch.int64)  # every page written, so backed by the host
    del block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    scratch = bench.scratch_dir()
    reference = bench.write_reference(bench.workload("transformer", args.mib * 2**20), scratch / "t.pt")
    size = reference.stat().st_size
    found: dict[tuple[str, str], list[dict[str, float]]] = {}
    for i in range(args.rounds):
        for condition in (
            ("as in the suite", "memory touched first") if i % 2 else ("memory touched first", "as in the suite")
        ):
            for op_id in ("torch_zip:load", "raw:read"):
                if condition == "memory touched first":
                    _touch_and_free(3 * size)
                done = bench.fresh(op_id, reference, reference, cold=True)
                found.setdefault((op_id, condition), []).append(done)
                kernel = done["kernel"]
                system, faults = kernel.get("system_s", 0) * 1e3, kernel.get("minor_faults", 0)
                seconds = done["seconds"] * 1e3
                print(
                    f"{op_id:15} {condition:21} {seconds:7.1f} ms, system {system:6.1f} ms, minor faults {faults:,.0f}"
                )
    print()
    for (op_id, condition), rounds in sorted(found.items()):
        seconds = sorted(r["seconds"] * 1e3 for r in rounds)
        system = statistics.median(r["kernel"].get("system_s", 0) * 1e3 for r in rounds)
        print(
            f"{op_id:15} {condition:21} median {statistics.median(seconds):6.1f} ms, "
            f"range {seconds[0]:6.1f}-{seconds[-1]:6.1f} ms, median system {system:6.1f} ms"
        )
    bench.remove(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
