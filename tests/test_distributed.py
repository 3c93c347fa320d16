"""DCP saved by 2 real processes, loaded by 1 and by 4 (resharding), bit for bit; corruption caught."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckpt_compat import distributed
from ckpt_compat.results import Outcome
from ckpt_compat.specs import build
from tests.faults import flip_bit

pytestmark = pytest.mark.skipif(distributed.why_unavailable() is not None, reason=str(distributed.why_unavailable()))


def test_two_ranks_reshard_to_one_and_four(tmp_path: Path) -> None:
    results = distributed.check_reshard(tmp_path)
    assert [r.cell.options["load_world_size"] for r in results] == [1, 4]
    assert all(r.outcome is Outcome.OK for r in results), [r.detail for r in results]


def test_a_corrupted_shard_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = distributed._world

    def save_then_corrupt(world: int, task: dict, workdir: Path) -> None:
        original(world, task, workdir)
        if task["op"] == "save":  # flip a bit inside rank 0's shard of fc.weight (rows 0-4)
            rows = build(distributed.RESHARD_SPEC).state_dict()["fc.weight"][:5]
            flip_bit(Path(task["dir"]) / "__0_0.distcp", bytes(rows.contiguous().view(torch.uint8).numpy()), byte=3)

    monkeypatch.setattr(distributed, "_world", save_then_corrupt)
    results = distributed.check_reshard(tmp_path, load_worlds=(1,))
    assert results[0].outcome is Outcome.MISMATCH
    [d] = results[0].differences
    assert (d.kind, d.path, d.elements, d.total) == ("bytes", ("state_dict", "fc.weight"), 1, 60)
