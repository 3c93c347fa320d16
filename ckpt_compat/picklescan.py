"""What a pickle would import, read from its opcodes: nothing is unpickled, nothing is imported.

The opcode stream is run on a model of pickle's stack (each opcode's documented stack effect, from
`pickletools`), so a ``STACK_GLOBAL`` is resolved to the two strings it really pops, even when
they come from the memo. A ``STACK_GLOBAL`` whose operands are not literal strings, and the
copyreg extension opcodes, cannot be resolved statically; they are reported as such, and count as
unsafe. A broken stream (truncated, an unknown opcode, a stack that underflows) is reported too.

`weights_only_refusals` says which of the globals the running torch's ``weights_only=True``
unpickler would refuse, from torch's own allowlist (built in, and ``add_safe_globals``).
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import functools
import io
import os
import pickletools
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import IO, Any, cast

# Opcodes that push the string they carry: the operands of GLOBAL lookups.
_STRINGS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_CALLS = frozenset({"REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"})
UNRESOLVED = "<unresolved>"  # a global whose name the scan cannot read without running the pickle
MAX_OPCODES = 50_000_000  # a bound on work: a stream this long is reported, not scanned to the end


MAX_ARGUMENT = 64 * 2**20  # an opcode argument longer than this is skipped, not read (memory)
_UNREAD = b"<an argument too long to read>"


class _Unread(bytes):
    """An argument `_Bounded` skipped: as long as declared (pickletools checks the length), but
    holding only `_UNREAD`, which is what a string argument decodes to: a global named from it
    is one no allowlist holds."""

    def __new__(cls, length: int) -> _Unread:
        unread = super().__new__(cls, _UNREAD)
        unread.length = length
        return unread

    length: int

    def __len__(self) -> int:
        return self.length


class _Bounded:
    """A stream as `pickletools.genops` reads it, each argument bounded: one declared longer than
    `MAX_ARGUMENT` bytes (a pickle can declare a 50 GiB BINBYTES8 in 9 bytes) is read through in
    1 MiB chunks and dropped, never held; a text line (protocol 0) longer than that is an error."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def read(self, n: int = -1) -> bytes:
        if n <= MAX_ARGUMENT:  # genops reads an opcode, or an argument of a length it read
            return self.stream.read(n)
        left = n
        while left > 0 and (chunk := self.stream.read(min(left, 1 << 20))):
            left -= len(chunk)
        return _Unread(n) if left <= 0 else b""  # short: pickletools says how many bytes remain

    def readline(self) -> bytes:
        line = self.stream.readline(MAX_ARGUMENT + 1)
        if len(line) > MAX_ARGUMENT:
            raise ValueError(f"a text argument longer than {MAX_ARGUMENT:,} bytes")
        return line

    def tell(self) -> int:
        return self.stream.tell()


class _Mark:
    """pickle's MARK on the modelled stack."""


@dataclass(frozen=True)
class PersistentRef:
    """What a persistent id loads as, on the modelled stack: the storage it names."""

    pid: Any


# How torch.save's pickle rebuilds a tensor: (storage, storage_offset, size, stride, ...).
REBUILD_TENSOR = frozenset({"torch._utils._rebuild_tensor_v2"})


@dataclass(frozen=True)
class Global:
    """A global on the modelled stack (a dtype or storage class inside a persistent id)."""

    name: str


_LITERALS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "NONE", "NEWTRUE", "NEWFALSE"})
_TUPLES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "EMPTY_TUPLE": 0}


@dataclass
class PickleScan:
    """The globals one pickle names (``module.name``, in order of first use) and what it calls."""

    globals: list[str] = field(default_factory=list)
    calls: int = 0  # REDUCE, BUILD, INST, OBJ, NEWOBJ: how often the pickle calls what it imported
    # torch.save's references to tensor storages, as literal tuples where the scan could read
    # them (("storage", Global("torch.float32"), "0", "cpu", 6) in the zip format).
    persistent_ids: list[Any] = field(default_factory=list)
    # The argument tuples of its `REBUILD_TENSOR` calls, literal where the scan could read them:
    # (PersistentRef(pid), storage_offset, size, stride, ...).
    tensor_views: list[tuple[Any, ...]] = field(default_factory=list)
    opcodes: int = 0
    used: set[str] = field(default_factory=set)  # the opcodes it holds, by name
    protocol: int = 0
    end: int = 0  # offset just past STOP
    error: str | None = None  # the stream is not a well-formed pickle: why

    @property
    def unresolved(self) -> bool:
        return UNRESOLVED in self.globals


