"""A safetensors file's header held to safetensors' own rules, read from its bytes alone
(`inspection`, ``check FILE``): what safetensors' reader refuses is broken, what it takes is not
(a differential test over header edits holds the two together)."""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path
from typing import Any

from ckpt_compat.inspection import Inspection

MAX_SAFETENSORS_HEADER = 100 * 2**20  # the limit safetensors itself enforces
# Bits per element of each safetensors dtype (safetensors 0.6+, the FNUZ floats 0.7+; F4 and F6
# are packed), every name safetensors 0.8's reader takes.
_SAFETENSORS_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64,
    "I64": 64, "U64": 64,
}  # fmt: skip


def inspect_safetensors(path: Path, size: int) -> Inspection:
    """safetensors' own header rules: a JSON header of at most 100 MB, each tensor's offsets in
    range, contiguous from 0 with no gap or overlap, and exactly numel x itemsize bytes."""
    result = Inspection(path, "a safetensors file", "safetensors")
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > min(MAX_SAFETENSORS_HEADER, size - 8):
            result.problems.append(f"the header claims {length:,} bytes; the file has {size - 8:,} after its size")
            return result
        raw = f.read(length)
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        result.problems.append(f"the header is not valid JSON ({exc})")
        return result
    if not isinstance(header, dict):
        result.problems.append("the header is not a JSON object")
        return result
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        result.problems.append(f"__metadata__ {metadata!r:.80} is not a map of strings to strings")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    result.description = f"a safetensors file with {len(tensors)} tensor(s)"
    result.tensor_names = list(tensors)
    spans = []
    for key, meta in tensors.items():
        problem, span = _tensor_problem(key, meta)
        if problem:
            result.problems.append(problem)
        elif span:
            spans.append((*span, key))
    end = 0
    for begin, stop, key in sorted(spans):
        if begin != end:
            result.problems.append(f"{key}: starts at byte {begin}, not {end} (a gap or an overlap)")
        end = max(end, stop)
    if end != size - 8 - length:
        result.problems.append(f"the tensors cover {end:,} bytes; the data section has {size - 8 - length:,}")
    return result


@functools.cache
def _safetensors_reads(dtype: str) -> bool:
    """Whether the installed safetensors reads ``dtype`` (0.4 lacks the float8 FNUZ, F8_E8M0, F4
    and F6 names): asked of its own header parser, on eight elements of it; True without it."""
    try:
        from safetensors import deserialize
    except ImportError:
        return True
    size = _SAFETENSORS_BITS[dtype]  # eight elements take as many bytes as one takes bits
    header = json.dumps({"x": {"dtype": dtype, "shape": [8], "data_offsets": [0, size]}}).encode()
    try:
        deserialize(struct.pack("<Q", len(header)) + header + bytes(size))  # type: ignore[no-untyped-call]
    except Exception:
        return False
    return True


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _tensor_problem(key: str, meta: Any) -> tuple[str, tuple[int, int] | None]:
    # safetensors' reader ignores other fields of an entry, as a JSON decoder of its struct does.
    if not isinstance(meta, dict) or not {"dtype", "shape", "data_offsets"} <= set(meta):
        return f"{key}: a tensor entry needs dtype, shape and data_offsets", None
    # Any JSON can stand in a damaged header: a dtype that is a list or an object is unknown too.
    bits = _SAFETENSORS_BITS.get(meta["dtype"]) if isinstance(meta["dtype"], str) else None
    shape, offsets = meta["shape"], meta["data_offsets"]
    if bits is None:
        return f"{key}: unknown dtype {meta['dtype']!r}", None
    if not _safetensors_reads(meta["dtype"]):
        return f"{key}: dtype {meta['dtype']} is newer than the installed safetensors reads; upgrade it", None
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):  # true is no integer
        return f"{key}: shape {shape!r} is not a list of non-negative integers", None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        return f"{key}: data_offsets {offsets!r} is not [begin, end]", None
    begin, stop = offsets
    numel = 1
    for d in shape:
        numel *= d
    if (numel * bits) % 8:  # a packed dtype's tensor ends inside a byte: safetensors refuses to slice it
        return f"{key}: {meta['dtype']} {shape} is {numel * bits} bits, not a whole number of bytes", None
    need = numel * bits // 8
    if not 0 <= begin <= stop or stop - begin != need:
        return f"{key}: data_offsets {offsets} hold {stop - begin} bytes; {meta['dtype']} {shape} needs {need}", None
    return "", (begin, stop)
