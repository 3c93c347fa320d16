"""Records of whole checkpoint objects, by key path: what a corpus manifest keeps of a training
checkpoint or a multi-object file (nested dicts, lists and tuples of tensors, numpy arrays and
plain values), and every difference of a loaded object against them.

A record key is the JSON list of the key path (``["optimizer", "state", 0, "exp_avg"]``): a
storage encoding of the typed path, decoded with ``json.loads``, never read as prose.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
import xxhash

from ckpt_compat.compare import record
from ckpt_compat.differences import Difference, KeyPath

PLAIN = (bool, int, float, str, type(None))
# A long sequence of plain values (Python's random state: 625 ints) is one record, by digest.
LONG_SEQUENCE = 16


# A real checkpoint has thousands of objects, not millions; a pickle can share one list so that a
# few hundred bytes hold 2**64 leaves, or nest thousands deep. Past these bounds it is refused.
MAX_RECORDS = 200_000
MAX_DEPTH = 100


class TooLarge(ValueError):
    """An object graph beyond MAX_RECORDS nodes or MAX_DEPTH levels (a pickle bomb, or not a checkpoint)."""


def object_records(obj: Any) -> dict[str, dict[str, Any]]:
    """Every leaf and container of ``obj`` by encoded key path. Raises TooLarge for a graph
    beyond the bounds above."""
    out: dict[str, dict[str, Any]] = {}
    _walk(obj, (), out)
    return out


def _walk(x: Any, path: KeyPath, out: dict[str, dict[str, Any]]) -> None:
    if len(out) >= MAX_RECORDS or len(path) > MAX_DEPTH:
        raise TooLarge(
            f"more than {MAX_RECORDS:,} objects or {MAX_DEPTH} levels of nesting (at {list(path)[:8]}...): "
            "a pickle bomb, or not a checkpoint"
        )
    out[json.dumps(list(path))] = leaf = _record(x)
    if leaf["kind"] == "dict":
        for k, v in x.items():
            _walk(v, (*path, _part(k)), out)
    elif leaf["kind"] in ("list", "tuple") and "digest" not in leaf:
        for i, v in enumerate(x):
            _walk(v, (*path, i), out)


def _part(key: Any) -> str | int:
    return key if isinstance(key, (str, int)) and not isinstance(key, bool) else repr(key)


def _record(x: Any) -> dict[str, Any]:
    if isinstance(x, torch.Tensor):
        return {"kind": "tensor", **record(x)}
    if isinstance(x, Mapping):
        return {"kind": "dict"}  # its keys are their own records
    if isinstance(x, (list, tuple)):
        kind = "tuple" if isinstance(x, tuple) else "list"
        if len(x) > LONG_SEQUENCE and all(type(v) in PLAIN for v in x):
            return {"kind": kind, "len": len(x), "digest": xxhash.xxh3_128_hexdigest(repr(x).encode())}
        return {"kind": kind, "len": len(x)}
    if type(x) in PLAIN:
        return {"kind": "value", "type": type(x).__name__, "repr": repr(x)}
    module = type(x).__module__
    if module == "numpy" or module.startswith("numpy."):
        import numpy as np

        if isinstance(x, np.ndarray):
            digest = xxhash.xxh3_128_hexdigest(np.ascontiguousarray(x).tobytes())
            return {"kind": "ndarray", "dtype": str(x.dtype), "shape": list(x.shape), "digest": digest}
        return {"kind": "value", "type": f"numpy.{type(x).__name__}", "repr": repr(x)}
    return {"kind": "object", "type": f"{module}.{type(x).__qualname__}"}


def compare_object_records(records: Mapping[str, Mapping[str, Any]], obj: Any, root: str) -> list[Difference]:
    """Differences between recorded ``records`` and the loaded ``obj``: per path its kind, dtype,
    shape and digest (tensors, arrays) or value, and missing and unexpected paths. Below a path
    that already differs (a dict that came back a list), nothing more is reported."""
    try:
        got = object_records(obj)
    except TooLarge as exc:  # a bomb in a foreign file: this cell fails, the others go on
        from ckpt_compat.errorinfo import ErrorInfo

        error = ErrorInfo.of(exc)
        return [Difference("raised", (root,), f"walking the loaded object raised {error}", error=error)]
    out: list[Difference] = []
    changed: list[tuple[Any, ...]] = []
    for key in sorted(set(records) | set(got), key=lambda k: len(json.loads(k))):
        path = tuple(json.loads(key))
        if any(path[: len(c)] == c for c in changed):
            continue
        want, have = records.get(key), got.get(key)
        if want == have:
            continue
        changed.append(path)
        out.append(_difference((root, *path), want, have))
    return out


def _difference(path: KeyPath, want: Mapping[str, Any] | None, have: Mapping[str, Any] | None) -> Difference:
    if have is None:
        return Difference("missing", path, "absent")
    if want is None:
        return Difference("unexpected", path, "not recorded")
    if have["kind"] != want["kind"] or have.get("type") != want.get("type"):
        return Difference("type", path, "another kind of value", expected=_what(want), actual=_what(have))
    if "dtype" in want and have["dtype"] != want["dtype"]:
        return Difference("dtype", path, "dtype differs", expected=want["dtype"], actual=have["dtype"])
    if "shape" in want and have["shape"] != want["shape"]:
        return Difference(
            "shape", path, "shape differs", expected=str(tuple(want["shape"])), actual=str(tuple(have["shape"]))
        )
    if "digest" in want and want.get("len") == have.get("len"):
        return Difference("bytes", path, f"digest {have['digest']} differs from the recorded {want['digest']}")
    return Difference("type", path, "another value", expected=_what(want), actual=_what(have))


def _path(root: str, key: str) -> KeyPath:
    return (root, *json.loads(key))


def _what(r: Mapping[str, Any]) -> str:
    if r["kind"] == "value":
        return f"{r['type']} {r['repr']}"[:200]
    if r["kind"] in ("tensor", "ndarray"):
        return f"{r['kind']} {r['dtype']} {tuple(r['shape'])}"
    return str(r.get("type") or f"{r['kind']} of {r.get('len')}")
