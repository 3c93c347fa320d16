"""The static pickle scan: the globals a pickle names, resolved without running it."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ckpt_compat.picklescan import (
    UNRESOLVED,
    Global,
    add_safe_globals_call,
    allowed_globals,
    scan,
    scan_archive,
    weights_only_refusals,
)
from tests.faults import deflated


class _Calls:
    def __reduce__(self) -> tuple[object, ...]:
        return (print, ("never printed",))


@pytest.mark.parametrize("protocol", range(6))
def test_globals_are_found_in_every_protocol(protocol: int) -> None:
    found = scan(pickle.dumps({"a": _Calls(), "b": OrderedDict()}, protocol=protocol))
    assert found.error is None
    assert "builtins.print" in found.globals and "collections.OrderedDict" in found.globals
    assert found.calls >= 1


def test_stack_global_operands_from_the_memo_are_resolved() -> None:
    # STACK_GLOBAL whose module and name strings come back from the memo (BINGET), not literals.
    data = (
        b"\x80\x04\x8c\x08builtins\x94\x8c\x05print\x94\x93\x94"  # builtins.print, memoised as 0, 1, 2
        b"h\x00h\x01\x93"  # the same two strings again, from the memo
        b"\x8c\x01x\x85R."
    )
    found = scan(data)
    assert found.error is None and found.globals == ["builtins.print"]


def test_a_global_computed_at_load_time_is_unresolved() -> None:
    # The module name is the result of a call, so a static scan cannot know it.
    data = b"\x80\x04\x8c\x08builtins\x8c\x03str\x93\x8c\x02os\x85R\x8c\x06system\x93."
    found = scan(data)
    assert UNRESOLVED in found.globals and found.unresolved


def test_python2_names_are_mapped_as_the_unpickler_maps_them() -> None:
    found = scan(b"\x80\x02c__builtin__\nset\nq\x00]\x85R.")
    assert found.globals == ["builtins.set"]


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_or_garbled_pickles_are_errors(cut: int) -> None:
    data = pickle.dumps({"weights": [1, 2, 3]}, protocol=2)
    assert scan(data[:cut]).error is not None
    assert scan(b"\xff\xfe\x00").error is not None


def test_persistent_ids_of_torch_save_are_read_as_literals() -> None:
    import zipfile

    buffer = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buffer)
    archive = zipfile.ZipFile(buffer)
    found = scan(archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl"))))
    (pid,) = found.persistent_ids
    assert pid[0] == "storage" and isinstance(pid[1], Global) and pid[3:] == ("cpu", 3)


def test_refusals_follow_torchs_own_allowlist() -> None:
    allowed = allowed_globals()
    if allowed is None:
        pytest.skip(f"torch {torch.__version__} does not publish its weights_only allowlist")
    found = scan(pickle.dumps({"a": _Calls(), "b": OrderedDict()}, protocol=2))
    assert weights_only_refusals([found]) == ["builtins.print"]
    assert add_safe_globals_call(["builtins.print"]) == (
        "import builtins; torch.serialization.add_safe_globals([builtins.print])"
    )


def test_the_model_matches_pickletools_on_real_checkpoints() -> None:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2), "n": 3}, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    offset = 0
    for _ in range(5):  # the legacy format's five pickles, one after the other
        found = scan(data, start=offset)
        assert found.error is None
        ops = list(pickletools.genops(io.BytesIO(data[offset:])))
        assert found.opcodes == len(ops)
        offset = found.end


def test_a_member_is_scanned_as_a_stream_and_a_decompression_bomb_is_an_error(tmp_path: Path) -> None:
    """A member is read as far as its pickle goes and on to its CRC, in chunks (it was read whole,
    and one over 2 GiB was skipped: a .pt2 whose hostile pickle was padded past that, deflated to a
    few MiB, went unscanned and reached torch.export.load untrusted). A member that would expand
    over 100 times is an error, never read."""
    from ckpt_compat.trust import pickled_refusals

    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(3), "step": OrderedDict(a=1)}, plain)
    stored = scan_archive(plain)
    repacked = scan_archive(deflated(plain, tmp_path / "repacked.pt", padding=2**20))
    assert [s.globals for s in repacked.values()] == [s.globals for s in stored.values()]
    assert all(s.error is None for s in repacked.values())
    assert "collections.OrderedDict" in stored["plain/data.pkl"].globals

    bomb = deflated(plain, tmp_path / "bomb.pt", padding=64 * 2**20)
    assert bomb.stat().st_size < 2**20
    [error] = [s.error for s in scan_archive(bomb).values() if s.error]
    assert error.startswith("member plain/data.pkl would expand to 67,1") and "a decompression bomb" in error
    assert any("a decompression bomb" in r for r in pickled_refusals(bomb))  # an untrusted .pt2 is refused

    flipped = bytearray(plain.read_bytes())  # a byte of tensor data: no pickle reads it
    flipped[flipped.index(torch.ones(3).numpy().tobytes()) + 2] ^= 1
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):
        scan_archive(tmp_path / "flipped.pt")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_the_opcodes_weights_only_cannot_read_are_those_its_load_fails_on(protocol: int, tmp_path: Path) -> None:
    """`torch.save(..., pickle_protocol=4)` writes FRAME, MEMOIZE, STACK_GLOBAL: torch 2.0-2.13's
    weights_only unpickler implements none of them (pytorch/pytorch#118092), so `check` said "ok"
    of a file torch.load(weights_only=True) fails on. The probe of the running torch must agree
    with its real load, whichever way a release goes."""
    from ckpt_compat.picklescan import unreadable_opcodes, weights_only_opcodes

    path = tmp_path / "saved.pt"
    torch.save({"w": torch.ones(2), "names": ["a", "b"], "step": 3}, path, pickle_protocol=protocol)
    [scanned] = scan_archive(path).values()
    missing = unreadable_opcodes([scanned])
    try:
        torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        failed = str(exc)
    else:
        failed = ""
    implemented = weights_only_opcodes()
    assert implemented is not None and {"PROTO", "STOP", "BINPERSID", "REDUCE"} <= implemented
    operand = next((op.name for op in pickletools.opcodes if f"Unsupported operand {ord(op.code)}" in failed), None)
    assert (operand is not None) == bool(missing) and (operand is None or operand in missing), (failed, missing)
    if protocol == 2:
        assert missing == [] and failed == ""


def test_an_argument_declared_huge_is_read_through_not_held(tmp_path: Path) -> None:
    """A pickle declares a byte string's length in 9 bytes: one of 200 MiB (a sparse file here) is
    scanned past in chunks, never held; a global named by such a string is one no allowlist holds,
    and a text line (protocol 0) that long is an error, not a read of the rest of the file."""
    import struct
    import tracemalloc

    from ckpt_compat.picklescan import MAX_ARGUMENT

    huge = 200 * 2**20
    path = tmp_path / "huge.pkl"
    with open(path, "wb") as f:
        f.write(b"\x80\x04\x8e" + struct.pack("<Q", huge))  # PROTO 4, BINBYTES8 of 200 MiB
        f.seek(huge, os.SEEK_CUR)
        f.write(b"\x8d" + struct.pack("<Q", huge))  # BINUNICODE8 of 200 MiB: a module name
        f.seek(huge, os.SEEK_CUR)
        f.write(b"\x8c\x03foo\x93.")  # SHORT_BINUNICODE "foo", STACK_GLOBAL, STOP
    tracemalloc.start()
    try:
        with open(path, "rb") as stream:
            found = scan(stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found.error is None and found.end == path.stat().st_size
    assert found.globals == ["<an argument too long to read>.foo"]
    assert peak < 8 * 2**20 < MAX_ARGUMENT < huge
    os.truncate(path, 2**20)
    with open(path, "rb") as stream:
        assert "expected 209715200 bytes in a bytes8, but only 0 remain" in (scan(stream).error or "")
    path.write_bytes(b"cos\n" + b"x" * (MAX_ARGUMENT + 1) + b"\n.")  # GLOBAL with a 64 MiB line
    assert "a text argument longer than 67,108,864 bytes" in (scan(path.read_bytes()).error or "")
