"""A DCP checkpoint's ``.metadata`` read without running anything, and its data files held to it.

DCP's reader unpickles ``.metadata`` with plain pickle (`formats.dcp.untrusted_refusal` says when
that could run code). Here the same pickle is read by an unpickler whose only classes are inert
records: each global the metadata may name (`formats.dcp.METADATA_GLOBALS`) becomes a record of its
arguments and state, anything else is refused, nothing is imported or called. From the records come
where each stored item lies: a data file beside ``.metadata``, an offset and a length, where DCP
wrote each item with torch.save (a zip archive opens there). A data file that is missing, outside
the folder or shorter than its items reach, or an offset that does not open an archive, passes a
look at the files alone ("verdict: ok"); DCP's load then fails on it.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

MAX_METADATA = 256 * 2**20  # bytes of .metadata read (a 70B-parameter model's is a few MiB)


class Record:
    """An inert stand-in for one metadata class: its arguments and the state pickle gave it."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.state = args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _record_class(name: str) -> type[Record]:
    return type("Record", (Record,), {"qualname": name})


class _InertUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, allowed: frozenset[str]) -> None:
        super().__init__(io.BytesIO(data))
        self.allowed = allowed
        self.classes: dict[str, type[Record]] = {}

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if qualname not in self.allowed:
            raise pickle.UnpicklingError(f"names {qualname}, which a metadata pickle does not")
        return self.classes.setdefault(qualname, _record_class(qualname))

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a metadata pickle holds no persistent ids")


def read_inert(path: Path, allowed: frozenset[str]) -> Any:
    """``.metadata`` at ``path`` as inert records; raises ValueError saying why it cannot be read."""
    with open(path, "rb") as stream:
        data = stream.read(MAX_METADATA + 1)
    if len(data) > MAX_METADATA:
        raise ValueError(f"it is over {MAX_METADATA // 2**20} MiB")
    try:
        return _InertUnpickler(data, allowed).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
        raise ValueError(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from exc
    except (AttributeError, MemoryError) as exc:  # a BUILD of a non-record; a length that asks for all memory
        raise ValueError(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from exc


def _storage(metadata: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(index, {relative_path, offset, length}) of each stored item, as `Metadata.storage_data` has them."""
    state = metadata.state if isinstance(metadata, Record) else None
    storage = state.get("storage_data") if isinstance(state, dict) else None
    if not isinstance(storage, dict):
        raise ValueError("its Metadata has no storage_data mapping")
    for index, info in storage.items():
        fields = info.state if isinstance(info, Record) else None
        if not isinstance(fields, dict):
            raise ValueError("a storage_data value is not a _StorageInfo")
        yield index, fields


def _fqn(index: Any) -> str:
    state = index.state if isinstance(index, Record) else None
    fqn = state.get("fqn") if isinstance(state, dict) else None
    return str(fqn) if fqn is not None else "?"


def storage_problems(folder: Path, allowed: frozenset[str]) -> list[str]:
    """One line per item whose data DCP cannot read from ``folder``; a ``.metadata`` that names
    more than ``allowed`` (which the pickle scan reports) gives none."""
    try:
        metadata = read_inert(folder / ".metadata", allowed)
        items = list(_storage(metadata))
    except ValueError as exc:
        if "which a metadata pickle does not" in str(exc):
            return []
        return [f"its .metadata does not read as DCP metadata ({exc})"]
    except OSError as exc:
        return [f"its .metadata cannot be read ({exc.strerror or exc})"]
    problems = []
    with contextlib.ExitStack() as stack:
        files = _DataFiles(folder, stack)
        for index, fields in items:
            problem = _item_problem(fields, files)
            if problem:
                problems.append(f"stored item {_fqn(index)!r}: {problem}")
    return problems


class _DataFiles:
    """The checkpoint's data files, each looked at and opened once however many items it holds."""

    def __init__(self, folder: Path, stack: contextlib.ExitStack) -> None:
        self.folder, self.stack = folder, stack
        self.sizes: dict[str, int | str] = {}
        self.streams: dict[str, IO[bytes]] = {}

    def size(self, name: str) -> int | str:
        """The size of a regular file, or what it is instead: DCP writes no links, FIFOs or devices."""
        if name not in self.sizes:
            try:
                mode = (self.folder / name).lstat()
            except FileNotFoundError:
                self.sizes[name] = "is missing"
            except OSError as exc:
                self.sizes[name] = f"cannot be read ({exc.strerror})"
            else:
                regular = stat.S_ISREG(mode.st_mode)
                self.sizes[name] = mode.st_size if regular else "is not a regular file (a link, a folder, a FIFO?)"
        return self.sizes[name]

    def head(self, name: str, offset: int) -> bytes:
        """The first bytes at ``offset`` of a regular data file (`size` said it is one)."""
        if name not in self.streams:
            self.streams[name] = self.stack.enter_context(open(self.folder / name, "rb"))  # noqa: SIM115 - closed by the stack
        stream = self.streams[name]
        stream.seek(offset)
        return stream.read(4)


def _item_problem(fields: dict[str, Any], files: _DataFiles) -> str | None:
    name, offset, length = fields.get("relative_path"), fields.get("offset"), fields.get("length")
    if not isinstance(name, str) or type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
        return f"its storage info is not a file name, offset and length ({name!r:.60}, {offset!r:.20}, {length!r:.20})"
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts or "\\" in name or "\0" in name:
        return f"its data file {name!r:.100} is not a file inside the checkpoint folder"
    size = files.size(name)
    if isinstance(size, str):
        return f"its data file {name} {size}"
    if offset + length > size:
        return f"its {length} bytes at offset {offset} run past the end of {name} ({size} bytes)"
    if length and not fields.get("transform_descriptors"):  # untransformed: DCP torch.save'd it there
        head = files.head(name, offset)
        if head != b"PK\x03\x04":
            return f"its bytes at offset {offset} of {name} are not a torch.save archive (they open {head!r})"
    return None
