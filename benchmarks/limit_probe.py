"""Does a limit taken in the round's own child share the round's noise? An experiment, not a suite.

    python benchmarks/limit_probe.py [--mib 256] [--rounds 12] [--op torch_zip:load] [--cold]

Takes ``--rounds`` rounds of ``--op`` on a transformer-like file, each in a fresh child that also
measures the raw read limit right after the operation (what the suites do, `child.fresh(limit=)`),
and after each one the same limit in a child of its own (what schema 2's same-pass limits did, here
seconds rather than minutes away). Prints every round, then the correlation of the op's time with
each limit's and the relative inter-quartile range of the time and of both ratios: a limit that
shares the round's noise correlates with it and narrows the ratio. The figures in
docs/benchmarks/repeatability.md ("Limits taken in the round's own child") are its output.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from ckpt_compat import bench


def _relative_iqr(values: list[float]) -> float:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--op", default="torch_zip:load", choices=[op for op in bench.OPS if ":" in op])
    parser.add_argument("--cold", action="store_true", help="cold page cache (default: warm)")
    args = parser.parse_args(argv)
    op = bench.OPS[args.op]
    with tempfile.TemporaryDirectory(dir=bench.scratch_dir()) as scratch:
        d = Path(scratch)
        reference = bench.write_reference(bench.workload("transformer", args.mib * 2**20), d / "reference.pt")
        state = torch.load(reference, weights_only=True)
        path = (
            reference
            if op.format == "torch_zip"
            else bench.save_here(op.format, state, d / f"x{bench.suffix(op.format)}")
        )
        limit_file = bench.save_here(bench.RAW, state, d / f"limit{bench.suffix(bench.RAW)}")
        limit_op, _ = bench.limit_for(op, "cold" if args.cold else "warm")
        rows = []
        for _ in range(args.rounds):
            done = bench.fresh(op.id, path, reference, cold=args.cold, limit=(limit_op, limit_file))
            apart = bench.fresh(limit_op, limit_file, reference, cold=args.cold)
            rows.append((done["seconds"], done["limit"]["seconds"], apart["seconds"]))
            ms = [f"{x * 1e3:7.1f}" for x in rows[-1]]
            print(f"op {ms[0]} ms   limit in its child {ms[1]}   apart {ms[2]}")
    times, inside, apart = ([r[i] for r in rows] for i in range(3))
    print(
        f"correlation of the op's time with the limit's: in its child {statistics.correlation(times, inside):.2f}, "
        f"in a child of its own {statistics.correlation(times, apart):.2f}"
    )
    print(
        f"relative IQR: time {_relative_iqr(times):.3f}, ratio to the limit in its child "
        f"{_relative_iqr([t / x for t, x in zip(times, inside, strict=True)]):.3f}, ratio to the limit apart "
        f"{_relative_iqr([t / x for t, x in zip(times, apart, strict=True)]):.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
