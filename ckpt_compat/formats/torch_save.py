"""``torch.save`` / ``torch.load``: the zip format, the legacy format, and whole-model pickles."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckpt_compat.devices import MapLocation
from ckpt_compat.formats.base import Format, Loaded, ModelFactory, Unsupported, Untrusted, require_state_dict


@functools.cache
def load_supports(option: str) -> bool:
    """Whether the running torch.load takes ``option`` (mmap arrived in 2.1)."""
    return option in inspect.signature(torch.load).parameters


def torch_load(path: Path, options: Mapping[str, Any], map_location: MapLocation, *, trusted: bool) -> Any:
    """torch.load with the cell's options, refusing unsafe unpickling of files nobody vouched for."""
    weights_only = options.get("weights_only", True)
    if not weights_only and not trusted:
        raise Untrusted(
            f"{path}: refusing torch.load(weights_only=False) on a file this run did not write; "
            "pass --trust if you trust where it came from"
        )
    kwargs: dict[str, Any] = {"map_location": map_location.resolve(), "weights_only": weights_only}
    if options.get("mmap"):
        if not load_supports("mmap"):
            raise Unsupported(f"torch {torch.__version__}: torch.load has no mmap option (added in 2.1)")
        kwargs["mmap"] = True
    try:
        return torch.load(path, **kwargs)
    except RuntimeError as exc:
        if options.get("mmap") and "mmap can only be used with files saved with" in str(exc):
            raise Unsupported(
                "torch.load(mmap=True) only reads the zip format; this file is the legacy format"
            ) from exc
        raise


def _mmap_variants(base: dict[str, Any]) -> list[dict[str, Any]]:
    return [base, {**base, "mmap": True}] if load_supports("mmap") else [base]


class TorchZip(Format):
    name = "torch_zip"
    description = "torch.save(model.state_dict()) in the default zip format"
    suffix = ".pt"

    def load_variants(self) -> list[dict[str, Any]]:
        return _mmap_variants({"weights_only": True})

    def _save(self, model: nn.Module, path: Path) -> None:
        torch.save(model.state_dict(), path)

    def load(
        self,
        path: Path,
        options: Mapping[str, Any],
        map_location: MapLocation,
        fresh_model: ModelFactory,
        *,
        trusted: bool,
    ) -> Loaded:
        return Loaded(require_state_dict(torch_load(path, options, map_location, trusted=trusted), path))


class TorchLegacy(TorchZip):
    name = "torch_legacy"
    description = "torch.save(..., _use_new_zipfile_serialization=False): the pre-1.6 format"

    def _save(self, model: nn.Module, path: Path) -> None:
        torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)


class TorchModule(Format):
    name = "torch_module"
    description = "torch.save(model): the whole module pickled; loads need weights_only=False"
    suffix = ".pt"
    holds = "module"

    def load_variants(self) -> list[dict[str, Any]]:
        return _mmap_variants({"weights_only": False})

    def _save(self, model: nn.Module, path: Path) -> None:
        try:
            torch.save(model, path)
        except RuntimeError as exc:
            if "parametrized modules is only supported through state_dict" in str(exc):
                raise Unsupported(
                    "torch refuses to pickle a module with parametrizations by design; save its state_dict"
                ) from exc
            raise

    def load(
        self,
        path: Path,
        options: Mapping[str, Any],
        map_location: MapLocation,
        fresh_model: ModelFactory,
        *,
        trusted: bool,
    ) -> Loaded:
        module = torch_load(path, options, map_location, trusted=trusted)
        if not isinstance(module, nn.Module):
            raise TypeError(f"{path}: expected a pickled nn.Module, got {type(module).__name__}")
        return Loaded(module.state_dict(), module)
