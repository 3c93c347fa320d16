"""What a benchmark round times: one operation on one format, derived from the format registry.

Every registered format is benchmarked by registering it: a ``save`` and a ``load`` op through its
adapter (`Format.save`, `Format.load` + touch), unless the format says why the benchmarks leave it
out (`Format.bench_note`: an alias of another format's bytes, a program with no weights to keep).
Where users call a library directly (``torch.load``, ``safetensors.torch.load_file``), the op times
that call instead of our adapter, and a few formats add the load paths people choose between (mmap
+ touch, into a preallocated model, a lazy subset). ``raw`` ops are the machine's limits: a plain
read or write of a file of the same size, taken in each round's child right after the operation.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ckpt_compat.bench.pagecache import fsync_files
from ckpt_compat.bench.workloads import WorkloadModule, copy_into, template, touch

SUBSET = 10  # lazy subset ops read every SUBSET-th key
RAW = "raw"  # the limits' pseudo-format: a file of bytes, no checkpoint


@dataclass(frozen=True)
class Op:
    """One measured operation on one format. ``complete``: it ends with every byte it returns in
    memory (a real load); lazy ops (an untouched mmap) are measured to show what they defer."""

    format: str
    name: str
    description: str
    complete: bool = True

    @property
    def id(self) -> str:
        return f"{self.format}:{self.name}"

    @property
    def saves(self) -> bool:
        return self.name in ("save", "write")

    @property
    def is_limit(self) -> bool:
        return self.format == RAW


# Load paths beyond the plain load, for the formats whose users choose between them.
EXTRA_LOADS = {
    "torch_zip": [
        Op("torch_zip", "mmap_lazy", "torch.load(mmap=True, weights_only=True), bytes not read", complete=False),
        Op("torch_zip", "mmap_touch", "torch.load(mmap=True, weights_only=True) + touch (read every byte)"),
        Op("torch_zip", "into", "torch.load(mmap=True) + copy_ into a preallocated state dict"),
        Op("torch_zip", "subset", f"torch.load(mmap=True) + touch 1 key in {SUBSET}"),
        Op("torch_zip", "verify", "torch.load(weights_only=True) + compare with the manifest (verify's check)"),
    ],
    "safetensors_file": [
        Op("safetensors_file", "load_lazy", "safetensors.torch.load_file, bytes not read (lazy since 0.7)", False),
        Op("safetensors_file", "into", "safetensors.torch.load_file + copy_ into a preallocated state dict"),
        Op("safetensors_file", "subset", f"safe_open + get_tensor of 1 key in {SUBSET}, touched"),
    ],
}
# The plain load's name and description where it is not `Format.load` + touch.
LOAD = {
    "torch_zip": ("load", "torch.load(weights_only=True)"),
    "torch_legacy": ("load", "torch.load(weights_only=True) of a _use_new_zipfile_serialization=False file"),
    "torch_module": ("load", "torch.load(weights_only=False) of a pickled nn.Module"),
    "safetensors_file": ("load_touch", "safetensors.torch.load_file + touch (read every byte)"),
    "dcp": ("into", "torch.distributed.checkpoint.load into a preallocated state dict"),
    "torchscript_script": ("load", "torch.jit.load"),
    "torch_export": ("load", "torch.export.load + touch the program's state dict"),
}
LIMIT_OPS = [
    Op(RAW, "read", "read() of a file of the same size into fresh memory"),
    Op(RAW, "read_into", "readinto() of a file of the same size into preallocated memory"),
    Op(RAW, "write", "write() + fsync of the same number of bytes from memory"),
]


def _catalogue() -> dict[str, Op]:
    from ckpt_compat.formats import all_formats

    ops: list[Op] = []
    measured = [f for f in all_formats().values() if f.bench_note is None]
    ops += [Op(f.name, "save", "save from memory, fsync included") for f in measured]
    for f in measured:
        name, description = LOAD.get(f.name, ("load", f"{f.description}: load + touch"))
        ops += [Op(f.name, name, description), *EXTRA_LOADS.get(f.name, [])]
    return {op.id: op for op in [*ops, *LIMIT_OPS]}


OPS = _catalogue()


def suffix(fmt: str) -> str:
    """The file name suffix of ``fmt``'s benchmark files (the registry's; torch_legacy and
    torch_module share ``.pt`` with torch_zip there, so the format name goes in front)."""
    from ckpt_compat.formats import get_format

    return ".bin" if fmt == RAW else f".{fmt}{get_format(fmt).suffix}"


def why_unavailable(op: Op) -> str | None:
    """Why ``op`` cannot run with this torch (and installed packages), or None."""
    from ckpt_compat.formats import get_format
    from ckpt_compat.formats.torch_save import load_supports

    if op.is_limit:
        return None
    mmaps = op.format == "torch_zip" and op.name in ("mmap_lazy", "mmap_touch", "into", "subset")
    if mmaps and not load_supports("mmap"):
        return f"torch {torch.__version__} has no torch.load(mmap=True) (added in 2.1)"
    fmt = get_format(op.format)
    return fmt.why_unable_to_save() if op.saves else fmt.why_unavailable()


def prepare_save(fmt: str, state: dict[str, torch.Tensor], path: Path) -> Callable[[], None]:
    """The timed part of saving ``state`` as ``fmt``; what happens before (compiling) is not timed."""
    if fmt == "torch_zip":
        return lambda: torch.save(state, path)
    if fmt == "torch_legacy":
        return lambda: torch.save(state, path, _use_new_zipfile_serialization=False)
    if fmt == "torch_module":
        module = WorkloadModule(state)
        return lambda: torch.save(module, path)
    if fmt == "safetensors_file":
        from safetensors.torch import save_file

        return lambda: save_file(state, str(path))
    if fmt == "dcp":
        import torch.distributed.checkpoint as dcp

        return lambda: dcp.save(state, checkpoint_id=str(path))  # type: ignore[attr-defined]
    if fmt == "torchscript_script":
        scripted = torch.jit.script(WorkloadModule(state))
        return lambda: torch.jit.save(scripted, str(path))
    if fmt == "torch_export":
        program = torch.export.export(WorkloadModule(state), (torch.ones(1),))
        return lambda: torch.export.save(program, str(path))
    if fmt == RAW:
        data = torch.cat([t.reshape(-1).view(torch.uint8) for t in state.values()]).numpy().tobytes()
        return lambda: _write(path, data)
    from ckpt_compat.formats import get_format

    adapter, module = get_format(fmt), WorkloadModule(state)
    return lambda: adapter.save(module, path, torch.ones(1))


def save_here(fmt: str, state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write ``state`` as ``fmt`` in this process, on disk before it returns: a file for the load
    rounds to read, not a measurement (a child per file would cost an interpreter start each)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_save(fmt, state, path)()
    fsync_files(path)
    return path


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def prepare_load(op: Op, path: Path, reference: str) -> Callable[[], Mapping[str, Any]]:
    """The timed part of ``op`` (a load); a preallocated template is made before the clock starts."""
    shapes = json.loads(Path(reference + ".layout.json").read_text())
    target = template(shapes) if op.name in ("into", "read_into") else {}
    records = json.loads(Path(reference + ".records.json").read_text()) if op.name == "verify" else {}
    subset = list(shapes)[::SUBSET]
    p = str(path)
    # Imports happen before the clock: a fresh process pays them once, not per checkpoint.
    if op.format == "safetensors_file":
        from safetensors import safe_open
        from safetensors.torch import load_file
    if op.format == "dcp":
        import torch.distributed.checkpoint as dcp
    if op.name == "verify":
        from ckpt_compat.compare import compare_records
    if op.format == RAW:
        buffer = bytearray(path.stat().st_size if op.name == "read_into" else 0)
        buffer[::4096] = b"\1" * len(buffer[::4096])  # faulted in before the clock, as a template is

    def run() -> Mapping[str, Any]:
        if op.format == RAW:
            with open(p, "rb", buffering=0) as f:
                if op.name == "read_into":
                    f.readinto(buffer)
                    return {"bytes": torch.frombuffer(buffer, dtype=torch.uint8)}
                return {"bytes": torch.frombuffer(f.read(), dtype=torch.uint8)}  # read-only: not written to
        if op.format in ("torch_zip", "torch_legacy"):
            if op.name == "load":
                return touched(torch.load(p, weights_only=True))
            if op.name == "verify":
                state = torch.load(p, weights_only=True)
                if differences := compare_records(records, state):
                    raise AssertionError(f"{path} differs from its manifest: {differences[0]}")
                return state  # type: ignore[no-any-return]
            state = torch.load(p, weights_only=True, mmap=True)
            if op.name == "mmap_lazy":
                return state  # type: ignore[no-any-return]
            if op.name == "mmap_touch":
                return touched(state)
            if op.name == "into":
                return touched(copy_into(target, state))
            return touched({k: state[k] for k in subset})
        if op.format == "torch_module":
            return touched(torch.load(p, weights_only=False).state_dict())
        if op.format == "safetensors_file":
            if op.name == "subset":
                with safe_open(p, "pt") as f:
                    return touched({k: f.get_tensor(k) for k in subset})
            state = load_file(p)
            if op.name == "load_lazy":
                return state
            return touched(copy_into(target, state) if op.name == "into" else state)
        if op.format == "dcp":
            dcp.load(target, checkpoint_id=p)  # type: ignore[attr-defined]
            return touched(target)
        if op.format == "torchscript_script":
            return touched(torch.jit.load(p).state_dict())  # type: ignore[no-untyped-call]
        if op.format == "torch_export":
            return touched(torch.export.load(p).state_dict)
        return touched(_adapter_load(op.format, path, shapes))

    return run


def _adapter_load(fmt: str, path: Path, shapes: Mapping[str, Any]) -> Mapping[str, Any]:
    """A registered format without a library call of its own: its adapter's load, trusted (the
    benchmark wrote the file in this run), with its first load variant."""
    from ckpt_compat.devices import MapLocation
    from ckpt_compat.formats import get_format

    adapter = get_format(fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = adapter.load(
            path,
            adapter.load_variants()[0],
            MapLocation("str", "cpu", "cpu"),
            lambda: WorkloadModule(template(shapes)),
            trusted=True,
        )
    return loaded.state_dict


def touched(state: Mapping[str, Any]) -> Mapping[str, Any]:
    touch(state)
    return state
