"""What a checkpoint file really is, from its bytes alone (nothing is unpickled or executed).

Tutorials tell users that ``torch.save(state_dict, "model.pb")`` makes a protobuf file; it makes a
torch.save zip archive whatever the suffix. `identify` tells them apart.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

# torch.save's legacy format opens with its magic number, pickled with protocol 2.
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


@dataclass(frozen=True)
class Identified:
    """What a file is: ``kind`` for code (torch_zip, torch_legacy, torchscript, torch_export,
    safetensors, onnx, dcp, broken_zip, zip, unknown), ``description`` for people."""

    kind: str
    description: str


def identify(path: Path) -> str:
    """A one-line description of the checkpoint at ``path``; raises OSError if unreadable and
    NotAFile for a FIFO, device or socket."""
    return identify_kind(path).description


def identify_kind(path: Path) -> Identified:
    """The kind and description of the checkpoint at ``path`` (see `identify`)."""
    refuse_special(path)
    if path.is_dir():
        if (path / ".metadata").is_file():
            return Identified("dcp", "a torch.distributed.checkpoint (DCP) directory")
        raise OSError(f"{path} is a directory but not a DCP checkpoint (no .metadata)")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head.startswith(LEGACY_MAGIC[:14]):
        return Identified("torch_legacy", "a torch.save file in the legacy (pre-1.6, non-zip) format")
    safetensors = _safetensors(path, head)
    if safetensors:
        return Identified("safetensors", safetensors)
    onnx = _onnx(path)
    if onnx:
        return Identified("onnx", onnx)
    return Identified(
        "unknown",
        "not a checkpoint format ckpt-compat knows "
        "(torch.save zip or legacy, TorchScript, torch.export, safetensors, ONNX, DCP)",
    )


def zip_kind(names: list[str]) -> str:
    """torch_export, torchscript, torch_zip or zip, from the member names of a zip archive."""
    tops = {n.split("/", 2)[1] for n in names if n.count("/") >= 1}
    if any(n.endswith("archive_format") for n in names) or "models" in tops:
        return "torch_export"
    # torch.export.save before the PT2 archive layout (2.1-2.6 here: 2.8 writes the one above)
    # puts flat members at the top: the program as JSON, its weights as nested torch.save archives.
    if "serialized_exported_program.json" in names:
        return "torch_export"
    if "code" in tops or any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "torch_zip"
    return "zip"


# What Python's zipfile raises on a damaged archive: a bad directory, a cut file, a bad deflate
# stream, or a "version needed to extract" it does not implement (a flipped bit says 6.4).
ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, NotImplementedError)


# A compressed zip member may expand this many times over its compressed bytes, past a floor any
# member may reach: torch writes its members uncompressed, a pickle deflates a few times over, and
# a member past this is a decompression bomb (deflate reaches ~1000x on repeated bytes): a 2 MiB
# file whose one member expands to 2 GiB cost `check` 23 s and 4 GiB of memory before this.
MAX_EXPANSION = 100
EXPANSION_FLOOR = 16 * 2**20


def expansion_problem(info: zipfile.ZipInfo) -> str | None:
    """Why zip member ``info`` must not be decompressed (what its directory entry declares, before a
    byte of it is read; zipfile never yields more than the declared size), or None."""
    if info.compress_type == zipfile.ZIP_STORED or info.file_size <= max(
        EXPANSION_FLOOR, MAX_EXPANSION * info.compress_size
    ):
        return None
    return (
        f"member {info.filename} would expand to {info.file_size:,} bytes from {info.compress_size:,} "
        f"(over {MAX_EXPANSION} times: a decompression bomb), so it is not read; torch writes its members uncompressed"
    )


def _zip_kind(path: Path) -> Identified:
    try:
        names = zipfile.ZipFile(path).namelist()
    except ZIP_ERRORS:
        return Identified(
            "broken_zip", "a truncated or corrupt zip archive (torch.save and TorchScript files are zip archives)"
        )
    kind = zip_kind(names)
    if kind == "torch_export":
        return Identified(kind, "a torch.export program (.pt2 zip archive), for torch.export.load")
    if kind == "torchscript":
        return Identified(kind, "a TorchScript archive, for torch.jit.load (TorchScript is deprecated upstream)")
    if kind == "torch_zip":
        suffix = path.suffix.lower()
        hint = f" (not protobuf, whatever its {suffix} suffix says)" if suffix in (".pb", ".onnx", ".proto") else ""
        return Identified(kind, f"a torch.save zip archive{hint}, for torch.load(weights_only=True)")
    return Identified(kind, "a zip archive that is not a torch checkpoint")


def _safetensors(path: Path, head: bytes) -> str:
    if len(head) < 9:
        return ""
    (size,) = struct.unpack("<Q", head[:8])
    # JSON whitespace may lead the header: safetensors' reader takes it.
    if not 2 <= size <= min(100 * 2**20, path.stat().st_size - 8) or head[8:].lstrip(b" \t\r\n")[:1] != b"{":
        return ""
    with open(path, "rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(size))
        except (ValueError, RecursionError):  # RecursionError: nested past the limit, no header safetensors writes
            return ""
    tensors = [k for k in header if k != "__metadata__"]
    return f"a safetensors file with {len(tensors)} tensor(s)"


def _onnx(path: Path) -> str:
    with open(path, "rb") as f:
        if f.read(1) != b"\x08":  # ModelProto opens with field 1 (ir_version): a varint tag
            return ""
    try:
        import onnx
    except ImportError:
        raise MissingDependency(
            f"{path}: it may be an ONNX model, which only the onnx package reads, and onnx is not installed; "
            "pip install onnx (or 'ckpt-compat[onnx]') and check it again"
        ) from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return ""
    if not model.graph.node and not model.graph.initializer:
        return ""
    return (
        f"an ONNX model (protobuf): {len(model.graph.node)} node(s), "
        f"{len(model.graph.initializer)} initializer(s), opset {[o.version for o in model.opset_import]}"
    )


MAX_SIZE = 256 * 2**30  # larger files are refused before anything is read (``--max-size``)


class NotAFile(ValueError):
    """A FIFO, device, socket or oversized file: refused before anything is read (a usage error)."""


class MissingDependency(NotAFile):
    """A file that only an optional package can tell about, which is not installed: the message
    names the file and the package to install (a usage error, never a verdict on the file)."""


def refuse_special(path: Path, max_size: int = MAX_SIZE) -> os.stat_result:
    """The file's stat, after refusing what must not be opened or read whole."""
    info = path.stat()
    if stat.S_ISDIR(info.st_mode):
        return info
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
        raise NotAFile(f"{path} is {kind}, not a checkpoint file; copy the checkpoint to a regular file")
    if info.st_size > max_size:
        raise NotAFile(f"{path} is {info.st_size:,} bytes, over the {max_size:,}-byte limit; raise --max-size")
    return info
