"""DCP saved by 2 real processes, loaded by 1 and by 4 (resharding), bit for bit; corruption caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt_compat import distributed
from ckpt_compat.isolation import Failure, call_once
from ckpt_compat.results import CellResult, Outcome

pytestmark = pytest.mark.skipif(distributed.why_unavailable() is not None, reason=str(distributed.why_unavailable()))


def test_two_ranks_reshard_to_one_and_four(tmp_path: Path) -> None:
    results = distributed.check_reshard(tmp_path)
    assert [r.cell.options["load_world_size"] for r in results] == [1, 4]
    assert all(r.outcome is Outcome.OK for r in results), [r.detail for r in results]


def test_a_corrupted_shard_is_caught(tmp_path: Path) -> None:
    task = {"dir": str(tmp_path), "save_world": 2, "load_worlds": [1]}
    answer = call_once(["tests.corrupt_reshard"], task, timeout=300)
    assert not isinstance(answer, Failure), answer
    [result] = [CellResult.from_json(cell) for cell in answer]
    assert result.outcome is Outcome.MISMATCH
    [d] = result.differences
    assert (d.kind, d.path, d.elements, d.total) == ("bytes", ("state_dict", "fc.weight"), 1, 60)


def test_the_check_runs_in_a_process_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its ranks are forks of that process, never of the caller (a worker that runs threads)."""

    def not_here(*args: object) -> None:
        raise AssertionError("a world was started in the calling process")

    monkeypatch.setattr(distributed, "_world", not_here)
    results = distributed.check_reshard(tmp_path)
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK], [r.detail for r in results]
