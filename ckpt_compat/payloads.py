"""Hostile checkpoints with a harmless canary: loading one runs code only if the loader lets it,
and the code only creates a marker file (or, for a bomb, costs time and memory).

They exist to prove that no loader ckpt-compat runs on a file nobody vouched for executes code
(tests), and to measure which torch releases' loaders block which class (`ckpt-compat security`).
Every file is written by the running torch; each class names the loader it targets.
"""

from __future__ import annotations

import functools
import io
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class _Canary:
    """Unpickles to ``open(marker, "a")``: the file appears exactly when the pickle's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "a"))


class _IndirectCanary(_Canary):
    """The same call, reached through functools.partial: a loader must refuse the gadget too."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (functools.partial(open, self.marker, "a"), ())


class _NestedLoad:
    """A second, unrestricted torch.load hidden inside the first (torch.storage._load_from_bytes)."""

    def __init__(self, inner: bytes) -> None:
        self.inner = inner

    def __reduce__(self) -> tuple[Any, ...]:
        return (torch.storage._load_from_bytes, (self.inner,))


class _ScriptedCanary(torch.nn.Module):
    """A TorchScript module whose ``__setstate__``, run by torch.jit.load, creates the marker
    (``torch.from_file(..., shared=True)`` creates the file it maps)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.mapped = torch.zeros(1, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        # Kept in an attribute: TorchScript drops an unused call as dead code.
        self.mapped = torch.from_file(self.marker, True, 1, dtype=torch.uint8)


def _saved(obj: Any, protocol: int = 2) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_protocol=protocol)
    return buffer.getvalue()


def _reduce(protocol: int) -> Callable[[Path, Path], None]:
    def write(path: Path, marker: Path) -> None:
        path.write_bytes(_saved({"weight": _Canary(marker)}, protocol))

    return write


def _indirect(path: Path, marker: Path) -> None:
    path.write_bytes(_saved({"weight": _IndirectCanary(marker)}))


def _nested(path: Path, marker: Path) -> None:
    path.write_bytes(_saved({"weight": _NestedLoad(_saved({"weight": _Canary(marker)}))}))


def _torchscript(path: Path, marker: Path) -> None:
    torch.jit.save(torch.jit.script(_ScriptedCanary(str(marker))), str(path))


def _pt2(path: Path, marker: Path) -> None:
    """A real torch.export program whose pickled members (sample inputs, weights, constants) are
    replaced by the canary: torch.export.load falls back to weights_only=False on some releases."""

    class Add(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    program = torch.export.export(Add(), (torch.ones(2),))
    clean = path.with_suffix(".clean.pt2")
    torch.export.save(program, str(clean))
    payload = _saved({"weight": _Canary(marker)})
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            # torch.save bytes inside, whatever the member is called (2.2 names them .json).
            pickled = info.filename.endswith(".pt") or data[:2] in (b"PK", b"\x80\x02")
            dst.writestr(info, payload if pickled else data)
    clean.unlink()


def _dcp(path: Path, marker: Path) -> None:
    """A real DCP checkpoint whose ``.metadata`` (a plain pickle that DCP's reader unpickles) is
    replaced by the canary."""
    from ckpt_compat.distributed import dcp_save

    dcp_save({"weight": torch.ones(2)}, path)
    (path / ".metadata").write_bytes(pickle.dumps(_Canary(marker), protocol=2))


def _laughs(path: Path, marker: Path) -> None:
    """64 levels of a list holding its child twice: 2**64 leaves to anything that walks it, a few
    hundred bytes to the unpickler (which shares references)."""
    node: list[Any] = [torch.zeros(1)]
    for _ in range(64):
        node = [node, node]
    path.write_bytes(_saved({"weight": torch.ones(2), "bomb": node}))
    _ = marker


@dataclass(frozen=True)
class Payload:
    name: str
    loader: str  # the load that the payload targets: "torch.load", "torch.export.load", "dcp"
    suffix: str
    write: Callable[[Path, Path], None]  # (path, marker)
    what: str
    executes: bool = True  # False for bombs: no canary, the harm is time and memory


PAYLOADS: dict[str, Payload] = {
    p.name: p
    for p in [
        *(
            Payload(f"reduce_protocol_{n}", "torch.load", ".pt", _reduce(n), f"__reduce__ -> open(), protocol {n}")
            for n in range(6)
        ),
        Payload("indirect_partial", "torch.load", ".pt", _indirect, "open() reached through functools.partial"),
        Payload("nested_load", "torch.load", ".pt", _nested, "torch.storage._load_from_bytes: a load within the load"),
        Payload(
            "torchscript_dispatch",
            "torch.load",
            ".pt",
            _torchscript,
            "a TorchScript archive handed to torch.jit.load under weights_only=True (CVE-2025-32434)",
        ),
        Payload("pt2_pickle", "torch.export.load", ".pt2", _pt2, "pickled members of a .pt2 archive"),
        Payload("dcp_metadata", "dcp", ".dcp", _dcp, "a DCP checkpoint's .metadata pickle"),
        Payload("pickle_laughs", "torch.load", ".pt", _laughs, "2**64 shared leaves", executes=False),
    ]
}


def write(name: str, path: Path, marker: Path) -> Path:
    """Write payload ``name`` to ``path``; loading it creates ``marker`` if its code runs."""
    PAYLOADS[name].write(path, marker)
    return path
