"""What an exception was, typed: its class, its whole message, the global a safe unpickler
refused, and the error it wraps. A cell keeps this instead of a line of text, so a known issue
is matched on the exception type and message as raised, and reports cut nothing short.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# How torch's weights_only unpickler names a global it refuses, across releases 2.0-2.15.
_REFUSED_GLOBAL = re.compile(
    r"(?:Unsupported global: GLOBAL|Unsupported class|Trying to load unsupported GLOBAL) ?([\w.]+)"
)


def one_line(text: str) -> str:
    """``text`` on one line, colour codes removed; nothing is cut."""
    return " ".join(_ANSI.sub("", text).split())


def entry_point(ep: Any) -> str:
    """A plugin's entry point as an error names it: its name, its target and the distribution
    that ships it (the package to fix or uninstall)."""
    dist = getattr(getattr(ep, "dist", None), "name", None)
    return f"entry point {ep.name!r} = {ep.value!r}" + (f" of {dist}" if dist else "")


def does_not_load(ep: Any, exc: BaseException) -> str:
    """Why a plugin is left out: its entry point, what loading it raised, and what to do."""
    return (
        f"{entry_point(ep)} does not load ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); fix or "
        "uninstall the package that provides it"
    )


def shown(text: str) -> str:
    """``text`` with every character that would break or fake a line of output (a newline, a
    carriage return, an escape sequence, any other unprintable) written as its escape: a file's or
    a zip member's name is data, and must not print a line of its own ("x\\n  verdict: ok")."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def printable(text: str) -> str:
    """``text`` (a message, a name from a file) as part of one line of a log: whitespace runs
    collapsed (`one_line`), anything else unprintable escaped (`shown`)."""
    return shown(one_line(text))


def markdown(text: str, limit: int = 300) -> str:
    """``text`` as data in a line of Markdown (a report, a matrix, a GitHub step summary): one
    line (`printable`), and none of what Markdown reads as structure: a table cell's end (``|``), a
    code span (`` ` ``), an escape (``\\``) or HTML (``<``: GitHub renders some, and an open
    comment, ``<!--``, hides the rest of the page). Cut to ``limit``: for display only."""
    escaped = printable(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return short(escaped.replace("<", "&lt;"), limit)


def refused_global(message: str) -> str | None:
    """The global torch's safe unpickler refused, named in its error message, if any."""
    found = _REFUSED_GLOBAL.search(message)
    return found.group(1) if found else None


@dataclass(frozen=True)
class ErrorInfo:
    type: str  # the exception's class name: RuntimeError, KeyError, Unsupported, CheckpointException, ...
    message: str  # its whole message, on one line
    refused_global: str | None = None
    cause: ErrorInfo | None = None  # what it wraps: a rank's error inside CheckpointException, ...

    @classmethod
    def of(cls, exc: BaseException, *, cause: BaseException | None = None) -> ErrorInfo:
        """From a live exception. ``cause`` defaults to the exception's own ``__cause__``."""
        inner = cause if cause is not None else exc.__cause__
        wrapped = cls.of(inner) if inner is not None and inner is not exc else None
        message = one_line(str(exc))
        # A refusal re-raised in other words still names the global the unpickler refused.
        refused = refused_global(message) or (wrapped.refused_global if wrapped else None)
        return cls(type(exc).__name__, message, refused, wrapped)

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type

    def chain(self) -> list[ErrorInfo]:
        """This error, then what it wraps, outermost first."""
        out: list[ErrorInfo] = []
        at: ErrorInfo | None = self
        while at is not None:
            out.append(at)
            at = at.cause
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.refused_global:
            out["refused_global"] = self.refused_global
        if self.cause is not None:
            out["cause"] = self.cause.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ErrorInfo:
        if not isinstance(data, Mapping) or not isinstance(data.get("type"), str):
            raise ValueError(f"an error needs a type, got {data!r}")
        message = data.get("message", "")
        if not isinstance(message, str):
            raise ValueError(f"an error message is text, got {message!r}")
        refused = data.get("refused_global")
        return cls(
            data["type"],
            message,
            refused if isinstance(refused, str) else None,
            cls.from_json(data["cause"]) if data.get("cause") is not None else None,
        )


def short(text: str, limit: int = 400) -> str:
    """For terminals and table cells only: never for anything that is judged."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