def scan(data: bytes | IO[bytes], *, start: int = 0) -> PickleScan:
    """Scan the one pickle that begins at ``start`` of ``data`` (bytes, or a seekable binary stream,
    which is read only as far as the pickle goes)."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    stream.seek(start)
    result = PickleScan()
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for opcode, arg, pos in pickletools.genops(cast(IO[bytes], _Bounded(stream))):
            result.opcodes += 1
            result.used.add(opcode.name)
            if result.opcodes > MAX_OPCODES:
                result.error = f"more than {MAX_OPCODES:,} opcodes; not scanned to the end"
                return result
            _step(opcode, arg, stack, memo, result)
            if opcode.name == "STOP":
                result.end = stream.tell()
                return result
            _ = pos
    except (ValueError, IndexError, EOFError, KeyError, TypeError) as exc:
        result.error = f"not a well-formed pickle at offset {stream.tell()}: {exc}"
        return result
    result.error = "the pickle ends without STOP (truncated)"
    return result


def _step(opcode: pickletools.OpcodeInfo, arg: Any, stack: list[Any], memo: dict[int, Any], out: PickleScan) -> None:
    name = opcode.name
    if name == "PROTO":
        out.protocol = int(arg)
        return
    if name in ("GLOBAL", "INST"):
        _name(out, _python3_name(str(arg), out.protocol))
    if name in _CALLS:
        out.calls += 1
    if name == "BINPERSID":
        pid = _pop(stack)
        out.persistent_ids.append(pid)
        stack.append(PersistentRef(pid))
        return
    if name == "REDUCE" and len(stack) >= 2 and isinstance(stack[-1], tuple):
        called = stack[-2]
        if isinstance(called, Global) and called.name in REBUILD_TENSOR:
            out.tensor_views.append(stack[-1])
    if name == "PERSID":
        out.persistent_ids.append(arg)
    if name == "STACK_GLOBAL":
        attr, module = _pop(stack), _pop(stack)
        resolved = isinstance(module, str) and isinstance(attr, str)
        _name(out, f"{module}.{attr}" if resolved else UNRESOLVED)
        stack.append(Global(f"{module}.{attr}") if resolved else None)
        return
    if name == "GLOBAL":
        stack.append(Global(_python3_name(str(arg), out.protocol)))
        return
    if name in _TUPLES or name == "TUPLE":
        items = [_pop(stack) for _ in range(_TUPLES[name])] if name in _TUPLES else _pop_to_mark(stack)
        stack.append(tuple(reversed(items)) if name in _TUPLES else tuple(items))
        return
    if name in ("EXT1", "EXT2", "EXT4"):
        _name(out, UNRESOLVED)  # the copyreg extension registry: a global by number
    if name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
        if not stack:
            raise ValueError(f"{name} on an empty stack")
        memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1]
        return
    if name in ("GET", "BINGET", "LONG_BINGET"):
        stack.append(memo[int(arg)])
        return
    if name == "DUP":
        stack.append(stack[-1])
        return
    for before in reversed(opcode.stack_before):
        if before is pickletools.stackslice:
            continue  # the items above the mark: popped with the mark below
        if before is pickletools.markobject:
            while stack and not isinstance(stack[-1], _Mark):
                stack.pop()
            if not stack:
                raise ValueError(f"{name} without a MARK")
            stack.pop()
        else:
            _pop(stack)
    for after in opcode.stack_after:
        if after is pickletools.markobject:
            stack.append(_Mark())
        else:
            stack.append(arg if name in _STRINGS or name in _LITERALS else None)


def _python3_name(arg: str, protocol: int) -> str:
    """``module name`` as Python 3 resolves it: pickles of protocol < 3 may use Python 2 names
    (``__builtin__.set``), which the unpickler maps, as torch's weights_only unpickler does."""
    module, _, attr = arg.partition(" ")
    if protocol < 3:
        module, attr = _compat_pickle.NAME_MAPPING.get((module, attr), (module, attr))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{attr}"


def _pop_to_mark(stack: list[Any]) -> list[Any]:
    items = []
    while stack and not isinstance(stack[-1], _Mark):
        items.append(stack.pop())
    if not stack:
        raise ValueError("TUPLE without a MARK")
    stack.pop()
    return list(reversed(items))


def _pop(stack: list[Any]) -> Any:
    if not stack or isinstance(stack[-1], _Mark):
        raise ValueError("the stack underflows")
    return stack.pop()


def _name(out: PickleScan, name: str) -> None:
    if name not in out.globals:
        out.globals.append(name)


def allowed_globals() -> set[str] | None:
    """The globals the running torch's weights_only unpickler accepts (built in and added by the
    user), or None where torch does not expose its allowlist."""
    try:
        from torch import _weights_only_unpickler as unpickler
    except ImportError:
        return None
    builtin = getattr(unpickler, "_get_allowed_globals", None)
    if builtin is None:
        return None
    allowed = set(builtin())
    user = getattr(unpickler, "_get_user_allowed_globals", None)  # add_safe_globals: torch 2.4+
    if user is not None:
        allowed |= set(user())
    return allowed


