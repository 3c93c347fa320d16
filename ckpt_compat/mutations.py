"""Corruptions of a saved checkpoint's bytes, as hypothesis strategies (public through
`ckpt_compat.strategies.corruptions`).

Structured mutators act where parsers look: truncation points, bit flips, spliced ranges, the
pickles inside a zip archive (torch.save, TorchScript, .pt2), the JSON header of a safetensors
file. Each shrinks towards the smallest change, so a failure is reported on the plainest file.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile

from hypothesis import strategies as st

KINDS = ("truncate", "flip", "splice", "pickle", "header")


@st.composite
def mutated(draw: st.DrawFn, data: bytes, kinds: tuple[str, ...] = KINDS) -> bytes:
    """One mutation of ``data`` (non-empty), of one of ``kinds``; a kind that does not apply to
    the file (a pickle mutation of a safetensors file) truncates it in half instead."""
    kind = draw(st.sampled_from(kinds))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
    if kind == "splice":
        at = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=64))
        return data[:at] + chunk + data[at + len(chunk) :]
    if kind == "pickle" and data[:2] == b"PK":
        return _mutate_pickle(draw, data)
    if kind == "header" and data[8:9] == b"{":
        return _mutate_header(draw, data)
    return data[: len(data) // 2]


def _mutate_pickle(draw: st.DrawFn, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            member = src.read(info)
            if info.filename.endswith(".pkl") and member:
                at = draw(st.integers(0, len(member) - 1))
                member = member[:at] + draw(st.binary(max_size=8)) + member[at + 1 :]
            dst.writestr(info, member)
    return out.getvalue()


def _mutate_header(draw: st.DrawFn, data: bytes) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    key = draw(st.sampled_from(sorted(header)))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
    value = draw(st.one_of(st.integers(-(2**63), 2**64), st.text(max_size=4), st.lists(st.integers(-5, 2**40))))
    if isinstance(header[key], dict):
        header[key][field] = value
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :]
