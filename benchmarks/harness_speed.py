"""How long the harness itself takes, as a user runs it: wall seconds of each command, measured
one after another on this machine, printed as a table (and written as JSON with ``--json``).

    python benchmarks/harness_speed.py                 # run (--jobs 1 and default), produce, verify, security
    python benchmarks/harness_speed.py --pytest        # ... and the test suite
    python benchmarks/harness_speed.py --only run      # one of them

Nothing here asserts a time: the figures are for the README and for whoever changes the harness.
Run it on an otherwise idle machine; every command runs in a fresh interpreter, as a user's would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(scratch: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "ckpt_compat.cli"]
    corpus = scratch / "corpus"
    return {
        "run": [*cli, "run", "-q", "--out", str(scratch / "run")],
        "run --jobs 1": [*cli, "run", "-q", "--jobs", "1", "--out", str(scratch / "run1")],
        "produce": [*cli, "produce", "-q", "--out", str(corpus)],
        "verify fixtures + corpus": [*cli, "verify", str(corpus), "--trust", "-q", "--out", str(scratch / "v.json")],
        "security": [*cli, "security", "--out", str(scratch / "security.json")],
        # The README's test command.
        "pytest": [sys.executable, "-m", "pytest", "-n", "auto", "--dist", "loadfile", "-q", "-p", "no:cacheprovider"],
    }


def _cpu_of_children() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def measure(names: list[str]) -> dict[str, dict[str, float]]:
    """Each command's wall seconds, and the CPU seconds of every process it waited for (its workers
    and their servers; what a machine shared with other work pays)."""
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ckpt-compat-speed-") as tmp:
        commands = _commands(Path(tmp))
        print(f"{'command':<28} {'wall':>9} {'CPU':>9}")
        for name in names:
            started, cpu = time.perf_counter(), _cpu_of_children()
            done = subprocess.run(commands[name], cwd=ROOT, capture_output=True, text=True)
            figures[name] = {
                "wall": round(time.perf_counter() - started, 1),
                "cpu": round(_cpu_of_children() - cpu, 1),
            }
            if done.returncode != 0:
                sys.exit(f"{name}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
            print(f"{name:<28} {figures[name]['wall']:>7.1f} s {figures[name]['cpu']:>7.1f} s", flush=True)
    return figures


def machine() -> dict[str, object]:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"torch": torch.__version__, "python": platform.python_version(), "cores": cores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pytest", action="store_true", help="also time `python -m pytest`")
    parser.add_argument("--only", choices=list(_commands(Path())), action="append", help="time only these")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    names = args.only or [n for n in _commands(Path()) if n != "pytest" or args.pytest]
    where = machine()
    print(f"torch {where['torch']}, Python {where['python']}, {where['cores']} usable cores")
    figures = measure(names)
    if args.json:
        args.json.write_text(json.dumps({"machine": where, "seconds": figures}, indent=1) + "\n")


if __name__ == "__main__":
    main()
