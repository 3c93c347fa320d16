"""A fresh process for tests/test_distributed.py that runs the reshard check with one bit of
rank 0's saved shard flipped between the save and the loads (the ranks are its forks, as in the
real check, so the fault has to be planted here, not in the test process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ckpt_compat import distributed
from ckpt_compat.isolation import serve
from ckpt_compat.specs import build
from tests.faults import flip_bit

_world = distributed._world


def _save_then_corrupt(world: int, task: dict[str, Any], workdir: Path) -> None:
    _world(world, task, workdir)
    if task["op"] == "save":  # flip a bit inside rank 0's shard of fc.weight (rows 0-4)
        rows = build(distributed.RESHARD_SPEC).state_dict()["fc.weight"][:5]
        flip_bit(Path(task["dir"]) / "__0_0.distcp", bytes(rows.contiguous().view(torch.uint8).numpy()), byte=3)


if __name__ == "__main__":
    distributed._world = _save_then_corrupt
    serve(distributed._reshard_task)
