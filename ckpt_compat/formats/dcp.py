"""torch.distributed.checkpoint (DCP), single process, no process group; and the conversions
``dcp_to_torch_save`` / ``torch_save_to_dcp`` in both directions.

A DCP checkpoint is a directory. It is written beside its destination and renamed into place, so
a reader never sees half of one. DCP documents no compatibility across torch versions.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ckpt_compat.devices import MapLocation
from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.formats.base import Format, Loaded, ModelFactory, Unsupported

CAVEAT = "torch.distributed.checkpoint documents no compatibility across torch versions"


def _why_unavailable() -> str | None:
    if not torch.distributed.is_available():
        return f"torch {torch.__version__} was built without torch.distributed"
    try:
        import torch.distributed.checkpoint as dcp
    except ImportError as exc:
        return f"torch {torch.__version__} has no torch.distributed.checkpoint ({exc})"
    if not _takes_checkpoint_id() and not hasattr(dcp, "save_state_dict"):
        return f"torch {torch.__version__} has no torch.distributed.checkpoint.save or save_state_dict"
    return None


def _why_no_format_utils() -> str | None:
    try:
        from torch.distributed.checkpoint import format_utils  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.distributed.checkpoint.format_utils (added in 2.3)"
    return None


def _takes_checkpoint_id() -> bool:
    """dcp.save / dcp.load(checkpoint_id=...) arrived in 2.3; before, a storage writer or reader."""
    import torch.distributed.checkpoint as dcp

    save = getattr(dcp, "save", None)
    return save is not None and "checkpoint_id" in inspect.signature(save).parameters


def dcp_save(state: dict[str, Any], path: Path) -> None:
    """Save ``state`` as a DCP checkpoint from this one process, with the API this torch has."""
    import torch.distributed.checkpoint as dcp

    if _takes_checkpoint_id():
        dcp.save(state, checkpoint_id=str(path))  # type: ignore[attr-defined]
        return
    logging.getLogger("torch.distributed.checkpoint._dedup_tensors").setLevel(logging.WARNING)  # logs every save
    # torch 2.0-2.2: save_state_dict, where one process without a process group says no_dist.
    save = getattr(dcp, "save_state_dict")  # noqa: B009 - not in the typed stubs
    save(state, storage_writer=getattr(dcp, "FileSystemWriter")(str(path)), no_dist=True)  # noqa: B009


def dcp_load(template: dict[str, Any], path: Path) -> None:
    """Fill ``template``'s tensors from a DCP checkpoint, with the API this torch has."""
    import torch.distributed.checkpoint as dcp

    if _takes_checkpoint_id():
        dcp.load(template, checkpoint_id=str(path))  # type: ignore[attr-defined]
        return
    # torch 2.0-2.2: load_state_dict. (2.2's new dcp.load ignores no_dist and all-gathers the keys
    # over a default process group that one process does not have.)
    load = getattr(dcp, "load_state_dict")  # noqa: B009 - not in the typed stubs
    load(template, storage_reader=getattr(dcp, "FileSystemReader")(str(path)), no_dist=True)  # noqa: B009


@contextlib.contextmanager
def _ordinary_errors() -> Iterator[None]:
    """DCP raises CheckpointException, a BaseException: make it an error like any other."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        raise
    except BaseException as exc:
        # CheckpointException.failures maps a rank to (the exception it raised, its traceback).
        failures = getattr(exc, "failures", None) or {}
        rank, (inner, *_) = next(iter(failures.items()), (None, (None,)))
        if isinstance(inner, BaseException):
            raise CheckpointException(f"rank {rank} failed: {ErrorInfo.of(inner)}") from inner
        raise CheckpointException(str(exc)) from exc


class CheckpointException(Exception):
    """DCP's CheckpointException (a BaseException) as an ordinary error; its cause is the first
    failing rank's own exception."""


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """A temporary directory beside ``path`` that replaces it on success and is removed otherwise."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class DCP(Format):
    name = "dcp"
    description = "torch.distributed.checkpoint.save(state_dict) / load, one process, no process group"
    suffix = ".dcp"
    map_location_kinds = ("str",)
    # Loading fills a template (the fresh model's own tensors); the conversion to a torch.save
    # file writes every tensor separately and contiguous.
    preserves_strides = False
    preserves_aliasing = False
    caveat = CAVEAT
    heavy = True  # cheap to run, but its directories are large: sampled in `run` and in fixtures
    via_torch_save: ClassVar[bool] = False

    def why_unavailable(self) -> str | None:
        return _why_unavailable()

    def load_variants(self) -> list[dict[str, Any]]:
        variants = [{"loader": "dcp.load"}]
        if _why_no_format_utils() is None:
            variants.append({"loader": "dcp_to_torch_save"})
        return variants

    def save(self, model: nn.Module, path: Path, inputs: Any = None) -> None:
        state = dict(model.state_dict())
        with atomic_dir(path) as tmp, warnings.catch_warnings(), _ordinary_errors():
            warnings.simplefilter("ignore")
            if self.via_torch_save:
                from torch.distributed.checkpoint.format_utils import torch_save_to_dcp

                with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
                    torch.save(state, Path(scratch) / "state.pt")
                    torch_save_to_dcp(str(Path(scratch) / "state.pt"), str(tmp))
            else:
                dcp_save(state, tmp)

    def _save(self, model: nn.Module, path: Path, inputs: Any) -> None:  # pragma: no cover - save() overrides
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
        if map_location.target == "meta":
            raise Unsupported("DCP loads into existing tensors; meta tensors have no storage to load into")
        with warnings.catch_warnings(), _ordinary_errors():
            warnings.simplefilter("ignore")
            if options.get("loader") == "dcp_to_torch_save":
                from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

                with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
                    dcp_to_torch_save(str(path), str(Path(scratch) / "state.pt"))
                    state = torch.load(
                        Path(scratch) / "state.pt", map_location=map_location.resolve(), weights_only=True
                    )
                return Loaded(state)
            model = fresh_model()
            template = dict(model.state_dict())
            dcp_load(template, path)
            return Loaded(template, model)


class DCPFromTorchSave(DCP):
    name = "dcp_from_torch_save"
    description = "torch.save(state_dict) -> format_utils.torch_save_to_dcp -> DCP load"
    via_torch_save = True

    def why_unable_to_save(self) -> str | None:
        return self.why_unavailable() or _why_no_format_utils()

    def load_variants(self) -> list[dict[str, Any]]:
        return [{"loader": "dcp.load"}]
