"""What every ``ckpt-compat`` command shares: exit codes, the usage error, and the checks of
the arguments most commands take (--formats, --out, --expectations)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ckpt_compat.expectations import Expectations
    from ckpt_compat.formats import Format

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_MACHINE_CHANGED = 4  # bench-gate: the machine's own limits moved between the runs


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def select_formats(text: str | None) -> list[Format]:
    from ckpt_compat.formats import UnknownFormat, Unsupported, available_formats, parse_format_list

    if text is None:
        return available_formats()
    try:
        return parse_format_list(text)
    except (UnknownFormat, Unsupported) as exc:
        raise UsageError(f"--formats: {exc}") from None


def check_format_names(text: str | None) -> None:
    """The usage errors of ``--formats`` that need no availability: unknown or no names. A command
    with workers checks them while the workers start, before it waits for their answer on which
    formats are usable here."""
    from ckpt_compat.formats import UnknownFormat, named_formats

    if text is not None:
        try:
            named_formats(text)
        except UnknownFormat as exc:
            raise UsageError(f"--formats: {exc}") from None


def writable_dir(out: Path) -> Path:
    """Create ``out`` and prove it is writable before spending minutes on a run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror}); choose a writable directory") from None
    return out


def expectations(paths: list[Path]) -> Expectations:
    from ckpt_compat.expectations import Expectations, ExpectationsError, shipped

    try:
        return Expectations.load([*shipped(), *paths])
    except ExpectationsError as exc:
        raise UsageError(f"--expectations: {exc}") from None
