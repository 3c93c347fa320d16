from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckpt_compat.compare import compare_state_dicts
from ckpt_compat.devices import available_devices, map_locations, producer_devices
from ckpt_compat.specs import build
from tests.samples import load


def test_cpu_and_meta_always_available() -> None:
    assert available_devices()[:2] == ["cpu", "meta"]
    assert "meta" not in producer_devices()
    assert ("cuda" in available_devices()) == torch.cuda.is_available()


def test_every_spelling_loads_onto_the_target(tmp_path: Path) -> None:
    state = build(load("plain")).state_dict()
    torch.save(state, tmp_path / "m.pt")
    for target in ("cpu", "meta"):
        spellings = map_locations("cpu", target)
        assert {m.kind for m in spellings} == (
            {"str", "device", "dict", "callable"} - ({"callable"} if target == "meta" else set())
        )
        for location in spellings:
            loaded = torch.load(tmp_path / "m.pt", map_location=location.resolve(), weights_only=True)
            assert {v.device.type for v in loaded.values()} == {target}, location
            assert compare_state_dicts(state, loaded) == []


@pytest.mark.cuda
def test_saved_on_cuda_loads_on_cpu_with_every_spelling(tmp_path: Path) -> None:
    model = build(load("rich"), device="cuda")
    state = model.state_dict()
    torch.save(state, tmp_path / "m.pt")
    for location in map_locations("cuda", "cpu"):
        loaded = torch.load(tmp_path / "m.pt", map_location=location.resolve(), weights_only=True)
        assert {v.device.type for v in loaded.values()} == {"cpu"}
        assert compare_state_dicts(state, loaded) == []
    for location in map_locations("cpu", "cuda"):
        loaded = torch.load(tmp_path / "m.pt", map_location=location.resolve(), weights_only=True)
        assert {v.device.type for v in loaded.values()} == {"cuda"}
