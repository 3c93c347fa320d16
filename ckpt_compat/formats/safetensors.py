"""safetensors: ``save_file`` / ``load_file`` on state dicts, ``save_model`` / ``load_model`` on modules."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckpt_compat.compare import aliasing_groups
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


def _refusal(exc: Exception, state: Mapping[str, Any]) -> Unsupported | None:
    """The by-design refusals of safetensors, told apart from real errors."""
    text = str(exc)
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], torch.dtype):
        return Unsupported(f"safetensors {_version()} has no code for dtype {exc.args[0]}")
    if "share memory" in text or "None is covering the entire storage" in text:
        # safetensors names the keys as Python sets, whose order changes with the hash seed: the
        # groups come from the state dict instead, sorted, so a report repeats.
        shared = sorted(sorted(g) for g in aliasing_groups(state))
        if "None is covering the entire storage" in text:
            alone = [[k] for k, t in state.items() if isinstance(t, torch.Tensor) and not any(k in g for g in shared)]
            uncovered = sorted(g for g in shared + alone if not any(_covers(state[k]) for k in g))
            what = "no tensor covers the whole of its storage: " + ", ".join(f"({', '.join(g)})" for g in uncovered)
        else:
            what = "tensors sharing a storage: " + ", ".join(f"({', '.join(g)})" for g in shared)
        return Unsupported(f"safetensors refuses tensors that share memory (ties, views) by design — {what}")
    if "non contiguous tensor" in text:
        return Unsupported(
            f"safetensors save_file refuses non-contiguous tensors by design — {' '.join(text.split())[:120]}"
        )
    return None


def _raise_refusal(exc: Exception, state: Mapping[str, Any]) -> None:
    """Raise `_refusal`'s Unsupported where ``exc`` is one, without safetensors' own exception as its
    cause: that names the keys as sets, and a cause is part of a report."""
    refusal = _refusal(exc, state)
    if refusal is not None:
        raise refusal from None


def _covers(t: torch.Tensor) -> bool:
    """Whether ``t`` views the whole of its storage (a zero-byte tensor does)."""
    storage = t.untyped_storage()
    return t.data_ptr() == storage.data_ptr() and t.numel() * t.element_size() == storage.nbytes()


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

        state = dict(model.state_dict())
        try:
            save_file(state, str(path))
        except (RuntimeError, ValueError, KeyError) as exc:
            _raise_refusal(exc, state)
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
            _raise_refusal(exc, model.state_dict())
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
        from safetensors.torch import load_model

        model = fresh_model()
        load_model(model, str(path), strict=True, device=_target(map_location))
        return Loaded(model.state_dict(), model)
