"""TorchScript: ``torch.jit.script`` or ``torch.jit.trace``, ``torch.jit.save`` / ``torch.jit.load``.

TorchScript is deprecated upstream (torch.export is its successor); the registry and the reports
say so. A model's containers take heterogeneous inputs and are not compiled (their forward is
``torch.jit.unused``); every block inside is scripted, or traced on its own example input, so the
archive holds the whole state and a compiled forward for each block.
"""

from __future__ import annotations

import functools
import inspect
import io
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ckpt_compat.devices import MapLocation
from ckpt_compat.formats.base import Format, Loaded, ModelFactory, Unsupported, Untrusted, first_line
from ckpt_compat.formats.torch_save import resolved_weights_only, torch_load

DEPRECATED = "TorchScript (torch.jit) is deprecated upstream in favour of torch.export"


def _compiled(model: nn.Module, inputs: Any, mode: str) -> torch.jit.ScriptModule:
    """``model`` with every block scripted (or traced on its own input), then the containers.

    Blocks are compiled one by one. In script mode, a block whose forward TorchScript compiles
    only from a call site (the overloaded forward of nn.LSTM / nn.GRU) has no callable forward on
    its own, so it is traced instead. Tracing runs under no_grad, as inference deployments trace,
    so fused inference paths (TransformerEncoderLayer's) are what gets recorded.
    """
    from ckpt_compat.loading import Call, leaf_blocks

    if isinstance(inputs, Call):
        return _compiled_whole(model, inputs, mode)
    model = _containers_copied(model)
    for path, x in leaf_blocks(inputs):
        owner_path, _, name = path.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        block = getattr(owner, name)
        try:
            compiled = torch.jit.script(block) if mode == "script" else None
            if compiled is None or "forward" not in compiled._c._method_names():
                with torch.no_grad():
                    compiled = torch.jit.trace(  # type: ignore[no-untyped-call]
                        block, x if isinstance(x, tuple) else (x,), check_trace=False
                    )
        except Exception as exc:
            raise Unsupported(f"torch.jit.{mode} cannot compile block {path!r} — {first_line(exc)}") from exc
        setattr(owner, name, compiled)
    try:
        return torch.jit.script(model)
    except Exception as exc:
        raise Unsupported(f"torch.jit.script cannot compile this model — {first_line(exc)}") from exc


def _compiled_whole(model: nn.Module, call: Any, mode: str) -> torch.jit.ScriptModule:
    """A user's model compiled whole: scripted, or traced on its example call (keyword
    arguments through ``example_kwarg_inputs`` where this torch has it)."""
    try:
        if mode == "script":
            return torch.jit.script(model)
        options: dict[str, Any] = {"check_trace": False}
        accepted = inspect.signature(torch.jit.trace).parameters
        if "strict" in accepted:  # dict and list outputs (a ModelOutput) need strict=False
            options["strict"] = False
        if call.kwargs:
            if "example_kwarg_inputs" not in accepted:
                raise Unsupported(f"torch {torch.__version__} cannot trace a forward called with keyword arguments")
            options["example_kwarg_inputs"] = dict(call.kwargs)
        with torch.no_grad():
            traced: torch.jit.ScriptModule = torch.jit.trace(model, call.args or None, **options)  # type: ignore[no-untyped-call]
            return traced
    except Unsupported:
        raise
    except Exception as exc:
        raise Unsupported(f"torch.jit.{mode} cannot compile this model — {first_line(exc)}") from exc


def _containers_copied(module: nn.Module) -> nn.Module:
    """A copy of the container modules only, sharing every block, so replacing blocks leaves the
    caller's model alone. (copy.deepcopy would clone Parameters, cutting views of them.)"""
    from ckpt_compat.specs import Bundle, BundleList

    if isinstance(module, Bundle):
        return Bundle({name: _containers_copied(child) for name, child in module.items()})
    if isinstance(module, BundleList):
        return BundleList([_containers_copied(child) for child in module])
    return module


class TorchScript(Format):
    name = "torchscript_script"
    description = "torch.jit.script(model) -> torch.jit.save / torch.jit.load"
    suffix = ".pt"
    holds = "module"
    preserves_strides = False  # archives store a strided view's elements compacted
    map_location_kinds = ("str", "device")  # torch.jit.load refuses dicts and callables
    deprecated = DEPRECATED
    heavy = True
    mode: ClassVar[str] = "script"

    def load_variants(self) -> list[dict[str, Any]]:
        # torch.load on a TorchScript archive: handed to torch.jit.load with weights_only=False,
        # refused with weights_only=True (and so by default since torch 2.6).
        return [
            {"loader": "jit.load"},
            {"loader": "torch.load", "weights_only": False},
            {"loader": "torch.load", "weights_only": True},
        ]

    def _save(self, model: nn.Module, path: Path, inputs: Any) -> None:
        # Into memory, then written by Python: torch.jit.save's C++ writer aborts the whole
        # process (std::terminate) when the disk fills, where Python raises ENOSPC.
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # deprecation and tracer warnings: the report says so once
            warnings.simplefilter("ignore")
            torch.jit.save(_compiled(model, inputs, self.mode), buffer)
        path.write_bytes(buffer.getvalue())

    def load(
        self,
        path: Path,
        options: Mapping[str, Any],
        map_location: MapLocation,
        fresh_model: ModelFactory,
        *,
        trusted: bool,
    ) -> Loaded:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._load(path, options, map_location, trusted=trusted)

    def _load(self, path: Path, options: Mapping[str, Any], map_location: MapLocation, *, trusted: bool) -> Loaded:
        if options.get("loader") != "torch.load":
            if not trusted:
                raise Untrusted(
                    f"{path}: refusing torch.jit.load on a file this run did not write: it runs the archive's "
                    "code; pass --trust if you trust where it came from"
                )
            module = torch.jit.load(str(path), map_location=map_location.resolve())  # type: ignore[no-untyped-call]
            return Loaded(module.state_dict(), module)
        weights_only = resolved_weights_only(options)
        try:
            module = torch_load(path, options, map_location, trusted=trusted)
        except RuntimeError as exc:
            if "weights_only" in str(exc) and "TorchScript" in str(exc):
                raise Unsupported(
                    "torch.load(weights_only=True) refuses TorchScript archives by design — use torch.jit.load"
                ) from exc
            raise
        unsafe = None
        if weights_only:  # the safe unpickler cannot build a ScriptModule: torch.jit.load ran instead
            unsafe = (
                f"torch {torch.__version__}: torch.load(weights_only=True) ran torch.jit.load on a TorchScript "
                "archive, which executes its code (CVE-2025-32434)"
            )
        return Loaded(module.state_dict(), module, unsafe=unsafe)


@functools.cache
def torch_load_refuses_torchscript() -> bool:
    """Whether the running torch.load(weights_only=True) refuses a TorchScript archive (2.6 and
    later) rather than handing it to torch.jit.load. Probed on an archive made here."""

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Probe()), buffer)
        buffer.seek(0)
        try:
            torch.load(buffer, weights_only=True)
        except Exception:
            return True
    return False


class TorchTrace(TorchScript):
    name = "torchscript_trace"
    bench_note = "the same TorchScript archive as torchscript_script (traced instead of scripted)"
    description = "torch.jit.trace of every block -> torch.jit.save / torch.jit.load"
    mode = "trace"
