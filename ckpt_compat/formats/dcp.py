"""torch.distributed.checkpoint (DCP), single process, no process group; and the conversions
``dcp_to_torch_save`` / ``torch_save_to_dcp`` in both directions.

A DCP checkpoint is a directory. It is written beside its destination and renamed into place, so
a reader never sees half of one. DCP documents no compatibility across torch versions.
"""

from __future__ import annotations

import inspect
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ckpt_compat.atomic import atomic_dir
from ckpt_compat.devices import MapLocation
from ckpt_compat.distributed import dcp_load, dcp_save, ordinary_errors, takes_checkpoint_id
from ckpt_compat.formats.base import Format, Loaded, ModelFactory, Unsupported, Untrusted

CAVEAT = "torch.distributed.checkpoint documents no compatibility across torch versions"


def _why_unavailable() -> str | None:
    if not torch.distributed.is_available():
        return f"torch {torch.__version__} was built without torch.distributed"
    try:
        import torch.distributed.checkpoint as dcp
    except ImportError as exc:
        return f"torch {torch.__version__} has no torch.distributed.checkpoint ({exc})"
    if not takes_checkpoint_id() and not hasattr(dcp, "save_state_dict"):
        return f"torch {torch.__version__} has no torch.distributed.checkpoint.save or save_state_dict"
    return None


def _why_no_format_utils() -> str | None:
    try:
        from torch.distributed.checkpoint import format_utils  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.distributed.checkpoint.format_utils (added in 2.3)"
    return None


# What a DCP .metadata pickle may name when nobody vouched for it: the metadata dataclasses and
# enums of every release (2.0 to 2.15 write these; read from the committed fixtures), torch.Size,
# dtypes, layouts and a path (StorageMeta.checkpoint_id). Each is harmless to construct with any
# argument; anything else (a function, os.system) makes DCP's plain pickle.load run code.
_METADATA_GLOBALS = frozenset(
    {
        "torch.Size",
        "torch.serialization._get_layout",
        "pathlib.PosixPath",
        "pathlib.PurePosixPath",
        "collections.OrderedDict",
        "torch.distributed.checkpoint.filesystem._StorageInfo",
        "torch.distributed._shard.sharded_tensor.metadata.MEM_FORMAT_ENCODING",
        "torch.distributed._shard.sharded_tensor.metadata.TensorProperties",
        *(
            f"torch.distributed.checkpoint.metadata.{name}"
            for name in (
                "Metadata",
                "MetadataIndex",
                "StorageMeta",
                "TensorProperties",
                "TensorStorageMetadata",
                "ChunkStorageMetadata",
                "_MEM_FORMAT_ENCODING",
            )
        ),
    }
)


def untrusted_refusal(path: Path) -> str | None:
    """Why DCP's reader, which unpickles ``.metadata`` with plain pickle and some values with
    weights_only=False, must not see this checkpoint unless someone vouches for it; None when the
    static scan shows it cannot run code here."""
    from ckpt_compat.picklescan import scan

    metadata = path / ".metadata"
    try:
        with open(metadata, "rb") as stream:  # scanned as far as its pickle goes, not read whole
            found = scan(stream)
    except OSError as exc:
        return f"its .metadata cannot be read ({exc.strerror})"
    if found.error:
        return f"its .metadata is not a well-formed pickle ({found.error})"
    if "torch.distributed.checkpoint.metadata.BytesStorageMetadata" in found.globals:
        return "it holds non-tensor values, which DCP's reader unpickles with weights_only=False"
    names = [g for g in found.globals if g not in _METADATA_GLOBALS and not _is_dtype(g)]
    if names:
        return f"its .metadata pickle names {', '.join(names)}, which DCP's reader would import and call"
    if not _reads_tensors_weights_only():
        return f"torch {torch.__version__}'s DCP reader unpickles tensor data with weights_only=False"
    from ckpt_compat.formats.torchscript import torch_load_refuses_torchscript

    if not torch_load_refuses_torchscript():
        return (
            f"torch {torch.__version__}'s DCP reader loads tensor data with torch.load, which runs a TorchScript "
            "archive's code even under weights_only=True (CVE-2025-32434)"
        )
    return None


def metadata_globals() -> frozenset[str]:
    """Every global a DCP .metadata pickle of any release names: its classes (non-tensor values'
    BytesStorageMetadata too) and torch's dtypes; what `dcpmeta` reads as inert records."""
    dtypes = {f"torch.{name}" for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}
    return _METADATA_GLOBALS | {"torch.distributed.checkpoint.metadata.BytesStorageMetadata"} | dtypes


def _is_dtype(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    return module == "torch" and isinstance(getattr(torch, attr, None), torch.dtype)


def _reads_tensors_weights_only() -> bool:
    """torch 2.4 and later pass weights_only=True when DCP's file reader loads tensor data;
    earlier releases call plain torch.load (read in the installed torch's own source)."""
    import torch.distributed.checkpoint.filesystem as filesystem

    reader = getattr(filesystem, "_FileSystemReader", None) or getattr(filesystem, "FileSystemReader", None)
    try:
        return "weights_only=True" in inspect.getsource(getattr(reader, "read_data"))  # noqa: B009
    except (OSError, TypeError, AttributeError):
        return False


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
        with atomic_dir(path) as tmp, warnings.catch_warnings(), ordinary_errors():
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
        refusal = None if trusted else untrusted_refusal(path)
        if refusal:
            raise Untrusted(
                f"{path}: refusing to load a DCP checkpoint this run did not write: {refusal}; "
                "pass --trust if you trust where it came from"
            )
        with warnings.catch_warnings(), ordinary_errors():
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
    bench_note = "reads torch_zip files through DCP's loader: torch_zip and dcp are measured"
    description = "torch.save(state_dict) -> format_utils.torch_save_to_dcp -> DCP load"
    via_torch_save = True

    def why_unable_to_save(self) -> str | None:
        return self.why_unavailable() or _why_no_format_utils()

    def load_variants(self) -> list[dict[str, Any]]:
        return [{"loader": "dcp.load"}]
