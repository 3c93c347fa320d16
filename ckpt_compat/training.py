"""Training checkpoints that must resume bit for bit.

A training checkpoint is what real loops write: model, optimizer (its state exists only after a
step), LR scheduler, GradScaler, RNG states (torch CPU, CUDA when present, numpy, Python
``random``), epoch and step. The check: train k steps, save, load into fresh objects in a fresh
process, train k more; every parameter must equal, bit for bit, those of an uninterrupted 2k-step
run. Every RNG feeds the numbers (dropout, input noise, loss jitter), so a state left out of the
checkpoint shows up as a divergence, reported with the first step and tensor that diverged.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import platform
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ckpt_compat.atomic import atomic_path
from ckpt_compat.compare import compare_state_dicts, digest, tensor_leaves
from ckpt_compat.devices import MapLocation
from ckpt_compat.differences import Difference
from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.formats import Format, Unsupported, Untrusted
from ckpt_compat.objects import compare_object_records, object_records
from ckpt_compat.results import Cell, CellResult, Endpoint, Outcome
from ckpt_compat.specs import ModelSpec, build, example_inputs

OPTIMIZERS: dict[str, Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.95)),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
}
STATE_PARTS = ("model", "optimizer", "scheduler", "scaler", "rng")

# A small model with every kind of state a training loop touches: dropout (torch RNG), batch norm
# running stats, an embedding, an LSTM.
TRAINING_SPEC = ModelSpec.from_json(
    {
        "seed": 31,
        "root": {
            "kind": "dict",
            "children": {
                "mlp": {
                    "kind": "sequential",
                    "input": [6],
                    "children": [
                        {"kind": "Linear", "args": {"in_features": 6, "out_features": 8}, "dtype": "float32"},
                        {"kind": "BatchNorm1d", "args": {"num_features": 8}, "dtype": "float32"},
                        {"kind": "Dropout", "args": {"p": 0.3}, "dtype": "float32"},
                        {"kind": "Linear", "args": {"in_features": 8, "out_features": 3}, "dtype": "float32"},
                    ],
                },
                "emb": {"kind": "Embedding", "args": {"num_embeddings": 10, "embedding_dim": 4}, "dtype": "float32"},
                "rnn": {
                    "kind": "LSTM",
                    "args": {"input_size": 3, "hidden_size": 4, "batch_first": True},
                    "dtype": "float32",
                },
            },
        },
    }
)


class Trainer:
    """Model, optimizer, scheduler, scaler for one run; `step()` is one deterministic step."""

    def __init__(self, optimizer: str, spec: ModelSpec = TRAINING_SPEC) -> None:
        self.spec = spec
        self.model = build(spec).train()
        self.optimizer = OPTIMIZERS[optimizer](self.model.parameters())
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2, gamma=0.7)
        self.scaler = _grad_scaler()
        self.inputs = example_inputs(spec)
        self.step_count = 0

    def step(self) -> None:
        noisy = {k: (v + 0.01 * torch.rand_like(v)) if v.is_floating_point() else v for k, v in self.inputs.items()}
        outputs = self.model(noisy)
        loss = torch.stack([t.float().square().mean() for t in tensor_leaves(outputs) if t.is_floating_point()]).sum()
        loss = loss * (1 + 0.01 * random.random()) * (1 + 0.01 * float(np.random.rand()))
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step_count += 1

    def checkpoint(self, omit: Iterable[str] = ()) -> dict[str, Any]:
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng,
            "epoch": 0,
            "step": self.step_count,
        }
        for part in omit:
            state.pop(part, None)
        return state

    def restore(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        if "rng" in state:
            rng = state["rng"]
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        self.step_count = int(state["step"])

    def digests(self) -> dict[str, str]:
        return {k: digest(v) for k, v in self.model.state_dict().items()}


def _grad_scaler() -> Any:
    scaler_cls = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if scaler_cls is None:
        return None
    try:
        return scaler_cls("cpu")
    except Exception:  # older torch: GradScaler is CUDA only
        return None


def seed_everything(seed: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Training runs on one thread, so reductions happen in one fixed order in every process; the
    thread count is put back for whatever runs next in this process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def trained(optimizer: str, steps: int) -> Trainer:
    """A trainer after ``steps`` steps from the fixed seed (call under `single_threaded`)."""
    seed_everything()
    trainer = Trainer(optimizer)
    for _ in range(steps):
        trainer.step()
    return trainer


def reference(optimizer: str, steps: int) -> tuple[list[dict[str, str]], dict[str, torch.Tensor]]:
    """An uninterrupted run: per-step parameter digests (index i: after step i + 1) and the final
    state dict."""
    with single_threaded():
        seed_everything()
        trainer = Trainer(optimizer)
        history = []
        for _ in range(steps):
            trainer.step()
            history.append(trainer.digests())
        return history, dict(trainer.model.state_dict())


@dataclass(frozen=True)
class ResumeTask:
    optimizer: str
    path: str
    format: str
    options: dict[str, Any]
    steps: int
    out: str  # where the resumed model's final state dict is written


def resume_from(checkpoint: Mapping[str, Any], optimizer: str, steps: int) -> tuple[list[dict[str, str]], nn.Module]:
    """Restore ``checkpoint`` into fresh objects and train ``steps`` more: per-step parameter
    digests and the model."""
    with single_threaded():
        seed_everything(12345)  # a different seed: only the checkpoint may make the runs agree
        trainer = Trainer(optimizer)
        trainer.restore(checkpoint)
        history = []
        for _ in range(steps):
            trainer.step()
            history.append(trainer.digests())
        return history, trainer.model


def _resume_all(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """In the fresh process (`python -m ckpt_compat.training`): resume each task."""
    from ckpt_compat.formats import get_format

    tasks = [ResumeTask(**t) for t in raw]
    out: list[dict[str, Any]] = []
    for task in tasks:
        try:
            fmt = get_format(task.format)
            checkpoint = fmt.load(Path(task.path), task.options, CPU, nn.Module, trusted=True).state_dict
            history, model = resume_from(checkpoint, task.optimizer, task.steps)
            torch.save(model.state_dict(), task.out)
            out.append({"history": history})
        except (Unsupported, Untrusted) as exc:
            out.append({"unsupported": ErrorInfo.of(exc).to_json()})
        except Exception as exc:
            out.append({"error": ErrorInfo.of(exc).to_json()})
    return out


CPU = MapLocation("str", "cpu", "cpu")


def divergence(want: list[dict[str, str]], got: list[dict[str, str]], offset: int) -> str:
    """'' when equal, else the first step and tensor that diverged."""
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        if w != g:
            keys = [k for k in w if w[k] != g.get(k)] + [k for k in g if k not in w]
            return f"diverged at step {offset + i + 1}: first tensor {keys[0]!r} ({len(keys)} of {len(w)} differ)"
    return ""


def resumed_differences(reference: Mapping[str, torch.Tensor], resumed: Mapping[str, torch.Tensor]) -> list[Difference]:
    """The resumed run's final state against the uninterrupted run's, tensor by tensor."""
    return compare_state_dicts(reference, resumed, aliasing=False, root="resume")


def _cannot_hold(cell: Cell, fmt: Format) -> CellResult:
    refusal = Unsupported(
        f"{fmt.name} cannot hold a training checkpoint — it holds a model or tensors "
        "only, not a dict of state dicts, numbers, strings and RNG states"
    )
    return CellResult.failed(cell, Outcome.UNSUPPORTED, refusal)


def check_training(
    formats: Iterable[Format],
    workdir: Path,
    *,
    steps: int = 3,
    omit: Iterable[str] = (),
    optimizers: Iterable[str] = tuple(OPTIMIZERS),
) -> list[CellResult]:
    """Resume cells: per format x load variant x optimizer, resumed in one fresh process."""
    here = Endpoint(torch.__version__, "cpu")
    omit = tuple(omit)
    results: list[CellResult] = []
    references = {name: reference(name, 2 * steps) for name in optimizers}
    tasks: list[ResumeTask] = []
    cells: list[Cell] = []
    with single_threaded():  # one checkpoint per optimizer, saved in every format below
        checkpoints = {name: trained(name, steps).checkpoint(omit) for name in optimizers}
    for fmt in formats:
        if not fmt.holds_training_state:
            results.append(_cannot_hold(Cell(SPEC_ID, fmt.name, here, here, {"check": "resume"}), fmt))
            continue
        for name in optimizers:
            path = workdir / f"train-{name}-{fmt.name}{fmt.suffix}"
            fmt.save_object(checkpoints[name], path)
            for i, variant in enumerate(fmt.load_variants()):
                options = {**variant, "check": "resume", "optimizer": name}
                if omit:
                    options["omitted"] = ",".join(omit)
                out = str(workdir / f"resumed-{name}-{fmt.name}-{i}.pt")
                tasks.append(ResumeTask(name, str(path), fmt.name, dict(variant), steps, out))
                cells.append(Cell(SPEC_ID, fmt.name, here, here, options))
    # One fresh process resumes from every file: fresh is what matters (nothing in memory from the
    # training here), and each process start costs a torch import.
    answers = _run_fresh(tasks)
    for cell, task, answer in zip(cells, tasks, answers, strict=True):
        if "unsupported" in answer:
            results.append(CellResult(cell, Outcome.UNSUPPORTED, error=ErrorInfo.from_json(answer["unsupported"])))
        elif "error" in answer:
            results.append(CellResult(cell, Outcome.LOAD_ERROR, error=ErrorInfo.from_json(answer["error"])))
        else:
            history, final = references[task.optimizer]
            diverged = divergence(history[steps:], answer["history"], steps)
            found = resumed_differences(final, torch.load(task.out, weights_only=True))
            notes = [diverged] if diverged else []
            results.append(CellResult.of(cell, found, checks=("load", "resume"), notes=notes))
    return results


SPEC_ID = f"training-{TRAINING_SPEC.id}"


def write_checkpoints(
    directory: Path, formats: Iterable[Format], optimizer: str, steps: int
) -> tuple[dict[str, Any], dict[str, Path]]:
    """For a corpus: the training checkpoint after ``steps`` steps in each format, and beside it
    ``reference.pt``, the uninterrupted run's state after twice as many. The checkpoint object and
    the files written (by format name, plus "reference")."""
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with single_threaded():
        trainer = trained(optimizer, steps)
        checkpoint = copy.deepcopy(trainer.checkpoint())  # the live tensors go on training below
        for fmt in formats:
            written[fmt.name] = directory / f"{fmt.name}{fmt.suffix}"
            fmt.save_object(checkpoint, written[fmt.name])
        for _ in range(steps):
            trainer.step()
    written["reference"] = directory / "reference.pt"
    with atomic_path(written["reference"]) as tmp:
        torch.save(trainer.model.state_dict(), tmp)
    return checkpoint, written


def check_saved(
    cell: Cell,
    fmt: Format,
    path: Path,
    records: Mapping[str, Any],
    reference: Mapping[str, torch.Tensor],
    steps: int,
    *,
    trusted: bool,
) -> CellResult:
    """A training checkpoint from a corpus, loaded with ``cell``'s options: every object in it
    against the producer's records, then resumed here and trained on, against the producer's own
    uninterrupted run (``reference``, the state its ``reference.pt`` holds)."""
    options = {k: v for k, v in cell.options.items() if k not in ("check", "optimizer", "map_location")}
    try:
        checkpoint = fmt.load(path, options, CPU, nn.Module, trusted=trusted).state_dict
    except (Unsupported, Untrusted) as exc:
        return CellResult.failed(cell, Outcome.UNSUPPORTED, exc)
    except Exception as exc:
        return CellResult.failed(cell, Outcome.LOAD_ERROR, exc)
    differences = compare_object_records(records, checkpoint, "checkpoint")
    notes: list[str] = []
    optimizer = str(cell.options["optimizer"])
    try:
        _, model = resume_from(checkpoint, optimizer, steps)
        resumed = resumed_differences(reference, model.state_dict())
        if resumed and not repeats_producer(records, optimizer, steps):
            resumed, note = _other_kernels(resumed)
            notes += [note] if note else []
        differences += resumed
    except Exception as exc:
        error = ErrorInfo.of(exc)
        differences.append(Difference("raised", ("resume",), f"resuming raised {error}", error=error))
    return CellResult.of(cell, differences, checks=("load", "manifest", "resume"), notes=notes)


# How far a resumed run may land from the producer's own when this machine's CPU kernels do not
# repeat the producer's training (matmul and GRU reductions vectorised another way round the last
# bits differently: 4 ulp after three steps measured between two x86 machines on one torch build).
MACHINE_ULPS = 16


@functools.cache
def _trained_here(optimizer: str, steps: int) -> dict[str, dict[str, Any]]:
    with single_threaded():
        return object_records(trained(optimizer, steps).checkpoint())


def cpu_kernels() -> str:
    """The CPU kernels this torch dispatches to here ("AVX512", "AVX2", ... where torch says): two
    machines with other kernels round training's reductions differently. Corpora record it."""
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return f"{platform.machine()} {capability() if capability is not None else 'unknown'}"


