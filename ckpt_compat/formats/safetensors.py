"""safetensors: ``save_file`` / ``load_file`` on state dicts, ``save_model`` / ``load_model`` on modules."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckpt_compat.devices import MapLocation
from ckpt_compat.formats.base import Format, Loaded, ModelFactory, Unsupported


def _why_unavailable() -> str | None:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError as exc:
        return f"safetensors is not importable ({exc}); pip install 'ckpt-compat[safetensors]'"
    return None


def _version() -> str:
    try:
        return importlib.metadata.version("safetensors")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _refusal(exc: Exception) -> Unsupported | None:
    """The by-design refusals of safetensors, told apart from real errors."""
    text = str(exc)
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], torch.dtype):
        return Unsupported(f"safetensors {_version()} has no code for dtype {exc.args[0]}")
    if "share memory" in text or "None is covering the entire storage" in text:
        return Unsupported(
            "safetensors refuses tensors that share memory (ties, views) by design — " + " ".join(text.split())[:240]
        )
    if "non contiguous tensor" in text:
        return Unsupported(
            f"safetensors save_file refuses non-contiguous tensors by design — {' '.join(text.split())[:120]}"
        )
    return None


def _target(map_location: MapLocation) -> str:
    if map_location.target == "meta":
        raise Unsupported("safetensors cannot load onto the meta device")
    return map_location.target


class SafetensorsFile(Format):
    name = "safetensors_file"
    description = "safetensors.torch.save_file(state_dict) / load_file"
    suffix = ".safetensors"
    map_location_kinds = ("str",)
    # save_file refuses shared storage and strided tensors, so what loads back is contiguous.
    preserves_strides = False

    def why_unavailable(self) -> str | None:
        return _why_unavailable()

    def _save(self, model: nn.Module, path: Path, inputs: Any) -> None:
        from safetensors.torch import save_file

        try:
            save_file(dict(model.state_dict()), str(path))
        except (RuntimeError, ValueError, KeyError) as exc:
            raise (_refusal(exc) or exc) from exc

    def load(
        self,
        path: Path,
        options: Mapping[str, Any],
        map_location: MapLocation,
        fresh_model: ModelFactory,
        *,
        trusted: bool,
    ) -> Loaded:
        from safetensors.torch import load_file

        return Loaded(load_file(str(path), device=_target(map_location)))


class SafetensorsModel(Format):
    name = "safetensors_model"
    bench_note = "the same file as safetensors_file (loaded into a model)"
    description = "safetensors.torch.save_model(model) / load_model into a fresh model"
    suffix = ".safetensors"
    map_location_kinds = ("str",)

    def why_unavailable(self) -> str | None:
        return _why_unavailable()

    def _save(self, model: nn.Module, path: Path, inputs: Any) -> None:
        from safetensors.torch import save_model

        try:
            save_model(model, str(path))
        except (RuntimeError, ValueError, KeyError) as exc:
            raise (_refusal(exc) or exc) from exc

    def load(
        self,
        path: Path,
        options: Mapping[str, Any],
        map_location: MapLocation,
        fresh_model: ModelFactory,
        *,
        trusted: bool,
    ) -> Loaded:
        from safetensors.torch import load_model

        model = fresh_model()
        load_model(model, str(path), strict=True, device=_target(map_location))
        return Loaded(model.state_dict(), model)
