"""Do two benchmark runs agree? The repeatability bar of the published run, from the JSON alone.

    python benchmarks/repeatability.py A.json B.json [--markdown]

For every load result in both runs: the change of its median per-round ratio to its limit
(the figure that must repeat) and of its median time, and whether it repeats: a warm result within
5%, a cold one within 5% or within its own measured spread (the larger inter-quartile range of the
two runs' ratios, relative to the median). Prints one line per result, then the counts; exits 1
when a result does not repeat. Nothing is timed here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ckpt_compat.bench.gate import compare
from ckpt_compat.bench.runs import read_run

BAR = 0.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--markdown", action="store_true", help="a Markdown table instead of lines")
    args = parser.parse_args(argv)
    a, b = read_run(args.first), read_run(args.second)
    by_ratio, _ = compare(a, b)
    by_time = {c.key: c for c in compare(a, b, absolute=True)[0]}
    rows = []
    for c in by_ratio:
        if c.key[0] != "load" or c.measure != "ratio":
            continue
        cold = c.key[5] == "cold"
        change = -c.slowdown / (1 + c.slowdown)  # the ratio's own change, B against A
        spread = max(c.baseline.spread, c.current.spread)  # the rounds' own spread, not the gate's notch
        repeats = abs(change) <= BAR or (cold and abs(change) <= spread)
        rows.append((c.label(), cold, change, spread, by_time[c.key].slowdown, repeats))
    rows.sort(key=lambda r: -abs(r[2]))
    if args.markdown:
        print("| result | ratio change | ratio spread | time change | repeats |")
        print("|---|---|---|---|---|")
    for label, _, change, noise, time_change, repeats in rows:
        verdict = "yes" if repeats else "NO"
        if args.markdown:
            print(f"| {label} | {change:+.1%} | {noise:.1%} | {time_change:+.1%} | {verdict} |")
        else:
            print(f"{verdict:3} ratio {change:+6.1%} (spread {noise:5.1%}), time {time_change:+6.1%}  {label}")
    warm = [r for r in rows if not r[1]]
    cold = [r for r in rows if r[1]]
    print(
        f"\n{sum(r[5] for r in warm)} of {len(warm)} warm load ratios within {BAR:.0%}; "
        f"{sum(r[5] for r in cold)} of {len(cold)} cold ones within {BAR:.0%} or their spread "
        f"({sum(abs(r[2]) <= BAR for r in cold)} within {BAR:.0%}); by time: "
        f"{sum(abs(r[4]) <= BAR for r in rows)} of {len(rows)} within {BAR:.0%}"
    )
    return 0 if all(r[5] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
