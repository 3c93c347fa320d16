"""``torch.save`` / ``torch.load``: the zip format, the legacy format, and whole-model pickles."""

from __future__ import annotations

import functools
import inspect
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

import torch
from torch import nn

from ckpt_compat.atomic import atomic_path
from ckpt_compat.devices import MapLocation
from ckpt_compat.errorinfo import refused_global
from ckpt_compat.formats.base import Format, Loaded, ModelFactory, Unsupported, Untrusted, require_state_dict


@functools.cache
def load_supports(option: str) -> bool:
    """Whether the running torch.load takes ``option`` (mmap arrived in 2.1)."""
    return option in inspect.signature(torch.load).parameters


def default_weights_only() -> bool:
    """What torch.load does when weights_only is not passed: True from torch 2.6 on."""
    decide = getattr(torch.serialization, "_default_to_weights_only", None)
    return bool(decide(None)) if decide is not None else False


def resolved_weights_only(options: Mapping[str, Any]) -> bool:
    """What a cell's ``weights_only`` option (True, False or "default") means on the running torch."""
    requested = options.get("weights_only", True)
    return default_weights_only() if requested == "default" else bool(requested)


def torch_load(path: Path | IO[bytes], options: Mapping[str, Any], map_location: MapLocation, *, trusted: bool) -> Any:
    """torch.load with the cell's options, refusing unsafe unpickling of files nobody vouched for.

    ``weights_only`` is True, False, or "default" (not passed: what users get by default).
    """
    requested = options.get("weights_only", True)
    weights_only = resolved_weights_only(options)
    if not weights_only and not trusted:
        raise Untrusted(
            f"{path}: refusing torch.load(weights_only=False) on a file this run did not write; "
            "pass --trust if you trust where it came from"
        )
    if not trusted and isinstance(path, Path):
        _refuse_torchscript_dispatch(path)
    kwargs: dict[str, Any] = {"map_location": map_location.resolve()}
    if requested != "default":
        kwargs["weights_only"] = weights_only
    if options.get("mmap"):
        if not load_supports("mmap"):
            raise Unsupported(f"torch {torch.__version__}: torch.load has no mmap option (added in 2.1)")
        kwargs["mmap"] = True
    try:
        # str, not Path: torch.load(mmap=True) took only str filenames before 2.3 (pytorch#116103).
        return torch.load(str(path) if isinstance(path, Path) else path, **kwargs)
    except RuntimeError as exc:
        if options.get("mmap") and "mmap can only be used with files saved with" in str(exc):
            raise Unsupported(
                "torch.load(mmap=True) only reads the zip format; this file is the legacy format"
            ) from exc
        raise
    except pickle.UnpicklingError as exc:
        name = refused_global(str(exc))
        if weights_only and name:
            default = " (the weights_only default is True since torch 2.6)" if requested == "default" else ""
            # add_safe_globals arrived in torch 2.4: before it, only weights_only=False loads the file.
            allow = (
                f"allow it with torch.serialization.add_safe_globals([{', '.join(_every_refusal(path, name))}])"
                if hasattr(torch.serialization, "add_safe_globals")
                else "load it with weights_only=False"
            )
            raise Unsupported(
                f"weights_only=True refuses to unpickle {name}{default} — {allow} if you trust the file"
            ) from exc
        raise


def _refuse_torchscript_dispatch(path: Path) -> None:
    """torch <= 2.5 hands a TorchScript archive to torch.jit.load even under weights_only=True,
    which runs the archive's code (CVE-2025-32434): whatever the file claims to be."""
    from ckpt_compat.formats.torchscript import torch_load_refuses_torchscript
    from ckpt_compat.trust import is_torchscript_archive

    if is_torchscript_archive(path) and not torch_load_refuses_torchscript():
        raise Untrusted(
            f"{path}: refusing torch.load on a TorchScript archive from a file this run did not write: torch "
            f"{torch.__version__} hands it to torch.jit.load even with weights_only=True, which runs its code "
            "(CVE-2025-32434); pass --trust if you trust where it came from"
        )


def _variants(*weights_only: bool | str) -> list[dict[str, Any]]:
    """weights_only as given, then with mmap=True on the first (where torch has mmap)."""
    out: list[dict[str, Any]] = [{"weights_only": w} for w in weights_only]
    if load_supports("mmap"):
        out.insert(1, {**out[0], "mmap": True})
    return out


class TorchZip(Format):
    name = "torch_zip"
    description = "torch.save(model.state_dict()) in the default zip format"
    suffix = ".pt"
    holds_training_state = True
    zip_format: ClassVar[bool] = True

    def load_variants(self) -> list[dict[str, Any]]:
        return _variants(True, False, "default")

    def _save(self, model: nn.Module, path: Path, inputs: Any) -> None:
        self._torch_save(model.state_dict(), path)

    def _torch_save(self, obj: Any, path: Path) -> None:
        torch.save(obj, path, _use_new_zipfile_serialization=self.zip_format)

    def save_object(self, obj: Any, path: Path) -> None:
        with atomic_path(path) as tmp:
            self._torch_save(obj, tmp)

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
    zip_format = False


class TorchModule(Format):
    name = "torch_module"
    description = "torch.save(model): the whole module pickled; loads need weights_only=False"
    suffix = ".pt"
    holds = "module"

    def load_variants(self) -> list[dict[str, Any]]:
        return _variants(False, True, "default")

    def _save(self, model: nn.Module, path: Path, inputs: Any) -> None:
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


def _every_refusal(path: Any, first: str) -> list[str]:
    """Every global the weights_only unpickler would refuse in the file, not only the first one it
    met (a whole resnet18 needs twelve classes allowed), from a static scan of its pickles."""
    from ckpt_compat.picklescan import UNRESOLVED

    try:
        refused = _refusals(*_identity(path)) if isinstance(path, Path) else None
    except OSError:
        refused = None
    return [g for g in refused if g != UNRESOLVED] or [first] if refused else [first]


def _identity(path: Path) -> tuple[str, int, int, int, int]:
    """A file as it is now: a rewritten file is another key."""
    st = path.stat()
    return str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=32)
def _refusals(path: str, *identity: int) -> tuple[str, ...] | None:
    """One scan per file however many loads it refuses (a run loads each file a dozen ways)."""
    from ckpt_compat.picklescan import scan_archive, weights_only_refusals

    try:
        refused = weights_only_refusals(list(scan_archive(path).values()))
    except Exception:  # a legacy (non-zip) file or a damaged one: the unpickler's own answer stands
        return None
    return None if refused is None else tuple(refused)
