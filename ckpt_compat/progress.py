"""Progress of a long command on stderr, and the time each of its phases took.

On a terminal each step rewrites one status line in place; in a log (CI) steps are silent unless
asked for (``--verbose``), so a log holds the phases and what went wrong, not 200 lines of specs.
Phase times go into the report (``run.phases``).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from ckpt_compat.errorinfo import shown


class Progress:
    def __init__(self, *, quiet: bool = False, verbose: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet, self.verbose = quiet, verbose
        self.live = not quiet and not verbose and self.stream.isatty()
        self.phases: dict[str, float] = {}
        self._status = False  # a status line is on screen, to be replaced

    def say(self, line: str) -> None:
        """A line worth keeping (a phase, a failure): shown unless quiet."""
        if self.quiet:
            return
        self._clear()
        print(shown(line), file=self.stream, flush=True)

    def step(self, line: str) -> None:
        """One step done: the status line on a terminal, a line of its own with verbose, else nothing."""
        if self.verbose:
            self.say(line)
        elif self.live:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r\033[K" + shown(line)[:width])
            self.stream.flush()
            self._status = True

    def _clear(self) -> None:
        if self._status:
            self.stream.write("\r\033[K")
            self._status = False

    @contextlib.contextmanager
    def phase(self, name: str, line: str = "") -> Iterator[None]:
        """Time the phase ``name`` (added to `phases`), saying ``line`` when it starts."""
        if line:
            self.say(line)
        started = time.perf_counter()
        try:
            yield
        finally:
            self._clear()
            self.phases[name] = round(self.phases.get(name, 0.0) + time.perf_counter() - started, 2)
