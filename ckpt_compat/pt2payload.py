"""A torch.export archive's weights and constants, held to what ``torch.export.load`` needs.

Since torch 2.8 a ``.pt2`` keeps each tensor as raw bytes (``data/weights/weight_0``) and a JSON
payload config (``data/weights/model_weights_config.json``, and ``data/constants/...``) giving its
dtype, sizes, strides and storage offset. The zip's CRCs pass a record cut short or missing, or a
config that is not JSON; ``torch.export.load`` then fails (``setStorage: ... out of bounds for
storage of size 100``, ``failed locating file data/weights/weight_0``). Read from the archive's
directory and the configs alone: no tensor is built, nothing is unpickled (entries with
``use_pickle`` are `trust.pickled_refusals`'s concern).
"""

from __future__ import annotations

import json
import zipfile
from typing import Any

CONFIGS = ("_weights_config.json", "_constants_config.json")


def payload_problems(archive: zipfile.ZipFile) -> list[str]:
    """One line per payload config that does not read, and per tensor it names that
    ``torch.export.load`` cannot build from the archive's records."""
    infos = {info.filename: info for info in archive.infolist()}
    problems = []
    for name in infos:
        folder, _, base = name.rpartition("/")
        if not base.endswith(CONFIGS) or not folder.endswith(("data/weights", "data/constants")):
            continue
        try:
            config = json.loads(archive.read(name))["config"]
            if not isinstance(config, dict):
                raise TypeError("config is not a mapping")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            problems.append(f"{name}: not a payload config torch.export.load reads ({type(exc).__name__}: {exc})")
            continue
        for fqn, entry in config.items():
            problem = _entry_problem(entry, folder, infos)
            if problem:
                problems.append(f"{fqn}: {problem}")
    return problems


def _entry_problem(entry: Any, folder: str, infos: dict[str, zipfile.ZipInfo]) -> str | None:
    if not isinstance(entry, dict) or entry.get("use_pickle"):
        return None
    record = f"{folder}/{entry.get('path_name')}"
    if record not in infos:
        return f"its record {record} is missing from the archive"
    meta = entry.get("tensor_meta")
    sizes, strides, offset = _ints(meta, "sizes"), _ints(meta, "strides"), _int(meta, "storage_offset")
    itemsize = _itemsize(meta.get("dtype") if isinstance(meta, dict) else None)
    if sizes is None or strides is None or offset is None or itemsize is None or len(sizes) != len(strides):
        return None  # a symbolic size, a dtype this torch does not name: left to the load
    nbytes = infos[record].file_size
    if nbytes == 0:
        return None  # torch.export.load builds zeros of the size
    if nbytes % itemsize:
        return f"its record {record} holds {nbytes} bytes, not a whole number of {itemsize}-byte elements"
    if 0 in sizes:
        return None
    reach = offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True)) + 1
    if min([offset, *sizes, *strides]) < 0 or reach * itemsize > nbytes:
        return (
            f"size {sizes}, stride {strides} at offset {offset} need {reach * itemsize} bytes; its record "
            f"{record} holds {nbytes}"
        )
    return None


def _int(meta: Any, key: str) -> int | None:
    value = meta.get(key) if isinstance(meta, dict) else None
    found = value.get("as_int") if isinstance(value, dict) else None
    return found if type(found) is int else None


def _ints(meta: Any, key: str) -> list[int] | None:
    values = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(values, list):
        return None
    found = [v.get("as_int") if isinstance(v, dict) else None for v in values]
    return found if all(type(n) is int for n in found) else None  # type: ignore[return-value]


def _itemsize(code: Any) -> int | None:
    """Bytes per element of a serialized ScalarType, as this torch maps it (None: unknown)."""
    try:
        from torch._export.serde.schema import ScalarType
        from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

        return int(_SERIALIZE_TO_TORCH_DTYPE[ScalarType(code)].itemsize)
    except (ImportError, KeyError, ValueError, AttributeError, TypeError):
        return None
