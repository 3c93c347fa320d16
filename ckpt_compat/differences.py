"""The typed difference: what every check finds and every report, matrix and gate reads.

Free of torch, so the commands that only read results (`report`, `gate`) do not import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from ckpt_compat.errorinfo import ErrorInfo

DifferenceKind = Literal[
    "missing",
    "unexpected",
    "persisted",  # a non-persistent buffer came back as a persistent state-dict entry
    "not_saved",  # a tensor outside the state dict (plain attribute, non-persistent buffer) that outputs need
    "load_state_dict",
    "type",
    "raised",  # the loaded model or program raised where the original ran
    "dtype",
    "shape",
    "stride",
    "bytes",
    "device",
    "aliasing",
]
# Which difference kinds make a cell's outcome `keys`, `mismatch` or `aliasing`.
KEY_KINDS = frozenset({"missing", "unexpected", "persisted", "not_saved", "load_state_dict"})
VALUE_KINDS = frozenset({"type", "raised", "dtype", "shape", "stride", "bytes", "device"})
KINDS: tuple[str, ...] = get_args(DifferenceKind)

PathPart = str | int
KeyPath = tuple[PathPart, ...]


def render_path(path: KeyPath) -> str:
    """``("forward", "rnn", 1, 0)`` -> ``forward['rnn'][1][0]``: the root, then every key."""
    if not path:
        return "?"
    root, *rest = path
    return str(root) + "".join(f"[{p!r}]" for p in rest)


@dataclass(frozen=True)
class Difference:
    """One difference, typed from the check that finds it to the report that renders it.

    ``path`` is the key path: a root (``state_dict``, ``manifest``, ``forward``, ``program``,
    ``load_state_dict(strict=True)``, ...) and then the keys and indices below it. For bytes,
    ``elements`` of ``total`` differ; for numeric data ``max_abs`` is the largest absolute
    difference and ``max_ulp`` the largest distance in units in the last place (both over the
    differing elements; None where they do not apply or were not measured, as for a digest).
    """

    kind: DifferenceKind
    path: KeyPath
    detail: str = ""
    block: str | None = None  # class of the block whose output or state this is
    elements: int | None = None
    total: int | None = None
    max_abs: float | None = None
    max_ulp: float | None = None
    expected: str | None = None  # dtype, shape, strides or type before ...
    actual: str | None = None  # ... and after
    error: ErrorInfo | None = None  # for ``raised``: what was raised

    @property
    def where(self) -> str:
        return render_path(self.path)

    @property
    def root(self) -> str:
        return str(self.path[0]) if self.path else ""

    def __str__(self) -> str:
        block = f"[{self.block}] " if self.block else ""
        seen = f" (expected {self.expected}, got {self.actual})" if self.expected or self.actual else ""
        return f"{self.where}: {self.kind}: {block}{self.detail}{seen}"

    def with_block(self, block: str) -> Difference:
        return replace(self, block=block)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "path": list(self.path), "detail": self.detail}
        for name in ("block", "elements", "total", "expected", "actual"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        for name in ("max_abs", "max_ulp"):
            if (value := getattr(self, name)) is not None:
                out[name] = value if math.isfinite(value) else str(value)  # JSON has no inf/nan
        if self.error is not None:
            out["error"] = self.error.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Difference:
        kind = data["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown difference kind {kind!r}")
        path = tuple(data["path"])
        if not all(isinstance(p, (str, int)) for p in path):
            raise ValueError(f"a key path holds strings and integers, got {data['path']!r}")
        return cls(
            kind,
            path,
            str(data.get("detail", "")),
            block=_opt(data, "block", str),
            elements=_opt(data, "elements", int),
            total=_opt(data, "total", int),
            max_abs=_float(data.get("max_abs")),
            max_ulp=_float(data.get("max_ulp")),
            expected=_opt(data, "expected", str),
            actual=_opt(data, "actual", str),
            error=ErrorInfo.from_json(data["error"]) if data.get("error") is not None else None,
        )


def _opt(data: Mapping[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ValueError(f"{name} must be a {kind.__name__}, got {value!r}")
    return value


def _float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)
