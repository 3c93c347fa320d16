"""Training checkpoints that must resume bit for bit.

A training checkpoint is what real loops write: model, optimizer (its state exists only after a
step), LR scheduler, GradScaler, RNG states (torch CPU, CUDA when present, numpy, Python
``random``), epoch and step. The check: train k steps, save, load into fresh objects in a fresh
process, train k more; every parameter must equal, bit for bit, those of an uninterrupted 2k-step
run. Every RNG feeds the numbers (dropout, input noise, loss jitter), so a state left out of the
checkpoint shows up as a divergence, reported with the first step and tensor that diverged.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ckpt_compat.compare import digest, tensor_leaves
from ckpt_compat.devices import MapLocation
from ckpt_compat.formats import Format, Unsupported, Untrusted
from ckpt_compat.formats.base import first_line
from ckpt_compat.matrix import Cell, CellResult, Endpoint, Outcome
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
        torch.set_num_threads(1)  # reductions in one fixed order, in every process
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


def reference(optimizer: str, steps: int) -> list[dict[str, str]]:
    """Per-step parameter digests of an uninterrupted run (index i: after step i + 1)."""
    seed_everything()
    trainer = Trainer(optimizer)
    history = []
    for _ in range(steps):
        trainer.step()
        history.append(trainer.digests())
    return history


@dataclass(frozen=True)
class ResumeTask:
    optimizer: str
    path: str
    format: str
    options: dict[str, Any]
    steps: int


def resume(task: ResumeTask, *, trusted: bool = True) -> list[dict[str, str]]:
    """Load the checkpoint into fresh objects, train ``task.steps`` more; per-step digests."""
    from ckpt_compat.formats import get_format

    fmt = get_format(task.format)
    seed_everything(12345)  # a different seed: only the checkpoint may make the runs agree
    trainer = Trainer(task.optimizer)
    loaded = fmt.load(
        Path(task.path), task.options, MapLocation("str", "cpu", "cpu"), lambda: trainer.model, trusted=trusted
    )
    trainer.restore(loaded.state_dict)
    history = []
    for _ in range(task.steps):
        trainer.step()
        history.append(trainer.digests())
    return history


def _worker() -> None:
    """`python -m ckpt_compat.training`: resume tasks from stdin JSON, results to stdout JSON."""
    tasks = [ResumeTask(**t) for t in json.loads(sys.stdin.read())]
    out: list[dict[str, Any]] = []
    for task in tasks:
        try:
            out.append({"history": resume(task)})
        except (Unsupported, Untrusted) as exc:
            out.append({"unsupported": str(exc)})
        except Exception as exc:
            out.append({"error": first_line(exc)})
    sys.stdout.write(json.dumps(out))


def divergence(want: list[dict[str, str]], got: list[dict[str, str]], offset: int) -> str:
    """'' when equal, else the first step and tensor that diverged."""
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        if w != g:
            keys = [k for k in w if w[k] != g.get(k)] + [k for k in g if k not in w]
            return f"diverged at step {offset + i + 1}: first tensor {keys[0]!r} ({len(keys)} of {len(w)} differ)"
    return ""


def check_training(
    formats: Iterable[Format],
    workdir: Path,
    *,
    steps: int = 3,
    omit: Iterable[str] = (),
    optimizers: Iterable[str] = tuple(OPTIMIZERS),
) -> list[CellResult]:
    """Resume cells: per format x load variant x optimizer, resumed in one fresh process per format."""
    here = Endpoint(torch.__version__, "cpu")
    omit = tuple(omit)
    results: list[CellResult] = []
    references = {name: reference(name, 2 * steps) for name in optimizers}
    for fmt in formats:
        spec_id = f"training-{TRAINING_SPEC.id}"
        if not fmt.holds_training_state:
            results.append(
                CellResult(
                    Cell(spec_id, fmt.name, here, here, {"check": "resume"}),
                    Outcome.UNSUPPORTED,
                    f"{fmt.name} cannot hold a training checkpoint — it holds a model or tensors "
                    "only, not a dict of state dicts, numbers, strings and RNG states",
                )
            )
            continue
        tasks, cells = [], []
        for name in optimizers:
            seed_everything()
            trainer = Trainer(name)
            for _ in range(steps):
                trainer.step()
            path = workdir / f"train-{name}-{fmt.name}{fmt.suffix}"
            fmt.save_object(trainer.checkpoint(omit), path)
            for variant in fmt.load_variants():
                options = {**variant, "check": "resume", "optimizer": name}
                if omit:
                    options["omitted"] = ",".join(omit)
                tasks.append(ResumeTask(name, str(path), fmt.name, dict(variant), steps))
                cells.append(Cell(spec_id, fmt.name, here, here, options))
        answers = _run_fresh(tasks)
        for cell, task, answer in zip(cells, tasks, answers, strict=True):
            if "unsupported" in answer:
                results.append(CellResult(cell, Outcome.UNSUPPORTED, answer["unsupported"]))
            elif "error" in answer:
                results.append(CellResult(cell, Outcome.LOAD_ERROR, answer["error"]))
            else:
                diverged = divergence(references[task.optimizer][steps:], answer["history"], steps)
                results.append(CellResult(cell, Outcome.MISMATCH if diverged else Outcome.OK, diverged))
    return results


def _run_fresh(tasks: list[ResumeTask]) -> list[dict[str, Any]]:
    if not tasks:
        return []
    with tempfile.TemporaryFile("w+") as err:
        done = subprocess.run(
            [sys.executable, "-m", "ckpt_compat.training"],
            input=json.dumps([t.__dict__ for t in tasks]),
            capture_output=False,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            err.seek(0)
            tail = " | ".join(err.read().strip().splitlines()[-3:])
            return [{"error": f"the resuming process died (exit code {done.returncode}): {tail}"}] * len(tasks)
    answers: list[dict[str, Any]] = json.loads(done.stdout)
    return answers


if __name__ == "__main__":
    _worker()
