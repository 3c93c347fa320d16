"""Benchmark workloads: random, non-zero state dicts shaped like real models (all-zero tensors
compress and page in for free), the torch_zip reference every round starts from, and ``touch``."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckpt_compat.bench.pagecache import fsync_files

WORKLOADS = ("transformer", "lora", "cnn", "sweep")


def workload(
    kind: str, nbytes: int, dtype: torch.dtype = torch.float32, seed: int = 0, tensors: int = 0
) -> dict[str, torch.Tensor]:
    """A state dict of about ``nbytes`` shaped like a real model of that ``kind``.

    transformer: few large tensors; lora: thousands of small ones (rank 8 adapters); cnn: many
    mid-size conv weights with BatchNorm buffers (``num_batches_tracked`` is int64, as in torch);
    sweep: ``tensors`` equal 1-d tensors (the per-tensor cost fit).
    """
    if kind not in WORKLOADS:
        raise ValueError(f"unknown workload {kind!r}; known: {', '.join(WORKLOADS)}")
    gen = torch.Generator().manual_seed(seed)
    item = torch.empty(0, dtype=dtype).element_size()
    elements = max(1, nbytes // item)
    shapes: list[tuple[str, tuple[int, ...], torch.dtype]] = []
    if kind == "transformer":
        width = max(8, int((elements / 12) ** 0.5))
        layer = 0
        while sum(_numel(s) for _, s, _ in shapes) + 12 * width * width <= elements or not shapes:
            shapes += [
                (f"layers.{layer}.attn.qkv.weight", (3 * width, width), dtype),
                (f"layers.{layer}.attn.out.weight", (width, width), dtype),
                (f"layers.{layer}.mlp.up.weight", (4 * width, width), dtype),
                (f"layers.{layer}.mlp.down.weight", (width, 4 * width), dtype),
            ]
            layer += 1
    elif kind == "lora":
        width, rank = 256, 8
        count = max(1, elements // (2 * width * rank))
        for i in range(count):
            shapes += [(f"adapters.{i}.lora_A", (rank, width), dtype), (f"adapters.{i}.lora_B", (width, rank), dtype)]
    elif kind == "cnn":
        channels = 64
        count = max(1, elements // (channels * channels * 9 + 4 * channels))
        for i in range(count):
            shapes += [(f"blocks.{i}.conv.weight", (channels, channels, 3, 3), dtype)]
            shapes += [(f"blocks.{i}.bn.{n}", (channels,), dtype) for n in ("weight", "bias")]
            shapes += [(f"blocks.{i}.bn.{n}", (channels,), torch.float32) for n in ("running_mean", "running_var")]
            shapes += [(f"blocks.{i}.bn.num_batches_tracked", (), torch.int64)]
    else:
        if tensors < 1:
            raise ValueError(f"the sweep workload needs tensors >= 1, got tensors={tensors!r}")
        shapes = [(f"t.{i}", (max(1, elements // tensors),), dtype) for i in range(tensors)]
    out = {}
    for name, shape, dt in shapes:
        size = torch.empty(0, dtype=dt).element_size()
        bits = torch.randint(-(2**15), 2**15, ((_numel(shape) * size + 1) // 2,), dtype=torch.int16, generator=gen)
        t = bits.view(torch.uint8)[: _numel(shape) * size].view(dt).reshape(shape)
        out[name] = t.nan_to_num(0.5, 0.5, -0.5) if dt.is_floating_point else t.abs() + 1
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def nbytes(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class WorkloadModule(nn.Module):
    """A module holding a workload's tensors under their own dotted names (for whole-model pickle,
    TorchScript and torch.export). ``running_*`` and integer tensors are buffers, as in BatchNorm."""

    def __init__(self, state: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        for name, t in (state or {}).items():
            *parents, leaf = name.split(".")
            module: nn.Module = self
            for part in parents:
                if not hasattr(module, part):
                    module.add_module(part, WorkloadModule())
                module = getattr(module, part)
            if leaf.startswith("running_") or not t.is_floating_point():
                module.register_buffer(leaf, t)
            else:
                module.register_parameter(leaf, nn.Parameter(t, requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def touch(state: Any) -> int:
    """Read every byte of every tensor (what a lazy mmap load owes before it is a load), as int64
    words where the bytes allow it (memory bandwidth, not an elementwise sum); returns a checksum."""
    total = 0
    for t in state.values():
        if isinstance(t, torch.Tensor) and t.numel():
            flat = t.detach().reshape(-1) if t.is_contiguous() else t.detach().contiguous().reshape(-1)
            raw = flat.view(torch.uint8)
            words = raw.numel() // 8
            if words and raw.storage_offset() % 8 == 0:
                total += int(raw[: words * 8].view(torch.int64).sum()) + int(raw[words * 8 :].sum())
            else:
                total += int(raw.sum())
    return total


def layout(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    return {k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for k, t in state.items()}


def template(shapes: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Preallocated tensors with every page already faulted in (a model waiting for its weights)."""
    return {k: torch.ones(v["shape"], dtype=getattr(torch, v["dtype"])) for k, v in shapes.items()}


def copy_into(target: dict[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():  # what load_state_dict does: copy_ each tensor into the model's own
        for k, t in target.items():
            t.copy_(state[k])
    return target


def write_reference(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Save the workload as the torch_zip reference every op starts from, with its layout and its
    manifest records (what ``verify`` compares a load with) beside it."""
    from ckpt_compat.compare import record

    torch.save(dict(state), path)
    fsync_files(path)  # on disk before any round: no write-back running under a measurement
    Path(str(path) + ".layout.json").write_text(json.dumps(layout(state)))
    Path(str(path) + ".records.json").write_text(json.dumps({k: record(t) for k, t in state.items()}))
    return path


def scratch_dir() -> Path:
    """A directory on the disk under test (not tmpfs): $CKPT_COMPAT_BENCH_DIR or the system temp."""
    root = os.environ.get("CKPT_COMPAT_BENCH_DIR")
    return Path(tempfile.mkdtemp(prefix="ckpt-compat-bench-", dir=root))
