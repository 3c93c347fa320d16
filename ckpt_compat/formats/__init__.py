"""The format registry. Third-party formats register through the ``ckpt_compat.formats`` entry
point group: the entry point names a `Format` subclass, which is instantiated once."""

from __future__ import annotations

import functools
import importlib.metadata

from ckpt_compat.formats.base import Format, Loaded, Unsupported, Untrusted
from ckpt_compat.formats.dcp import DCP, DCPFromTorchSave
from ckpt_compat.formats.onnx import ONNX
from ckpt_compat.formats.safetensors import SafetensorsFile, SafetensorsModel
from ckpt_compat.formats.torch_export import TorchExport
from ckpt_compat.formats.torch_save import TorchLegacy, TorchModule, TorchZip
from ckpt_compat.formats.torchscript import TorchScript, TorchTrace

__all__ = [
    "Format",
    "Loaded",
    "UnknownFormat",
    "Unsupported",
    "Untrusted",
    "all_formats",
    "available_formats",
    "get_format",
    "parse_format_list",
]

ENTRY_POINT_GROUP = "ckpt_compat.formats"
BUILTIN: tuple[type[Format], ...] = (
    TorchZip,
    TorchLegacy,
    TorchModule,
    SafetensorsFile,
    SafetensorsModel,
    TorchScript,
    TorchTrace,
    TorchExport,
    DCP,
    DCPFromTorchSave,
    ONNX,
)


class UnknownFormat(ValueError):
    pass


@functools.cache
def all_formats() -> dict[str, Format]:
    """Every registered format by name, built-ins first, available or not."""
    formats = {cls.name: cls() for cls in BUILTIN}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Format)):
            raise TypeError(f"entry point {ep.name!r} = {ep.value!r} is not a ckpt_compat Format subclass")
        formats.setdefault(cls.name, cls())
    return formats


def get_format(name: str) -> Format:
    formats = all_formats()
    if name not in formats:
        raise UnknownFormat(f"unknown format {name!r}; known: {', '.join(formats)}")
    return formats[name]


def available_formats() -> list[Format]:
    """Formats this torch can both write and read: what a round trip runs."""
    return [f for f in all_formats().values() if f.why_not_usable() is None]


def parse_format_list(text: str) -> list[Format]:
    """``"a,b"`` -> those formats; raises `UnknownFormat` or `Unsupported` naming the culprit."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UnknownFormat(f"no format named in {text!r}; known: {', '.join(all_formats())}")
    chosen = [get_format(n) for n in names]
    for f in chosen:
        reason = f.why_not_usable()
        if reason:
            raise Unsupported(f"format {f.name!r} is unavailable here: {reason}")
    return chosen
