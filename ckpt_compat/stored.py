"""The tensors a checkpoint on disk holds, read without running anything in it (unless someone
vouched for it: ``trusted``), in the contained child of ``check FILE --model`` (`keymatch.match_task`).

`read_stored` takes a safetensors file, a torch.save file (``.pt``, ``.bin``; loaded with
``weights_only=True``, and TorchScript archives refused where torch would execute them), or a
Hugging Face ``save_pretrained`` folder (``model.safetensors``, ``pytorch_model.bin`` or a
sharded ``*.index.json`` with its shards). A training checkpoint that keeps the weights under
``state_dict`` / ``model`` / ``module`` is unwrapped, and says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckpt_compat.identify import MAX_SIZE, MissingDependency, NotAFile, identify_kind, refuse_special

# Where trainers keep the weights inside a checkpoint dict, most common first.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "ema")
HF_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class StoredError(ValueError):
    """A checkpoint whose tensors cannot be read safely; the message names the file and what to do."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # torch's name without the prefix: "float32", "bfloat16"
    shape: tuple[int, ...]


@dataclass
class Stored:
    """Keys, dtypes and shapes of a checkpoint's tensors, and a reader for one tensor's values."""

    path: Path
    kind: str  # in words: "safetensors file", "Hugging Face folder, 3 safetensors shards"
    tensors: dict[str, TensorInfo]
    read: Callable[[str], torch.Tensor]
    # The key the weights sat under in a wrapping dict ("state_dict"), or None.
    inside: str | None = None
    # A torch.save state dict carries module versions (``_metadata``); safetensors files do not.
    versioned: bool = False
    problems: list[str] = field(default_factory=list)  # a sharded index that disagrees with its shards


def tensor_info(t: torch.Tensor) -> TensorInfo:
    return TensorInfo(str(t.dtype).removeprefix("torch."), tuple(int(n) for n in t.shape))


def read_stored(path: Path, max_size: int = MAX_SIZE, *, trusted: bool = False) -> Stored:
    """The tensors of the checkpoint at ``path``; raises `StoredError` or `identify.NotAFile`.
    ``trusted``: someone vouched for the file (``--trust``): torch.save files load with
    weights_only=False, which runs what their pickle names."""
    if not path.exists():
        raise StoredError(f"{path}: no such file or directory")
    refuse_special(path, max_size)
    if path.is_dir():
        return _folder(path, max_size, trusted)
    return _file(path, max_size, trusted)


def _file(path: Path, max_size: int, trusted: bool) -> Stored:
    refuse_special(path, max_size)
    kind = identify_kind(path).kind
    if kind == "safetensors":
        return _safetensors(path)
    if kind in ("torch_zip", "torch_legacy"):
        return _torch_save(path, trusted)
    raise StoredError(
        f"{path}: not a state dict but {kind!r}; key comparison reads safetensors and torch.save files "
        "(and Hugging Face folders of them); run 'ckpt-compat check FILE' to see what it is"
    )


def _safetensors(path: Path) -> Stored:
    try:
        from safetensors import safe_open
    except ImportError:
        raise MissingDependency(
            f"{path}: a safetensors file, and the safetensors package is not installed; pip install safetensors "
            "(or 'ckpt-compat[safetensors]') and check it again"
        ) from None

    try:
        reader: Any = safe_open(str(path), framework="pt")
        names = list(reader.keys())
        infos = {}
        for name in names:
            part = reader.get_slice(name)
            infos[name] = TensorInfo(_safetensors_dtype(part.get_dtype()), tuple(part.get_shape()))
    except Exception as exc:
        raise StoredError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    return Stored(path, "safetensors file", infos, lambda key: reader.get_tensor(key))


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu", "U16": "uint16",
    "U32": "uint32", "U64": "uint64", "C64": "complex64",
}  # fmt: skip


def _safetensors_dtype(code: str) -> str:
    return _SAFETENSORS_DTYPES.get(code, code)


