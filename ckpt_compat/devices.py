"""Which devices exist here, and every way ``map_location`` can say "load onto that device"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

MAP_LOCATION_KINDS = ("str", "device", "dict", "callable")


def available_devices() -> list[str]:
    """cpu and meta always; cuda when a CUDA device is present."""
    devices = ["cpu", "meta"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


def producer_devices() -> list[str]:
    """Devices a checkpoint can be saved from (meta has no data to save)."""
    return [d for d in available_devices() if d != "meta"]


def location_tag(device: str) -> str:
    """The location tag torch.save records for storages on ``device`` (``cuda`` -> ``cuda:0``)."""
    return "cuda:0" if device == "cuda" else device


@dataclass(frozen=True)
class MapLocation:
    """``map_location`` in one of its four spellings, moving storages saved on ``source`` to ``target``."""

    kind: str
    source: str
    target: str

    def resolve(self) -> str | torch.device | dict[str, str] | Callable[[Any, str], Any]:
        if self.kind == "str":
            return self.target
        if self.kind == "device":
            return torch.device(self.target)
        if self.kind == "dict":
            return {location_tag(self.source): self.target}
        if self.target == "cpu":
            return _to_cpu
        return _to_cuda

    def label(self) -> str:
        return f"{self.kind}:{self.target}"


def _to_cpu(storage: Any, location: str) -> Any:
    return storage.cpu()


def _to_cuda(storage: Any, location: str) -> Any:
    return storage.cuda()


def map_locations(source: str, target: str) -> list[MapLocation]:
    """Every spelling of map_location that torch accepts for ``source`` -> ``target``.

    A callable receives storages and cannot produce meta ones, so meta gets three spellings.
    """
    kinds = [k for k in MAP_LOCATION_KINDS if not (k == "callable" and target == "meta")]
    return [MapLocation(k, source, target) for k in kinds]
