"""The format registry. Third-party formats register through the ``ckpt_compat.formats`` entry
point group: the entry point names a `Format` subclass, which is instantiated once."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

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
    "Unloadable",
    "Unsupported",
    "Untrusted",
    "all_formats",
    "availability",
    "availability_from",
    "available_formats",
    "get_format",
    "named_formats",
    "parse_format_list",
    "why_not_usable",
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


class Unloadable(Format):
    """A third-party format whose entry point does not load (its package broken, half-installed,
    or naming what is no Format): unavailable, with why, under the entry point's name. One broken
    plugin must not stop every command, nor drop out of the reports unsaid."""

    reason: ClassVar[str] = ""
    description = "a third-party format whose entry point does not load"
    suffix = ""

    def why_unavailable(self) -> str | None:
        return self.reason

    def _save(self, model: nn.Module, path: Path, inputs: Any) -> None:
        raise Unsupported(self.reason)

    def load(self, path: Path, options: Any, map_location: Any, fresh_model: Any, *, trusted: bool) -> Loaded:
        raise Unsupported(self.reason)


def _plugin(ep: importlib.metadata.EntryPoint) -> Format:
    """The format an entry point names, or an `Unloadable` saying why not."""
    from ckpt_compat.errorinfo import does_not_load, entry_point

    try:
        cls = ep.load()
    except Exception as exc:
        reason = does_not_load(ep, exc)
    else:
        if isinstance(cls, type) and issubclass(cls, Format) and not inspect.isabstract(cls):
            made: Format = cls()
            return made
        reason = (
            f"{entry_point(ep)} is {cls!r:.80}, not a ckpt_compat Format subclass; fix or uninstall the package "
            "that provides it"
        )
    unloadable: type[Unloadable] = type("Unloadable", (Unloadable,), {"name": ep.name, "reason": reason})
    return unloadable()


@functools.cache
def all_formats() -> dict[str, Format]:
    """Every registered format by name, built-ins first, available or not."""
    formats = {cls.name: cls() for cls in BUILTIN}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        plugin = _plugin(ep)
        formats.setdefault(plugin.name, plugin)
    return formats


def get_format(name: str) -> Format:
    formats = all_formats()
    if name not in formats:
        raise UnknownFormat(f"unknown format {name!r}; known: {', '.join(formats)}")
    return formats[name]


# Each format's availability as a worker process found it (same interpreter, same packages), while
# `availability_from` holds: a command with workers need not import mlflow, onnx and DCP itself only
# to say whether they import (~5 s of its CPU); the workers import them anyway to use them.
_LEARNED: dict[str, tuple[str | None, str | None]] = {}


def availability(fmt: Format) -> tuple[str | None, str | None]:
    """(why ``fmt`` cannot be read here, why it cannot be written here), None where it can."""
    learned = _LEARNED.get(fmt.name)
    if learned is not None:
        return learned
    return fmt.why_unavailable(), fmt.why_unable_to_save()


def why_not_usable(fmt: Format) -> str | None:
    """`Format.why_not_usable`, from `availability`."""
    unreadable, unwritable = availability(fmt)
    return unreadable or unwritable


def availability_task(message: dict[str, Any]) -> dict[str, list[str | None]]:
    """The ``formats.availability`` task of `workers`: every registered format's `availability`."""
    return {name: list(availability(f)) for name, f in all_formats().items()}


@contextlib.contextmanager
def availability_from(answer: Any) -> Iterator[None]:
    """Within the block, `availability` of each format is ``answer``'s, a worker's answer to the
    ``formats.availability`` task; a format it does not name (registered in this process only), or
    every format when the task failed, is found here as before."""
    learned: dict[str, tuple[str | None, str | None]] = {}
    if isinstance(answer, dict) and "error" not in answer:
        learned = {
            name: (pair[0], pair[1]) for name, pair in answer.items() if isinstance(pair, list) and len(pair) == 2
        }
    _LEARNED.update(learned)
    try:
        yield
    finally:
        for name in learned:
            _LEARNED.pop(name, None)


def available_formats() -> list[Format]:
    """Formats this torch can both write and read: what a round trip runs."""
    return [f for f in all_formats().values() if why_not_usable(f) is None]


def named_formats(text: str) -> list[Format]:
    """``"a,b"`` -> those formats, usable here or not; raises `UnknownFormat` naming the culprit."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UnknownFormat(f"no format named in {text!r}; known: {', '.join(all_formats())}")
    return [get_format(n) for n in names]


def parse_format_list(text: str) -> list[Format]:
    """``"a,b"`` -> those formats; raises `UnknownFormat` or `Unsupported` naming the culprit."""
    chosen = named_formats(text)
    for f in chosen:
        reason = why_not_usable(f)
        if reason:
            raise Unsupported(f"format {f.name!r} is unavailable here: {reason}")
    return chosen