def _torch_save(path: Path, trusted: bool) -> Stored:
    from ckpt_compat.devices import MapLocation
    from ckpt_compat.formats import Unsupported, Untrusted
    from ckpt_compat.formats.torch_save import torch_load

    options = {"weights_only": not trusted}
    try:
        obj = torch_load(path, options, MapLocation("str", "cpu", "cpu"), trusted=trusted)
    except Untrusted as exc:
        raise StoredError(f"{path}: {exc}") from exc
    except Unsupported as exc:
        vouch = "; or pass --trust if you trust where the file came from" if not trusted else ""
        raise StoredError(f"{path}: {exc}{vouch}") from exc
    except Exception as exc:
        raise StoredError(
            f"{path}: torch.load(weights_only={not trusted}) failed ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}); run 'ckpt-compat check FILE' for what is wrong with it"
        ) from exc
    state, inside = _unwrapped(obj, path)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return Stored(
        path,
        "torch.save file",
        {k: tensor_info(v) for k, v in tensors.items()},
        tensors.__getitem__,
        inside,
        versioned=getattr(state, "_metadata", None) is not None,
    )


def _unwrapped(obj: Any, path: Path) -> tuple[Mapping[str, Any], str | None]:
    if not isinstance(obj, Mapping):
        raise StoredError(f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner, key
    tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
    if tensors:
        return obj, None
    raise StoredError(
        f"{path}: a dict of {', '.join(map(repr, list(obj)[:6]))} with no state dict under "
        f"{'/'.join(WRAPPER_KEYS)}; save model.state_dict() or put it under 'state_dict'"
    )


def hf_checkpoint(path: Path) -> str | None:
    """The checkpoint file of the Hugging Face folder at ``path`` (the first of `HF_FILES` there),
    or None when it holds none."""
    return next((name for name in HF_FILES if (path / name).is_file()), None)


def _folder(path: Path, max_size: int, trusted: bool) -> Stored:
    name = hf_checkpoint(path)
    if name is None:
        raise StoredError(
            f"{path}: a directory without {', '.join(HF_FILES)}; give a checkpoint file or a Hugging Face "
            "save_pretrained folder"
        )
    if not name.endswith(".index.json"):
        stored = _file(path / name, max_size, trusted)
        stored.kind = f"Hugging Face folder ({name})"
        return stored
    return _sharded(path / name, max_size, trusted)


MAX_INDEX = 100 * 2**20  # bytes of a sharded-checkpoint index read (a large model's is a few MiB)


def read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a Hugging Face sharded-checkpoint index (tensor name -> shard file);
    raises `StoredError` naming the index."""
    try:
        with open(index, "rb") as stream:
            text = stream.read(MAX_INDEX + 1)
        if len(text) > MAX_INDEX:
            raise ValueError(f"over {MAX_INDEX // 2**20} MiB")
        weight_map = json.loads(text.decode("utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not a mapping of names to shard files")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise StoredError(f"{index}: not a readable sharded-checkpoint index ({type(exc).__name__}: {exc})") from exc
    return weight_map


def shard_path(index: Path, shard_name: str) -> Path:
    """Where a shard the index names lies; raises `StoredError` for a name that leads outside
    the index's folder or is no file name at all."""
    try:
        found = (index.parent / shard_name).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL in the name, a loop of links
        raise StoredError(f"{index}: shard {shard_name!r} is not a file name ({exc})") from exc
    if index.parent.resolve() not in found.parents:
        raise StoredError(f"{index}: shard {shard_name!r} lies outside the folder; refusing to read it")
    return found


def _sharded(index: Path, max_size: int, trusted: bool) -> Stored:
    weight_map = read_index(index)
    tensors: dict[str, TensorInfo] = {}
    readers: dict[str, Callable[[str], torch.Tensor]] = {}
    problems: list[str] = []
    for shard_name in sorted(set(weight_map.values())):
        located = shard_path(index, shard_name)
        if not located.is_file():
            what = "not a regular file" if located.exists() else "missing"  # a folder, a FIFO
            problems.append(f"shard {shard_name} named by the index is {what}")
            continue
        shard = _file(located, max_size, trusted)
        listed = {k for k, v in weight_map.items() if v == shard_name}
        if listed - set(shard.tensors):
            problems.append(f"{shard_name} lacks {len(listed - set(shard.tensors))} key(s) the index puts there")
        if set(shard.tensors) - listed:
            problems.append(f"{shard_name} holds {len(set(shard.tensors) - listed)} key(s) the index does not list")
        for key, info in shard.tensors.items():
            tensors[key] = info
            readers[key] = shard.read
    count = len(set(weight_map.values()))
    return Stored(
        index,
        f"Hugging Face folder, {count} shard(s) indexed by {index.name}",
        tensors,
        lambda key: readers[key](key),
        problems=problems,
    )


__all__ = [
    "NotAFile",
    "Stored",
    "StoredError",
    "TensorInfo",
    "hf_checkpoint",
    "read_index",
    "read_stored",
    "shard_path",
]
