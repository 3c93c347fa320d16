"""DCP across world sizes: save with 2 processes, load with 1 and with 4 (resharding).

Real processes on this machine (gloo backend, CPU): the check runs in a fresh contained process
(a fork of the worker's fork server where there is one, `forkserver.Forkserver.inherited`), whose
ranks are its forks (torch.multiprocessing, "fork": it has imported torch, DCP, DTensor and dynamo
and started no thread, so each rank starts in milliseconds). Every tensor of the
model is a DTensor sharded along dim 0 over the ranks (replicated when it has no dim 0); each
loading rank's local shard is compared bit for bit with the same slice of the single-process
reference, and the world-size-1 load with the whole reference.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ckpt_compat.compare import compare_tensors
from ckpt_compat.differences import Difference
from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.results import Cell, CellResult, Endpoint, Outcome
from ckpt_compat.specs import ModelSpec, build

# float32/float64/int64 only: gloo's collectives, which scatter the shards, do not take every dtype.
RESHARD_SPEC = ModelSpec.from_json(
    {
        "seed": 57,
        "root": {
            "kind": "dict",
            "children": {
                "fc": {"kind": "Linear", "args": {"in_features": 6, "out_features": 10}, "dtype": "float32"},
                "bn": {"kind": "BatchNorm1d", "args": {"num_features": 5}, "dtype": "float64"},
                "emb": {"kind": "Embedding", "args": {"num_embeddings": 9, "embedding_dim": 3}, "dtype": "float32"},
                "rnn": {
                    "kind": "GRU",
                    "args": {"input_size": 3, "hidden_size": 2, "batch_first": True},
                    "dtype": "float32",
                },
            },
        },
    }
)


@contextlib.contextmanager
def ordinary_errors() -> Iterator[None]:
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


def takes_checkpoint_id() -> bool:
    """dcp.save / dcp.load(checkpoint_id=...) arrived in 2.3; before, a storage writer or reader."""
    import torch.distributed.checkpoint as dcp

    save = getattr(dcp, "save", None)
    return save is not None and "checkpoint_id" in inspect.signature(save).parameters


def dcp_save(state: dict[str, Any], path: Path, *, in_group: bool = False) -> None:
    """Save ``state`` as a DCP checkpoint from this one process (``in_group``: this rank of the
    default process group), with the API this torch has."""
    import torch.distributed.checkpoint as dcp

    if takes_checkpoint_id():
        dcp.save(state, checkpoint_id=str(path))  # type: ignore[attr-defined]
        return
    logging.getLogger("torch.distributed.checkpoint._dedup_tensors").setLevel(logging.WARNING)  # logs every save
    # torch 2.0-2.2: save_state_dict, where one process without a process group says no_dist.
    save = getattr(dcp, "save_state_dict")  # noqa: B009 - not in the typed stubs
    save(state, storage_writer=getattr(dcp, "FileSystemWriter")(str(path)), no_dist=not in_group)  # noqa: B009


def dcp_load(template: dict[str, Any], path: Path, *, in_group: bool = False) -> None:
    """Fill ``template``'s tensors from a DCP checkpoint (``in_group``: as this rank of the default
    process group), with the API this torch has."""
    import torch.distributed.checkpoint as dcp

    if takes_checkpoint_id():
        dcp.load(template, checkpoint_id=str(path))  # type: ignore[attr-defined]
        return
    # torch 2.0-2.2: load_state_dict. (2.2's new dcp.load ignores no_dist and all-gathers the keys
    # over a default process group that one process does not have.)
    load = getattr(dcp, "load_state_dict")  # noqa: B009 - not in the typed stubs
    load(template, storage_reader=getattr(dcp, "FileSystemReader")(str(path)), no_dist=not in_group)  # noqa: B009


def why_unavailable() -> str | None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return f"torch {torch.__version__} has no torch.distributed with gloo"
    try:
        _dtensor_api()
    except ImportError as exc:
        return f"torch {torch.__version__} has no public DTensor / device mesh API ({exc})"
    return None


def _dtensor_api() -> tuple[Any, Any, Any, Any]:
    try:
        from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor import (  # type: ignore[attr-defined]
            Replicate,
            Shard,
            distribute_tensor,
        )
    from torch.distributed.device_mesh import init_device_mesh

    return distribute_tensor, Shard, Replicate, init_device_mesh


def _rank(rank: int, world: int, task: dict[str, Any]) -> None:
    """One process of a world: save the sharded state, or load it and check this rank's shards."""
    from ckpt_compat.isolation import die_with_parent

    die_with_parent()  # a SIGKILLed `ckpt-compat run` takes its ranks with it
    warnings.simplefilter("ignore")
    import torch.distributed as dist

    distribute_tensor, shard, replicate, init_device_mesh = _dtensor_api()
    dist.init_process_group("gloo", init_method=f"file://{task['store']}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        full = build(ModelSpec.from_json(task["spec"])).state_dict()

        def placement(t: torch.Tensor) -> list[Any]:
            return [shard(0)] if t.dim() >= 1 and t.shape[0] > 0 else [replicate()]

        if task["op"] == "save":
            sharded = {k: distribute_tensor(v, mesh, placement(v)) for k, v in full.items()}
            dcp_save(sharded, Path(task["dir"]), in_group=True)
        else:
            template = {k: distribute_tensor(torch.zeros_like(v), mesh, placement(v)) for k, v in full.items()}
            dcp_load(template, Path(task["dir"]), in_group=True)
            problems = []
            for key, value in template.items():
                want = distribute_tensor(full[key], mesh, placement(full[key])).to_local()
                problems += [d.to_json() for d in compare_tensors(want, value.to_local(), (f"rank{rank}", key))]
            Path(task["out"], f"rank{rank}.json").write_text(json.dumps(problems))
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # Done, every rank's files written and closed: exit without tearing the process group down.
    # torch 2.2's ProcessGroupGloo destructor joins its own thread while holding the GIL that thread
    # waits for (seen as a world that never ends, in `ckpt-compat run` on 2.2.2).
    os._exit(0)


RESHARD_TIMEOUT = 600.0  # seconds for the whole check: three worlds of a small model


def _world(world: int, task: dict[str, Any], workdir: Path) -> None:
    fd, store = tempfile.mkstemp(dir=workdir, prefix="store-")
    os.close(fd)
    os.unlink(store)  # the file store wants a path that does not exist yet
    # The ranks are forks of this process, so they import nothing: DCP, DTensor, and dynamo, which
    # `distribute_tensor` (wrapped in torch._disable_dynamo) imports at its first call: 1.5-2 s of
    # CPU in each rank otherwise.
    import torch.distributed.checkpoint

    _dtensor_api()
    with contextlib.suppress(ImportError):
        import torch._dynamo  # noqa: F401
    from torch.multiprocessing.spawn import start_processes

    with warnings.catch_warnings():
        # Python >= 3.12 warns on forking with threads; OpenBLAS's forks cleanly (`forkserver`).
        warnings.filterwarnings("ignore", message=r".*multi-threaded.*fork", category=DeprecationWarning)
        start_processes(_rank, args=(world, {**task, "store": store}), nprocs=world, join=True, start_method="fork")  # type: ignore[no-untyped-call]


def _cell(save_world: int, load_world: int) -> Cell:
    here = Endpoint(torch.__version__, "cpu")
    return Cell(RESHARD_SPEC.id, "dcp", here, here, {"save_world_size": save_world, "load_world_size": load_world})


def check_reshard(workdir: Path, *, save_world: int = 2, load_worlds: tuple[int, ...] = (1, 4)) -> list[CellResult]:
    """Cells for saving with ``save_world`` processes and loading with each of ``load_worlds``, in a
    fresh process: forking the ranks from one that has run nothing else (no thread, no process
    group) is what makes the fork safe."""
    why = why_unavailable()
    if why:
        return [
            CellResult(_cell(save_world, w), Outcome.UNSUPPORTED, error=ErrorInfo("Unsupported", why))
            for w in load_worlds
        ]
    from ckpt_compat.forkserver import Forkserver
    from ckpt_compat.isolation import Failure, call_once

    task = {"dir": str(workdir), "save_world": save_world, "load_worlds": list(load_worlds)}
    answer = call_once(["ckpt_compat.distributed"], task, timeout=RESHARD_TIMEOUT, forkserver=Forkserver.inherited())
    if isinstance(answer, Failure):
        outcome = Outcome.TIMEOUT if answer.kind == "timeout" else Outcome.CRASH
        error = ErrorInfo(answer.error_type, f"the resharding process failed ({answer.kind}): {answer.message}")
        return [CellResult(_cell(save_world, w), outcome, error=error) for w in load_worlds]
    return [CellResult.from_json(cell) for cell in answer]


def _reshard(workdir: Path, save_world: int, load_worlds: tuple[int, ...]) -> list[CellResult]:
    """`check_reshard`'s work, in its fresh process: the worlds of forked ranks first, then the
    single-process load here (after which this process forks no more)."""
    checkpoint = workdir / "resharded.dcp"
    base = {"spec": RESHARD_SPEC.to_json(), "dir": str(checkpoint)}
    try:
        _world(save_world, {**base, "op": "save"}, workdir)
    except Exception as exc:
        prefix = f"world size {save_world}: "
        return [CellResult.failed(_cell(save_world, w), Outcome.SAVE_ERROR, exc, prefix=prefix) for w in load_worlds]
    results: dict[int, CellResult] = {}
    for world in sorted(load_worlds, key=lambda w: w == 1):
        cell = _cell(save_world, world)
        out = workdir / f"load-{world}"
        out.mkdir()
        try:
            if world == 1:
                results[world] = _single_process(cell, checkpoint)
                continue
            _world(world, {**base, "op": "load", "out": str(out)}, workdir)
        except Exception as exc:
            results[world] = CellResult.failed(cell, Outcome.LOAD_ERROR, exc, prefix=f"world size {world}: ")
            continue
        problems = [
            Difference.from_json(p) for r in range(world) for p in json.loads((out / f"rank{r}.json").read_text())
        ]
        results[world] = CellResult.of(cell, problems, checks=("load", "state_dict"))
    return [results[w] for w in load_worlds]


def _single_process(cell: Cell, checkpoint: Path) -> CellResult:
    full = build(RESHARD_SPEC).state_dict()
    template = {k: torch.zeros_like(v) for k, v in full.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_load(template, checkpoint)
    problems = [d for k in full for d in compare_tensors(full[k], template[k], ("state_dict", k))]
    return CellResult.of(cell, problems, checks=("load", "state_dict"))


def _reshard_task(message: dict[str, Any]) -> list[dict[str, Any]]:
    cells = _reshard(Path(message["dir"]), int(message["save_world"]), tuple(message["load_worlds"]))
    return [cell.to_json() for cell in cells]


if __name__ == "__main__":
    from ckpt_compat.isolation import serve

    serve(_reshard_task)
