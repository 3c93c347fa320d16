"""`ckpt-compat security`: which payload classes the running torch's own loaders block.

Each payload (`payloads.PAYLOADS`) is written by this torch into a throwaway directory and loaded
the safest way its loader offers (``torch.load(weights_only=True)``, ``torch.export.load``, DCP's
``load``) in a contained child (`isolation`), with a memory and a time limit. The canary tells
whether the payload's code ran. The cells go into the ordinary results file (format = payload,
options = the loader), so `report` and `gate` merge them with the compatibility matrix:

- ``ok``: the loader refused the file (its error is kept), or, for a bomb, loaded it in time;
- ``unsafe``: the canary fired: the loader ran the file's code;
- ``timeout`` / ``crash``: the loader hung, died or ran out of memory;
- ``unsupported``: this torch cannot write the payload (no torch.export before 2.1).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_compat.errorinfo import ErrorInfo, short
from ckpt_compat.matrix import SECURITY_SPEC as SPEC_ID  # the release view sets these cells apart
from ckpt_compat.results import Cell, CellResult, Endpoint, Outcome

if TYPE_CHECKING:
    from ckpt_compat.forkserver import Forkserver

_READERS = {"torch.export.load": "torch_export", "dcp": "dcp"}  # the format whose reader a loader is
MEMORY = 4 * 2**30  # a payload load gets this much heap
TIMEOUT = 120.0


def _attack(name: str) -> dict[str, Any]:
    """In the contained child: write payload ``name`` here, load it, report what happened."""
    import torch

    from ckpt_compat import payloads

    payload = payloads.PAYLOADS[name]
    reader = _READERS.get(payload.loader)
    if reader is not None:
        from ckpt_compat.formats import get_format

        why = get_format(reader).why_unavailable()
        if why:  # in the format's own words, which the known issues already explain
            return {"unavailable": why}
    work = Path(os.environ.get("TMPDIR", "."))
    path, marker = work / f"payload{payload.suffix}", work / "canary"
    warnings.simplefilter("ignore")
    try:
        payloads.write(name, path, marker)
    except Exception as exc:  # this torch lacks the writer (torch.export before 2.1)
        return {"unwritable": ErrorInfo.of(exc).to_json()}
    if marker.exists():
        raise RuntimeError(f"payload {name} fired while being written; it is not a valid test")
    started = time.perf_counter()
    error = None
    try:
        if payload.loader == "torch.load":
            torch.load(str(path), weights_only=True)
        elif payload.loader == "torch.export.load":
            torch.export.load(str(path))
        else:
            from ckpt_compat.distributed import dcp_load, ordinary_errors

            with ordinary_errors():
                dcp_load({"weight": torch.zeros(2)}, path)
    except Exception as exc:
        error = ErrorInfo.of(exc).to_json()
    return {"canary": marker.exists(), "error": error, "seconds": time.perf_counter() - started}


def options(name: str) -> dict[str, Any]:
    from ckpt_compat.payloads import PAYLOADS

    loader = PAYLOADS[name].loader
    return {"loader": loader, "weights_only": True} if loader == "torch.load" else {"loader": loader}


def attack_server(fork_here: Sequence[str] = ()) -> Forkserver:
    """The fork server `check_payloads` forks its attacks from (start it early: it imports torch and
    the readers, seconds, while the caller prepares). ``fork_here``: as `forkserver.Forkserver`'s
    (the CLI run as the program: the server is a fork of it, after it imported torch)."""
    from ckpt_compat.forkserver import Forkserver

    return Forkserver("ckpt_compat.security", fork_here=fork_here)


def check_payloads(
    names: list[str] | None = None,
    *,
    timeout: float = TIMEOUT,
    jobs: int | None = None,
    server: Forkserver | None = None,
) -> list[CellResult]:
    """One cell per payload class, each attack in a fresh contained child (code that ran leaves
    nothing behind for the next); ``jobs`` children side by side (default: the usable cores).
    ``server``: an `attack_server` to use and stop (default: one of its own)."""
    import concurrent.futures

    import torch

    from ckpt_compat.isolation import call_once, usable_cores
    from ckpt_compat.payloads import PAYLOADS

    here = Endpoint(torch.__version__, "cpu")
    chosen = names or list(PAYLOADS)

    # Each child is a fork of a server that imported torch and the readers and did nothing else:
    # fresh for each attack, without an interpreter's imports each.
    with server or attack_server() as server:

        def attack(name: str) -> Any:
            return call_once(
                ["ckpt_compat.security", "--child"], name, timeout=timeout, memory=MEMORY, forkserver=server
            )

        server.start()
        with concurrent.futures.ThreadPoolExecutor(max(1, jobs or usable_cores())) as side_by_side:
            answers = list(side_by_side.map(attack, chosen))
    return [
        _result(Cell(SPEC_ID, name, here, here, options(name)), answer, PAYLOADS[name].executes)
        for name, answer in zip(chosen, answers, strict=True)
    ]


def _result(cell: Cell, answer: Any, executes: bool) -> CellResult:
    from ckpt_compat.isolation import Failure

    if isinstance(answer, Failure):
        from ckpt_compat.verify import failure_outcome

        outcome, failed = failure_outcome(answer)
        return CellResult(cell, outcome, error=failed)
    if "unavailable" in answer:
        return CellResult(cell, Outcome.UNSUPPORTED, error=ErrorInfo("Unavailable", answer["unavailable"]))
    if "unwritable" in answer:
        why = ErrorInfo.from_json(answer["unwritable"])
        return CellResult(cell, Outcome.UNSUPPORTED, error=ErrorInfo("Unavailable", f"cannot write the payload: {why}"))
    error = ErrorInfo.from_json(answer["error"]) if answer["error"] else None
    if answer["canary"]:
        ran = f"the payload's code ran (its canary fired){f'; then: {error}' if error else ''}"
        return CellResult(cell, Outcome.UNSAFE, error=ErrorInfo("PayloadRan", ran))
    if error is None:
        note = f"loaded in {answer['seconds']:.2f}s without running code"
        if executes:  # it should have been refused or fired: a payload that did neither proves nothing
            return CellResult(cell, Outcome.LOAD_ERROR, error=ErrorInfo("PayloadInert", note))
        return CellResult(cell, Outcome.OK, notes=(note,))
    return CellResult(cell, Outcome.OK, notes=(f"blocked: {short(str(error), 300)}",))


def preload() -> None:
    """What the fork server for the attacks imports once (`forkserver`): torch, the payloads and
    the readers they are loaded with."""
    import torch  # noqa: F401

    from ckpt_compat import payloads  # noqa: F401
    from ckpt_compat.formats import availability, get_format

    for reader in _READERS.values():
        availability(get_format(reader))


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--child"]:
        from ckpt_compat.isolation import serve

        serve(_attack)
    else:
        sys.exit("usage: python -m ckpt_compat.security --child (used by `ckpt-compat security`)")