@functools.cache
def weights_only_opcodes() -> frozenset[str] | None:
    """The opcodes the running torch's weights_only unpickler implements, or None where it has
    none. Found by asking it: each opcode in a pickle of our own, after PROTO 2; one it does not
    implement fails at dispatch with "Unsupported operand N" before reading a byte of arguments
    (torch 2.13 lacks FRAME, MEMOIZE, STACK_GLOBAL, SHORT_BINUNICODE: `torch.save(...,
    pickle_protocol=4)` writes a file its own weights_only load cannot read). Only these probes are
    unpickled, never a file; anything else they raise means the opcode was dispatched."""
    try:
        from torch._weights_only_unpickler import Unpickler
    except ImportError:
        return None
    implemented: set[str] = set()
    for op in pickletools.opcodes:
        code = op.code.encode("latin-1")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Detected pickle protocol ..." for the PROTO probe
                Unpickler(io.BytesIO(b"\x80\x02" + code + b"."), encoding="bytes").load()  # type: ignore[no-untyped-call]
        except Exception as exc:
            if f"Unsupported operand {code[0]}" in str(exc):
                continue
        implemented.add(op.name)
    return frozenset(implemented)


def unreadable_opcodes(scans: list[PickleScan]) -> list[str]:
    """The opcodes of ``scans`` the running torch's weights_only unpickler does not implement,
    sorted (none where it says nothing)."""
    implemented = weights_only_opcodes()
    if implemented is None:
        return []
    return sorted({name for s in scans for name in s.used} - implemented)


def weights_only_refusals(scans: list[PickleScan]) -> list[str] | None:
    """The globals of ``scans`` the weights_only unpickler would refuse, in order; None where the
    running torch does not say what it allows."""
    allowed = allowed_globals()
    if allowed is None:
        return None
    refused: list[str] = []
    for s in scans:
        refused += [g for g in s.globals if g not in allowed and g not in refused]
    return refused


def add_safe_globals_call(refused: list[str]) -> str:
    """The one call that allows every refused global at once (after the user has checked each)."""
    imports = sorted({g.rpartition(".")[0] for g in refused if g != UNRESOLVED})
    names = ", ".join(g for g in refused if g != UNRESOLVED)
    prefix = "; ".join(f"import {m}" for m in imports)
    return f"{prefix}; torch.serialization.add_safe_globals([{names}])" if prefix else ""


def scan_archive(path: str | os.PathLike[str]) -> dict[str, PickleScan]:
    """Every pickle in a zip archive (torch.save, TorchScript, .pt2), by member name, including
    those of torch.save archives nested in it (``outer.pt2/inner.pt:data.pkl``). Each member is
    read as a stream (its pickle scanned, then read on to its end, where zipfile checks its CRC),
    and a nested archive in place: no member is too large to scan, none is held in memory. A member
    that is not scanned (`identify.expansion_problem`, a compressed nested archive) is a scan with
    that error, never skipped: a pickle nobody read is not a pickle that imports nothing. Raises
    zipfile.BadZipFile for a broken archive."""
    found: dict[str, PickleScan] = {}
    with open(path, "rb") as source:
        _scan_zip(source, "", found, depth=0)
    return found


def _scan_zip(source: IO[bytes], where: str, found: dict[str, PickleScan], depth: int) -> None:
    from ckpt_compat.identify import EXPANSION_FLOOR, expansion_problem

    archive = zipfile.ZipFile(source)
    for info in archive.infolist():
        if info.is_dir():
            continue
        name = f"{where}{info.filename}"
        problem = expansion_problem(info)
        if problem is not None:
            found[name] = PickleScan(error=problem)
            continue
        with archive.open(info) as member:
            head = member.read(4)
            member.seek(0)  # within what it has read: nothing is read twice
            saved_pickle = depth == 0 and info.filename.endswith(".pt") and head[:1] == b"\x80"
            if head == b"PK\x03\x04" and depth < 2:
                nested: IO[bytes] | None = None
                if info.compress_type == zipfile.ZIP_STORED:
                    nested = _stored_bytes(source, info)  # seeking in a member would reread it each time
                elif info.file_size <= EXPANSION_FLOOR:
                    nested = io.BytesIO(member.read())
                if nested is None:
                    found[name] = PickleScan(error=f"a compressed archive of {info.file_size:,} bytes; not scanned")
                    continue
                with contextlib.suppress(zipfile.BadZipFile):
                    _scan_zip(nested, f"{name}:", found, depth + 1)
            elif info.filename.endswith(".pkl") or saved_pickle:
                found[name] = scan(member)
            while member.read(2**20):  # to its end, a chunk at a time: zipfile checks the CRC there
                pass


def _stored_bytes(source: IO[bytes], info: zipfile.ZipInfo) -> IO[bytes]:
    """The bytes of stored (uncompressed) member ``info`` of the archive in ``source``, as a
    seekable stream reading them in place."""
    source.seek(info.header_offset)
    header = source.read(30)
    if header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"member {info.filename}: no local header at offset {info.header_offset}")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return io.BufferedReader(_Window(source, info.header_offset + 30 + name_length + extra_length, info.file_size))


class _Window(io.RawIOBase):
    """``size`` bytes of ``source`` from ``start``, as a file of their own."""

    def __init__(self, source: IO[bytes], start: int, size: int) -> None:
        self.source, self.start, self.size, self.position = source, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self.size - self.position)
        if wanted <= 0:
            return 0
        self.source.seek(self.start + self.position)
        data = self.source.read(wanted)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)
