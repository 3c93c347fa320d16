"""Is a checkpoint file sound, and does loading it run code? Read from its bytes alone: nothing is
unpickled, imported or executed (`ckpt-compat check FILE`).

Each format is held to its own rules: a zip's central directory and every CRC, the records torch's
own archive reader checks, each tensor storage's record length against its dtype and element
count, each tensor view inside its storage; the legacy format's five pickles and storage layout;
safetensors' header rules (`safetensors_header`); onnx's checker and each tensor's bytes
(`onnxdata`); a DCP `.metadata` pickle's globals, and its data files against it (`dcpmeta`); a
Hugging Face folder's shards against its index (`hffolder`); a ``.pt2``'s raw weights against
its payload config (`pt2payload`). The pickles are scanned
(`picklescan`) for what a ``weights_only=True`` load would refuse.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import stat
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_compat.errorinfo import one_line
from ckpt_compat.identify import MAX_SIZE, ZIP_ERRORS, Identified, expansion_problem, identify_kind, refuse_special


@dataclass
class Inspection:
    """What a checkpoint file is and whether it loads as it claims, from its bytes alone."""

    path: Path
    description: str
    kind: str  # as `identify.Identified.kind`
    problems: list[str] = field(default_factory=list)  # structural damage: the file is broken
    refused: list[str] = field(default_factory=list)  # globals a weights_only=True load refuses
    unreadable: list[str] = field(default_factory=list)  # opcodes the weights_only unpickler lacks
    executes: str = ""  # why loading it runs code from the file, whatever the options
    protocol: int = 0  # of its pickle(s)
    tensor_names: list[str] | None = None  # as a safetensors header lists them (None: not read here)

    @property
    def verdict(self) -> str:
        if self.kind == "unknown" or self.problems:
            return "broken"
        return "unsafe" if self.refused or self.unreadable or self.executes else "ok"

    def lines(self) -> list[str]:
        out = [f"{self.path}: {self.description}"]
        out += [f"  broken: {p}" for p in self.problems]
        if self.refused:
            out.append(f"  torch.load(weights_only=True) refuses: {', '.join(self.refused)}")
            from ckpt_compat.picklescan import add_safe_globals_call

            call = add_safe_globals_call(self.refused)
            if call and hasattr(torch_serialization(), "add_safe_globals"):
                out.append(f"  if you trust the file and every one of those: {call}")
        if self.unreadable:
            out.append(
                f"  torch.load(weights_only=True) cannot read its pickle: this torch's weights_only unpickler "
                f"does not implement {', '.join(self.unreadable)} (pickle protocol {self.protocol} opcodes); only "
                "weights_only=False reads it (pytorch/pytorch#118092). torch.save's default pickle_protocol (2) "
                "writes none of them"
            )
        if self.executes:
            out.append(f"  runs code when loaded: {self.executes}")
        out.append(f"  verdict: {self.verdict}")
        from ckpt_compat.errorinfo import shown

        return [shown(line) for line in out]  # names in it are the file's: each stays one line

    def to_json(self) -> dict[str, Any]:
        """What ``check FILE --format json`` prints: the verdict and every finding, typed."""
        from ckpt_compat.picklescan import add_safe_globals_call

        return {
            "schema": "ckpt-compat/inspection/1",
            "path": str(self.path),
            "kind": self.kind,
            "description": self.description,
            "verdict": self.verdict,
            "problems": list(self.problems),
            "refused_globals": list(self.refused),
            # The one call that allows them all, where this torch has add_safe_globals (2.4+).
            "add_safe_globals": (
                add_safe_globals_call(self.refused) or None
                if self.refused and hasattr(torch_serialization(), "add_safe_globals")
                else None
            ),
            "unreadable_opcodes": list(self.unreadable),
            "pickle_protocol": self.protocol or None,
            "executes": self.executes or None,
        }

    @classmethod
    def from_json(cls, data: Any) -> Inspection:
        """`to_json`'s object back, checked field by field: it comes from the process that read the
        file (`checkfile`), which a file made against a reader may have turned. Raises ValueError."""
        if not isinstance(data, dict) or data.get("schema") != "ckpt-compat/inspection/1":
            raise ValueError("not a ckpt-compat/inspection/1 object")

        def text(name: str) -> str:
            value = data.get(name)
            if not isinstance(value, str):
                raise ValueError(f"{name} must be text, got {value!r:.80}")
            return value

        def texts(name: str) -> list[str]:
            value = data.get(name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name} must be a list of text, got {value!r:.80}")
            return list(value)

        protocol, executes = data.get("pickle_protocol"), data.get("executes")
        if protocol is not None and (type(protocol) is not int or protocol < 0):
            raise ValueError(f"pickle_protocol must be a whole number >= 0 or null, got {protocol!r:.80}")
        if executes is not None and not isinstance(executes, str):
            raise ValueError(f"executes must be text or null, got {executes!r:.80}")
        found = cls(
            Path(text("path")),
            text("description"),
            text("kind"),
            texts("problems"),
            texts("refused_globals"),
            texts("unreadable_opcodes"),
            executes or "",
            protocol or 0,
        )
        if found.verdict != data.get("verdict"):
            raise ValueError(f"verdict {data.get('verdict')!r:.40} does not follow from the findings ({found.verdict})")
        return found

    def markdown(self) -> list[str]:
        """The lines as Markdown (a GitHub step summary): every name and message escaped."""
        from ckpt_compat.errorinfo import markdown

        head, *rest = self.lines()
        return [f"### {markdown(head, 1000)}", "", *(f"- {markdown(line.strip(), 2000)}" for line in rest)]


def torch_serialization() -> Any:
    import torch.serialization

    return torch.serialization


def inspect_checkpoint(path: Path, *, max_size: int = MAX_SIZE) -> Inspection:
    """Inspect ``path`` without unpickling or executing anything. Raises NotAFile or OSError."""
    info = refuse_special(path, max_size)
    if stat.S_ISDIR(info.st_mode):
        from ckpt_compat.hffolder import inspect_folder
        from ckpt_compat.stored import hf_checkpoint

        name = None if (path / ".metadata").is_file() else hf_checkpoint(path)
        return _inspect_dcp(path) if name is None else inspect_folder(path, name, max_size)
    found = identify_kind(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if found.kind in ("torch_zip", "torchscript", "torch_export", "broken_zip"):
        return _inspect_zip(path, found)
    if found.kind == "torch_legacy":
        return _inspect_legacy(path, found.description, info.st_size)
    # A safetensors header (after any JSON whitespace), even one identify cannot read.
    if len(head) >= 9 and head[8:].lstrip(b" \t\r\n")[:1] == b"{":
        from ckpt_compat.safetensors_header import inspect_safetensors

        return inspect_safetensors(path, info.st_size)
    if found.kind == "onnx":
        return _inspect_onnx(path, found.description)
    return Inspection(path, found.description, "unknown")


def _refusals(scans: list[Any], path: Path) -> list[str]:
    """The globals the weights_only unpickler refuses: the static scan, joined by torch's own
    answer where it has one (get_unsafe_globals_in_checkpoint, torch 2.5+)."""
    from ckpt_compat.picklescan import UNRESOLVED, weights_only_refusals

    refused = weights_only_refusals(scans)
    if refused is None:  # this torch publishes no allowlist: every global but the tensor machinery
        refused = [g for s in scans for g in s.globals if not g.startswith("torch.")]
    ask = getattr(torch_serialization(), "get_unsafe_globals_in_checkpoint", None)
    if ask is not None:
        with contextlib.suppress(Exception):
            refused += [g for g in ask(str(path)) if g not in refused]
    return ["a global computed at load time" if g == UNRESOLVED else g for g in refused]


def _inspect_zip(path: Path, found: Identified) -> Inspection:
    from ckpt_compat.picklescan import scan, unreadable_opcodes

    kind, description = found.kind, found.description
    result = Inspection(path, description, kind)
    try:
        archive = zipfile.ZipFile(path)
        bombs = [problem for info in archive.infolist() if (problem := expansion_problem(info))]
        if bombs:  # before a byte is decompressed: what its directory declares
            result.problems.append(bombs[0] + (f" (and {len(bombs) - 1} more such member(s))" if bombs[1:] else ""))
            return result
        damaged = archive.testzip()  # reads every member: the central directory and every CRC
    except ZIP_ERRORS as exc:
        result.problems.append(f"the zip archive is truncated or corrupt ({exc})")
        return result
    if damaged is not None:  # nothing more of it can be read as it was written
        result.problems.append(f"member {damaged} fails its CRC check: the file was changed or damaged")
        return result
    tail_problem = _zip_end_problem(path, archive)
    if tail_problem:
        result.problems.append(tail_problem)
    if kind in ("torch_zip", "torchscript") and (stray := _outside_archive_dir(archive.namelist())):
        result.problems.append(stray)
    if kind == "torchscript":
        result.problems += _container_problems(path)  # torch.jit.load opens it with the same reader
        result.executes = "a TorchScript archive holds code that torch.jit.load runs (__setstate__, forward)"
        return result
    if kind == "torch_export":
        from ckpt_compat.pt2payload import payload_problems
        from ckpt_compat.trust import pickled_refusals

        result.problems += payload_problems(archive)
        refused = pickled_refusals(path)
        if refused:
            result.executes = "torch.export.load falls back to weights_only=False on pickles that name " + "; ".join(
                refused
            )
        return result
    if kind != "torch_zip":
        return result
    names = {i.filename: i for i in archive.infolist()}
    pickle_name = next(n for n in names if n.endswith("data.pkl"))
    with archive.open(pickle_name) as stream:  # read only as far as the pickle goes
        pickled = scan(stream)
    if pickled.error:
        result.problems.append(f"{pickle_name}: {pickled.error}")
    prefix = pickle_name[: -len("data.pkl")]
    for pid in pickled.persistent_ids:
        problem = _storage_problem(pid, lambda key: names.get(f"{prefix}data/{key}"))
        if problem:
            result.problems.append(problem)
    result.problems += [problem for view in pickled.tensor_views if (problem := _view_problem(view))]
    result.problems += _container_problems(path)
    result.refused = _refusals([pickled], path)
    result.unreadable, result.protocol = unreadable_opcodes([pickled]), pickled.protocol
    if result.refused or result.unreadable:
        result.description = description.replace(
            "for torch.load(weights_only=True)", "which only weights_only=False reads"
        )
    return result


def _container_problems(path: Path) -> list[str]:
    """What torch's own archive reader says of the records around the pickle: its first step in
    torch.load, which unpickles nothing. A version record that is missing, not a number or newer
    than this torch reads, a serialization id that is not text, a byteorder neither little nor big:
    each passes zip's CRCs and fails every load."""
    import torch

    reader_class = getattr(torch._C, "PyTorchFileReader", None)
    if reader_class is None:
        return []
    try:
        reader = reader_class(str(path))
        if hasattr(reader, "serialization_id"):
            reader.serialization_id()
    except (RuntimeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        said = _ENFORCE.sub("", one_line(str(exc))).split(" (Could this error message be improved?")[0]
        return [f"torch's archive reader refuses it: {said[:300]}"]
    if reader.has_record("byteorder"):
        order = bytes(reader.get_record("byteorder"))
        if order not in (b"little", b"big"):
            return [f"its byteorder record is {order[:40]!r}, neither little nor big: torch.load fails on it"]
    if reader.has_record(".storage_alignment") and _load_reads(".storage_alignment"):
        alignment = bytes(reader.get_record(".storage_alignment"))
        try:
            int(alignment)  # as torch.load reads it
        except ValueError:
            return [f"its .storage_alignment record is {alignment[:40]!r}, not a number: torch.load fails on it"]
    return []


@functools.cache
def _load_reads(record: str) -> bool:
    """Whether this torch's torch.load reads ``record`` (releases that write .storage_alignment read
    it back), from its own source: a record it ignores cannot fail a load."""
    import inspect

    try:
        return f'"{record}"' in inspect.getsource(torch_serialization()._load)
    except (OSError, TypeError, AttributeError):  # no source shipped: assume it does, as today's torch
        return True


_ENFORCE = re.compile(r"\[enforce fail at [^\]]*\]\s*\.?\s*")


def _outside_archive_dir(names: list[str]) -> str:
    """torch's zip reader (PyTorchStreamReader, for torch.load and torch.jit.load) names the archive
    after the directory of its first member and refuses every member outside it ("file in archive
    is not in a subdirectory b/: a/data.pkl", torch 2.0.1 and 2.13.0): a data.pkl beside it is not
    what torch reads. "" where every member is inside."""
    top, slash, _ = names[0].partition("/") if names else ("", "/", "")
    if not slash:
        return f"member {names[0]} is in no directory: torch's zip reader refuses the archive"
    stray = [n for n in names if not n.startswith(f"{top}/")]
    if not stray:
        return ""
    more = f" (and {len(stray) - 1} more)" if stray[1:] else ""
    return f"member {stray[0]}{more} is outside {top}/, the first member's directory: torch's zip reader refuses it"


def _zip_end_problem(path: Path, archive: zipfile.ZipFile) -> str:
    """torch writes its archives with the end-of-central-directory record last and the first
    member at offset 0. Python's zipfile also opens an archive cut short if a torch.save archive
    stored inside it (a .pt2's weights) brings its own directory: that is not this file's."""
    with open(path, "rb") as f:
        f.seek(-22, os.SEEK_END)
        end = f.read(22)
    first = min((i.header_offset for i in archive.infolist()), default=0)
    if not end.startswith(b"PK\x05\x06") or first != 0:
        return "the archive's own central directory is missing (the file is truncated)"
    return ""


def _element_size(dtype: Any) -> int | None:
    """Bytes per element of a dtype or legacy storage class named by a persistent id."""
    import torch

    name = getattr(dtype, "name", "").rpartition(".")[2]
    found = getattr(torch, name, None)
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy storage classes warn that TypedStorage is deprecated
        if isinstance(found, torch.dtype):
            return torch.empty((), dtype=found).element_size()
        return torch.empty((), dtype=found.dtype).element_size()  # type: ignore[union-attr]
    return None


def _storage_problem(pid: Any, record: Any) -> str:
    """A zip-format storage reference ("storage", dtype, key, location, numel) whose record is
    missing or of another length; "" when it is sound or cannot be read statically."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        return ""
    _, dtype, key, _, numel = pid[:5]
    size = _element_size(dtype)
    if not isinstance(numel, int) or size is None:
        return ""
    info = record(key)
    if info is None:
        return f"tensor storage {key} is referenced but missing from the archive"
    if info.file_size != numel * size:
        return f"tensor storage {key} holds {info.file_size} bytes; its {numel} elements need {numel * size}"
    return ""


def _view_problem(args: tuple[Any, ...]) -> str:
    """A tensor rebuilt as (storage, offset, size, stride) that reaches past its storage's elements:
    torch.load fails on it ("Trying to resize storage that is not resizable"); "" when it fits or
    cannot be read statically."""
    from ckpt_compat.picklescan import PersistentRef

    if len(args) < 4 or not isinstance(args[0], PersistentRef):
        return ""
    pid, offset, size, stride = args[0].pid, args[1], args[2], args[3]
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and type(pid[4]) is int):
        return ""
    numbers = [offset, *size, *stride] if isinstance(size, tuple) and isinstance(stride, tuple) else None
    if numbers is None or len(size) != len(stride) or not all(type(n) is int for n in numbers):
        return ""
    if any(n == 0 for n in size):
        return ""  # an empty view reads nothing
    if offset < 0 or any(n < 0 for n in (*size, *stride)):
        return f"a tensor of storage {pid[2]} has a negative offset, size or stride ({offset}, {size}, {stride})"
    reach = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
    if reach > pid[4]:
        return (
            f"a tensor of size {list(size)}, stride {list(stride)} at offset {offset} reaches element {reach} of "
            f"storage {pid[2]}, which holds {pid[4]}: torch.load cannot rebuild it"
        )
    return ""


def _inspect_legacy(path: Path, description: str, size: int) -> Inspection:
    """The legacy format: five pickles (magic, protocol, system info, the object, storage keys),
    then each storage as an 8-byte element count and its bytes, in key order."""
    from ckpt_compat.picklescan import scan, unreadable_opcodes

    result = Inspection(path, description, "torch_legacy")
    # Read as far as each pickle and each storage header go: a legacy file can be any size.
    with open(path, "rb") as data:
        scans, offset = [], 0
        for _ in range(5):
            found = scan(data, start=offset)
            scans.append(found)
            if found.error:
                result.problems.append(f"pickle {len(scans)} of 5: {found.error}")
                return result
            offset = found.end
        version = _pickled_int(data, scans[0].end, scans[1].end)
        if version != LEGACY_PROTOCOL:  # torch.load: "Invalid protocol version"
            result.problems.append(f"its protocol record is {version}, not {LEGACY_PROTOCOL}: torch.load refuses it")
        pids = [pid for pid in scans[3].persistent_ids if isinstance(pid, tuple) and len(pid) > 4]
        sizes = {pid[2]: _element_size(pid[1]) for pid in pids}
        numels = {pid[2]: pid[4] for pid in pids if type(pid[4]) is int}
        for key in sorted(sizes):
            data.seek(offset)
            header = data.read(8)
            if len(header) < 8:
                result.problems.append(f"the file ends before tensor storage {key} (truncated at {offset} bytes)")
                break
            (count,) = struct.unpack("<q", header)
            if key in numels and count != numels[key]:  # torch.load: "storage has wrong byte size"
                result.problems.append(f"tensor storage {key} records {count} elements; its pickle says {numels[key]}")
                break
            offset += 8 + count * (sizes[key] or 1)
            if offset > size:
                result.problems.append(f"tensor storage {key} runs past the end of the file (truncated)")
                break
        else:
            if sizes and all(sizes.values()) and offset < size:  # torch.load reads one save and stops there
                result.description += (
                    f" ({size - offset} bytes after it, which torch.load does not read: another save?)"
                )
    result.refused = _refusals(scans[3:4], path)
    result.unreadable, result.protocol = unreadable_opcodes(scans), max((s.protocol for s in scans), default=0)
    return result


LEGACY_PROTOCOL = 1001  # the second pickle of a legacy file: torch.serialization.PROTOCOL_VERSION


def _pickled_int(data: Any, start: int, end: int) -> int | None:
    """The one integer a small pickle between ``start`` and ``end`` holds (read by its opcodes,
    never unpickled), or None when it holds anything else."""
    import pickletools

    data.seek(start)
    blob = data.read(min(end - start, 64))
    skipped = {"PROTO", "FRAME", "STOP", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}
    try:
        values = [arg for op, arg, _ in pickletools.genops(blob) if op.name not in skipped]
    except ValueError:
        return None
    return values[0] if len(values) == 1 and type(values[0]) is int else None


def _inspect_dcp(path: Path) -> Inspection:
    from ckpt_compat.dcpmeta import storage_problems
    from ckpt_compat.formats.dcp import metadata_globals, untrusted_refusal

    if not (path / ".metadata").is_file():
        return Inspection(
            path,
            "a directory that is neither a DCP checkpoint (no .metadata) nor a Hugging Face folder "
            "(no model.safetensors, pytorch_model.bin or their .index.json)",
            "unknown",
        )
    result = Inspection(path, "a torch.distributed.checkpoint (DCP) directory", "dcp")
    refusal = untrusted_refusal(path)
    if refusal and "not a well-formed pickle" in refusal:
        result.problems.append(refusal)
        return result
    if refusal:
        result.executes = f"DCP's reader unpickles with plain pickle: {refusal}"
    result.problems += storage_problems(path, metadata_globals())
    return result


def _inspect_onnx(path: Path, description: str) -> Inspection:
    """onnx's own checker: a protobuf cut at a field boundary still parses, but not as a model."""
    import onnx

    from ckpt_compat.onnxdata import tensor_data_problems

    result = Inspection(path, description, "onnx")
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        result.problems.append(f"onnx.checker refuses it: {' '.join(str(exc).split())[:300]}")
        return result
    model = onnx.load(str(path), load_external_data=False)  # the checker just parsed it
    result.problems += tensor_data_problems(model, path.parent)
    return result
