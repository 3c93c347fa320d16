"""`check FOLDER` on Hugging Face save_pretrained folders written here with safetensors and torch.save:
what a download cut short or a copy half done leaves is broken, naming the shard."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ckpt_compat.cli import main
from ckpt_compat.inspection import inspect_checkpoint

STATE = {f"layers.{i}.weight": torch.full((4, 4), float(i)) for i in range(4)}
SHARDS = {
    "model-00001-of-00002.safetensors": ["layers.0.weight", "layers.1.weight"],
    "model-00002-of-00002.safetensors": ["layers.2.weight", "layers.3.weight"],
}


def _sharded(tmp_path: Path) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for name, keys in SHARDS.items():
        save_file({k: STATE[k] for k in keys}, str(folder / name))
    weight_map = {k: name for name, keys in SHARDS.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def _index(folder: Path, change: Callable[[dict[str, str]], None]) -> None:
    path = folder / "model.safetensors.index.json"
    data = json.loads(path.read_text())
    change(data["weight_map"])
    path.write_text(json.dumps(data))


def _first(folder: Path) -> Path:
    return folder / next(iter(SHARDS))


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda f: _first(f).unlink(), "shard model-00001-of-00002.safetensors: named by the index, missing"),
        (lambda f: _first(f).write_bytes(_first(f).read_bytes()[:-10]), "model-00001-of-00002.safetensors: the"),
        (
            lambda f: _index(f, lambda m: m.update({"layers.9.weight": "model-00002-of-00002.safetensors"})),
            "shard model-00002-of-00002.safetensors lacks 1 tensor(s) the index puts there: layers.9.weight",
        ),
        (
            lambda f: _index(f, lambda m: m.pop("layers.3.weight")),
            "shard model-00002-of-00002.safetensors holds 1 tensor(s) the index does not list: layers.3.weight",
        ),
        (
            lambda f: _index(f, lambda m: m.update({"layers.0.weight": "../outside.safetensors"})),
            "shard ../outside.safetensors: lies outside the folder",
        ),
        (lambda f: _index(f, lambda m: m.clear()), "lists no tensor"),
    ],
)
def test_a_sharded_folder_that_does_not_load_is_broken(
    tmp_path: Path, damage: Callable[[Path], None], said: str
) -> None:
    folder = _sharded(tmp_path)
    found = inspect_checkpoint(folder)
    assert found.verdict == "ok", found.lines()
    assert "2 shard(s) indexed by model.safetensors.index.json" in found.description
    damage(folder)
    found = inspect_checkpoint(folder)
    assert found.verdict == "broken", found.lines()
    assert any(said in p for p in found.problems), found.problems


def test_a_pytorch_model_bin_folder_is_inspected_as_its_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "hfbin"
    folder.mkdir()
    torch.save(STATE, folder / "pytorch_model.bin")
    assert main(["check", str(folder)]) == 0
    assert "a Hugging Face folder: pytorch_model.bin, a torch.save zip archive" in capsys.readouterr().out
    torch.save({**STATE, "args": argparse.Namespace(lr=0.1)}, folder / "pytorch_model.bin")
    assert main(["check", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "torch.load(weights_only=True) refuses: argparse.Namespace" in out and "verdict: unsafe" in out


def test_a_folder_that_is_no_checkpoint_says_what_it_is_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "neither a DCP checkpoint" in out and "nor a Hugging Face folder" in out and "verdict: broken" in out
