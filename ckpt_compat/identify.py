"""What a checkpoint file really is, from its bytes alone (nothing is unpickled or executed).

Tutorials tell users that ``torch.save(state_dict, "model.pb")`` makes a protobuf file; it makes a
torch.save zip archive whatever the suffix. `identify` tells them apart.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

# torch.save's legacy format opens with its magic number, pickled with protocol 2.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def identify(path: Path) -> str:
    """A one-line description of the checkpoint at ``path``; raises OSError if unreadable."""
    if path.is_dir():
        if (path / ".metadata").is_file():
            return "a torch.distributed.checkpoint (DCP) directory"
        raise OSError(f"{path} is a directory but not a DCP checkpoint (no .metadata)")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head.startswith(_LEGACY_MAGIC[:14]):
        return "a torch.save file in the legacy (pre-1.6, non-zip) format"
    safetensors = _safetensors(path, head)
    if safetensors:
        return safetensors
    onnx = _onnx(path)
    if onnx:
        return onnx
    return (
        "not a checkpoint format ckpt-compat knows "
        "(torch.save zip or legacy, TorchScript, torch.export, safetensors, ONNX, DCP)"
    )


def _zip_kind(path: Path) -> str:
    try:
        names = zipfile.ZipFile(path).namelist()
    except zipfile.BadZipFile:
        return "a truncated or corrupt zip archive (torch.save and TorchScript files are zip archives)"
    tops = {n.split("/", 2)[1] for n in names if n.count("/") >= 1}
    if any(n.endswith("archive_format") for n in names) or "models" in tops:
        return "a torch.export program (.pt2 zip archive), for torch.export.load"
    if "code" in tops or any(n.endswith("constants.pkl") for n in names):
        return "a TorchScript archive, for torch.jit.load (TorchScript is deprecated upstream)"
    if any(n.endswith("data.pkl") for n in names):
        suffix = path.suffix.lower()
        hint = f" (not protobuf, whatever its {suffix} suffix says)" if suffix in (".pb", ".onnx", ".proto") else ""
        return f"a torch.save zip archive{hint}, for torch.load(weights_only=True)"
    return "a zip archive that is not a torch checkpoint"


def _safetensors(path: Path, head: bytes) -> str:
    if len(head) < 9:
        return ""
    (size,) = struct.unpack("<Q", head[:8])
    if not 2 <= size <= min(100 * 2**20, path.stat().st_size - 8) or head[8:9] != b"{":
        return ""
    with open(path, "rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(size))
        except ValueError:
            return ""
    tensors = [k for k in header if k != "__metadata__"]
    return f"a safetensors file with {len(tensors)} tensor(s)"


def _onnx(path: Path) -> str:
    try:
        import onnx
    except ImportError:
        return ""
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
