"""Planted faults: wrappers around a real format that corrupt what it saves or loads.

They prove the harness catches what it claims to catch. The bit flip is made in the file on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckpt_compat.compare import tensor_bytes
from ckpt_compat.devices import MapLocation
from ckpt_compat.formats import Format, Loaded, get_format
from ckpt_compat.formats.base import ModelFactory
from ckpt_compat.loading import with_metadata


def deflated(source: Path, target: Path, *, padding: int = 0) -> Path:
    """``source``'s members deflated, as a zip tool repacks an archive (torch writes them stored),
    its data.pkl followed by ``padding`` zero bytes, which deflate to almost nothing: a
    decompression bomb whose pickle still reads as before."""
    import zipfile

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data + bytes(padding) if info.filename.endswith("data.pkl") else data)
    return target


def flip_bit(path: Path, needle: bytes, byte: int = 0, bit: int = 0) -> int:
    """Flip one bit of the unique occurrence of ``needle`` in the file; return its offset."""
    data = bytearray(path.read_bytes())
    offset = data.find(needle)
    assert offset >= 0, "tensor bytes not found in the file"
    assert data.find(needle, offset + 1) < 0, "tensor bytes occur twice; pick a longer tensor"
    data[offset + byte] ^= 1 << bit
    path.write_bytes(bytes(data))
    return offset


class Faulty(Format):
    """Delegates to ``inner`` and applies ``after_save(model, path)`` / ``after_load(state)``.

    With ``only``, every load variant of ``inner`` is checked and ``after_load`` applies in that
    variant alone: the others load the file as it is.
    """

    suffix = ".bin"

    def __init__(
        self,
        inner: str,
        *,
        after_save: Callable[[nn.Module, Path], None] | None = None,
        after_load: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        only: Mapping[str, Any] | None = None,
    ) -> None:
        self.inner = get_format(inner)
        self.name = f"faulty_{inner}"  # type: ignore[misc]
        self.description = f"{inner} with a planted fault"  # type: ignore[misc]
        self.suffix = self.inner.suffix  # type: ignore[misc]
        self.holds = self.inner.holds  # type: ignore[misc]
        self.map_location_kinds = self.inner.map_location_kinds  # type: ignore[misc]
        self.after_save, self.after_load, self.only = after_save, after_load, only

    def load_variants(self) -> list[dict[str, Any]]:
        variants = self.inner.load_variants()
        return variants if self.only is not None else variants[:1]

    def save(self, model: nn.Module, path: Path, inputs: Any = None) -> None:
        self.inner.save(model, path, inputs)
        if self.after_save:
            self.after_save(model, path)

    def _save(self, model: nn.Module, path: Path, inputs: Any) -> None:  # pragma: no cover - save() is overridden
        raise NotImplementedError

    def load(
        self,
        path: Path,
        options: Mapping[str, Any],
        map_location: MapLocation,
        fresh_model: ModelFactory,
        *,
        trusted: bool,
    ) -> Loaded:
        loaded = self.inner.load(path, options, map_location, fresh_model, trusted=trusted)
        if self.after_load is None or (self.only is not None and dict(options) != dict(self.only)):
            return loaded
        # The corrupted state keeps the loaded one's ``_metadata``: only the planted fault differs.
        state = loaded.state_dict
        return Loaded(with_metadata(state, self.after_load(dict(state)).items()), loaded.module)


def flip_bit_of(key: str, byte: int = 0, bit: int = 0) -> Callable[[nn.Module, Path], None]:
    def corrupt(model: nn.Module, path: Path) -> None:
        flip_bit(path, bytes(tensor_bytes(model.state_dict()[key]).numpy()), byte, bit)

    return corrupt


def drop(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda state: {k: v for k, v in state.items() if k != key}


def untie(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda state: {k: (v.clone() if k == key else v) for k, v in state.items()}


def retype(key: str, dtype: torch.dtype) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda state: {k: (v.to(dtype) if k == key else v) for k, v in state.items()}


def restride(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The same values of a 2-d tensor in column-major order."""
    return lambda state: {k: (v.t().contiguous().t() if k == key else v) for k, v in state.items()}


def nudge(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Element 0 of ``key`` one ulp up: a value a bitwise check catches and a tolerance would not."""

    def corrupt(state: dict[str, Any]) -> dict[str, Any]:
        t = state[key].clone()
        flat = t.view(-1)
        flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf"), dtype=t.dtype))
        return {**state, key: t}

    return corrupt
