"""Records of whole checkpoint objects, and every difference against them by key path."""

from __future__ import annotations

import argparse
import json
import random
from typing import Any

import numpy as np
import pytest
import torch

from ckpt_compat.objects import compare_object_records, object_records


def _checkpoint() -> dict[str, object]:
    return {
        "model": {"w": torch.arange(6.0).reshape(2, 3)},
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 3)}},
            "param_groups": [{"lr": 0.1}],
        },
        "rng": {"numpy": np.random.RandomState(0).get_state(), "python": random.Random(0).getstate()},
        "config": argparse.Namespace(lr=0.1),
        "step": 3,
    }


def test_records_have_typed_paths_and_survive_json() -> None:
    records = json.loads(json.dumps(object_records(_checkpoint())))
    assert records[json.dumps(["optimizer", "state", 0, "exp_avg"])]["kind"] == "tensor"
    assert records[json.dumps(["rng", "numpy", 1])]["kind"] == "ndarray"
    assert (
        records[json.dumps(["rng", "python", 1])]["kind"] == "tuple"
        and "digest" in records[json.dumps(["rng", "python", 1])]
    )
    assert records[json.dumps(["config"])] == {"kind": "object", "type": "argparse.Namespace"}
    assert compare_object_records(records, _checkpoint(), "checkpoint") == []


@pytest.mark.parametrize(
    ("change", "kind", "path"),
    [
        (lambda c: c["model"]["w"].view(-1)[4].add_(1), "bytes", ("checkpoint", "model", "w")),
        (
            lambda c: c["optimizer"]["state"][0].pop("exp_avg"),
            "missing",
            ("checkpoint", "optimizer", "state", 0, "exp_avg"),
        ),
        (lambda c: c.update(extra=1), "unexpected", ("checkpoint", "extra")),
        (lambda c: c.update(step=4), "type", ("checkpoint", "step")),
        (lambda c: c["rng"]["numpy"][1].__setitem__(0, 7), "bytes", ("checkpoint", "rng", "numpy", 1)),
        (lambda c: c["model"].update(w=c["model"]["w"].double()), "dtype", ("checkpoint", "model", "w")),
        (lambda c: c.update(model=[1, 2]), "type", ("checkpoint", "model")),
    ],
)
def test_each_change_is_one_difference_at_its_path(change: object, kind: str, path: tuple[object, ...]) -> None:
    records = object_records(_checkpoint())
    changed = _checkpoint()
    change(changed)  # type: ignore[operator]
    found = compare_object_records(records, changed, "checkpoint")
    assert [(d.kind, d.path) for d in found] == [(kind, path)]


def test_a_pickle_bomb_is_a_clear_difference_not_a_hang() -> None:
    import time

    from ckpt_compat.objects import TooLarge, compare_object_records, object_records

    node: list[Any] = [torch.zeros(1)]
    for _ in range(64):
        node = [node, node]  # 2**64 leaves, 65 list objects
    started = time.perf_counter()
    found = compare_object_records({'["bomb"]': {"kind": "list", "len": 2}}, {"bomb": node}, "bundle")
    assert [d.kind for d in found] == ["raised"] and "pickle bomb" in found[0].detail
    assert time.perf_counter() - started < 60  # bounded by MAX_RECORDS, not by 2**64
    deep: list[Any] = []
    for _ in range(500):
        deep = [deep]
    with pytest.raises(TooLarge):
        object_records(deep)