def repeats_producer(records: Mapping[str, Any], optimizer: str, steps: int) -> bool:
    """Whether this machine and torch, training from the fixed seed, reach the producer's checkpoint
    bit for bit: only then can a resumed run be held to the producer's continuation bit for bit."""
    mine = _trained_here(optimizer, steps)
    shared = [k for k in records if k in mine]
    return bool(shared) and all(records[k] == mine[k] for k in shared)


def _other_kernels(differences: list[Difference]) -> tuple[list[Difference], str]:
    """The differences beyond `MACHINE_ULPS`, and a note on those within it."""
    within = [d for d in differences if d.kind == "bytes" and d.max_ulp is not None and d.max_ulp <= MACHINE_ULPS]
    if not within:
        return differences, ""
    note = (
        f"the resumed run differs from the producer's by at most {max(d.max_ulp or 0 for d in within):g} ulp in "
        f"{len(within)} tensor(s): this machine (CPU kernels: {cpu_kernels()}) does not repeat the producer's training "
        "bit for bit (the same steps from the same seed here already differ from its checkpoint)"
    )
    return [d for d in differences if d not in within], note


def _run_fresh(tasks: list[ResumeTask]) -> list[dict[str, Any]]:
    from ckpt_compat.forkserver import Forkserver
    from ckpt_compat.isolation import Failure, call_once

    if not tasks:
        return []
    # In a worker: a fork of its server, which ran nothing but imports (fresh where it matters).
    answers = call_once(
        ["ckpt_compat.training"], [t.__dict__ for t in tasks], timeout=600, forkserver=Forkserver.inherited()
    )
    if isinstance(answers, Failure):
        died = ErrorInfo("ProcessDied", f"the resuming process failed ({answers.kind}): {answers.message}")
        return [{"error": died.to_json()}] * len(tasks)
    result: list[dict[str, Any]] = answers
    return result


if __name__ == "__main__":
    from ckpt_compat.isolation import serve

    serve(_resume_all)
