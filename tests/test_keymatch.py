"""check FILE --model: every culprit, on real files written here. The culprits are found by the task
the command's contained child runs (`keymatch.match_task`), called here in-process (these tests wrote
the files); the command itself, its child and its errors, through the CLI as users run it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from ckpt_compat.cli import main
from ckpt_compat.identify import MAX_SIZE
from ckpt_compat.keymatch import KeyMatch, Kind, Layout, match, match_task
from ckpt_compat.stored import StoredError, read_stored

MODELS = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.body = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 6, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("position_ids", torch.arange(5), persistent=False)


def build():
    torch.manual_seed(0)
    return Net()
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "keymodels.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("keymodels", None)
    return tmp_path


def _net() -> nn.Module:
    import keymodels  # type: ignore[import-not-found]

    return keymodels.build()  # type: ignore[no-any-return]


def _check(path: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    """(exit code, JSON) as ``check PATH --model keymodels:build --format json`` gives them, through
    the child's task and its answer's JSON, in this process."""
    request = {
        "path": str(path),
        "max_size": MAX_SIZE,
        "layout": Layout.of(_net()).to_json(),
        "model": "keymodels:build",
    }
    answer = match_task(request)
    assert "match" in answer, answer
    found = KeyMatch.from_json(json.loads(json.dumps(answer["match"])))
    return (0 if found.loads_strictly else 1), found.to_json()


def _cli_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = main(["check", str(path), "--model", "keymodels:build", "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


def _kinds(report: dict) -> dict[str, list[str]]:  # type: ignore[type-arg]
    return {f["kind"]: f["keys"] for f in report["findings"]}


def test_a_faithful_torch_save_file_loads_strictly(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(_net().state_dict(), project / "ok.pt")
    code, report = _cli_check(project / "ok.pt", capsys)
    assert (code, report["loads_strictly"], report["findings"]) == (0, True, [])


@pytest.mark.parametrize(("prefix", "named"), [("_orig_mod.", "torch.compile"), ("module.", "DataParallel")])
def test_a_wrapper_prefix_is_named_with_its_fix(project: Path, prefix: str, named: str) -> None:
    torch.save({prefix + k: v for k, v in _net().state_dict().items()}, project / "wrapped.pt")
    code, report = _check(project / "wrapped.pt")
    assert code == 1
    (finding,) = report["findings"]  # nothing else: the keys match once the prefix is stripped
    assert finding["kind"] == "prefix" and named in finding["detail"] and prefix in finding["fix"]


def test_a_task_head_prefix_on_the_model_side(project: Path) -> None:
    class Task(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = _net()
            self.classifier = nn.Linear(4, 2)

    torch.save(_net().state_dict(), project / "base.pt")
    found = match(read_stored(project / "base.pt"), Task(), "Task")
    kinds = {f.kind: f for f in found.findings}
    assert "'bert.'" in kinds[Kind.PREFIX].detail
    assert set(kinds[Kind.MISSING].keys) == {"classifier.weight", "classifier.bias"}


def test_position_ids_saved_by_older_code_are_named(project: Path) -> None:
    state = {**{k: v.clone() for k, v in _net().state_dict().items()}, "position_ids": torch.arange(5)}
    save_file(state, str(project / "old.safetensors"))
    code, report = _check(project / "old.safetensors")
    assert code == 1
    assert _kinds(report) == {"persisted_buffer": ["position_ids"]}


def test_num_batches_tracked_blocks_only_a_versioned_state_dict(project: Path) -> None:
    state = _net().state_dict()
    del state["norm.num_batches_tracked"]
    torch.save(state, project / "versioned.pt")  # keeps _metadata: BatchNorm will not fill it in
    code, report = _check(project / "versioned.pt")
    assert code == 1 and report["findings"][0]["kind"] == "num_batches_tracked"
    with pytest.raises(RuntimeError, match="num_batches_tracked"):  # torch agrees
        _net().load_state_dict(state)
    save_file({k: v.clone() for k, v in state.items()}, str(project / "plain.safetensors"))
    code, report = _check(project / "plain.safetensors")
    assert code == 0 and report["findings"][0]["kind"] == "num_batches_tracked"
    _net().load_state_dict(dict(state))  # and here torch fills it in, as the note says


def test_a_tie_stored_once(project: Path) -> None:
    state = {k: v.clone() for k, v in _net().state_dict().items() if k != "head.weight"}
    save_file(state, str(project / "once.safetensors"))
    code, report = _check(project / "once.safetensors")
    assert code == 1 and _kinds(report) == {"tie_stored_once": ["head.weight"]}
    assert "emb.weight" in report["findings"][0]["detail"]


def test_a_tie_stored_twice_with_two_values(project: Path) -> None:
    state = {k: v.clone() for k, v in _net().state_dict().items()}
    torch.save(state, project / "equal.pt")
    assert _check(project / "equal.pt")[0] == 0  # two equal copies load fine
    state["head.weight"] += 1
    torch.save(state, project / "twice.pt")
    code, report = _check(project / "twice.pt")
    assert code == 1 and _kinds(report) == {"tie_stored_twice": ["emb.weight", "head.weight"]}


def test_a_tie_stored_twice_in_another_dtype_is_judged_after_the_cast(project: Path) -> None:
    state = {k: v.clone() for k, v in _net().state_dict().items()}
    state["emb.weight"] = state["emb.weight"].double()  # the same values, once as float64
    torch.save(state, project / "wide.pt")
    code, report = _check(project / "wide.pt")
    assert code == 0 and _kinds(report) == {"dtype": ["emb.weight"]}
    state["emb.weight"] += 1.0
    torch.save(state, project / "apart.pt")
    assert "tie_stored_twice" in _kinds(_check(project / "apart.pt")[1])


def test_shapes_block_and_dtypes_are_noted(project: Path) -> None:
    state = _net().state_dict()
    state["body.weight"] = torch.zeros(4, 5)
    state["body.bias"] = state["body.bias"].to(torch.float64)
    torch.save(state, project / "shapes.pt")
    code, report = _check(project / "shapes.pt")
    kinds = {f["kind"]: f for f in report["findings"]}
    assert code == 1 and kinds["shape"]["keys"] == ["body.weight"] and "[4, 5]" in kinds["shape"]["detail"]
    assert kinds["dtype"]["keys"] == ["body.bias"] and not kinds["dtype"]["blocks_strict"]


def test_a_training_checkpoint_is_unwrapped(project: Path) -> None:
    torch.save({"epoch": 3, "state_dict": _net().state_dict(), "lr": 0.1}, project / "train.pt")
    code, report = _check(project / "train.pt")
    assert (code, report["inside"]) == (0, "state_dict")


def test_a_sharded_hugging_face_folder(project: Path) -> None:
    folder = project / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    state = {k: v.clone() for k, v in _net().state_dict().items() if k != "head.weight"}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[:3], "model-00002-of-00002.safetensors": keys[3:]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    code, report = _check(folder)
    assert "2 shard(s)" in report["kind"] and _kinds(report) == {"tie_stored_once": ["head.weight"]}
    index["weight_map"]["emb.weight"] = "model-00003-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    code, report = _check(folder)
    assert code == 1 and any("00003" in f["detail"] for f in report["findings"] if f["kind"] == "index")


def test_a_shard_outside_the_folder_is_refused(project: Path) -> None:
    folder = project / "hf"
    folder.mkdir()
    save_file({"x": torch.zeros(1)}, str(project / "outside.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../outside.safetensors"}}))
    with pytest.raises(StoredError, match="outside the folder"):
        read_stored(folder)


@pytest.mark.parametrize(
    ("index", "said"),
    [
        ('{"weight_map": {"x": "a\\u0000b.safetensors"}}', "is not a file name"),
        ('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}", "RecursionError"),
        ('{"weight_map": {"x": 5}}', "not a mapping of names to shard files"),
    ],
)
def test_a_hostile_index_is_refused_naming_it(project: Path, index: str, said: str) -> None:
    folder = project / "hf"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(index)
    with pytest.raises(StoredError, match=said) as raised:
        read_stored(folder)
    assert str(folder / "model.safetensors.index.json") in str(raised.value)


def test_unreadable_inputs_are_usage_errors(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scripted = torch.jit.script(nn.Linear(2, 2))
    torch.jit.save(scripted, str(project / "script.pt"))
    assert main(["check", str(project / "script.pt"), "--model", "keymodels:build"]) == 2
    (project / "notes.txt").write_text("hello")
    assert main(["check", str(project / "notes.txt"), "--model", "keymodels:build"]) == 2
    assert main(["check", str(project / "none.pt"), "--model", "keymodels:build"]) == 2
    assert main(["check", str(project / "notes.txt"), "--model", "keymodels:nothing"]) == 2
    assert main(["check", "--inputs", "keymodels:build"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("ckpt-compat: ") or "error" in line for line in err), err
    assert any("keymodels has no attribute 'nothing'" in line for line in err)
    assert any("give --model too" in line for line in err)


def test_a_hugging_face_folder_of_pytorch_model_bin(project: Path) -> None:
    folder = project / "hfbin"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    torch.save({f"bert.{k}": v for k, v in _net().state_dict().items()}, folder / "pytorch_model.bin")
    code, report = _check(folder)
    assert report["kind"] == "Hugging Face folder (pytorch_model.bin)"
    assert code == 1 and [f["kind"] for f in report["findings"]] == ["prefix"]
    assert "'bert.'" in report["findings"][0]["fix"]


@pytest.mark.parametrize("output", ["text", "markdown"])
def test_a_files_key_names_stay_in_their_line(project: Path, capsys: pytest.CaptureFixture[str], output: str) -> None:
    """Keys are the file's: one named ``x\\n# loads strictly`` can print no line of its own."""
    state = dict(_net().state_dict())
    state["x\n# model loads strictly <!--"] = torch.zeros(1)
    torch.save(state, project / "spoof.pt")
    assert main(["check", str(project / "spoof.pt"), "--model", "keymodels:build", "--format", output]) == 1
    out = capsys.readouterr().out
    assert "does NOT load strictly" in out.splitlines()[0]
    spoof = next(line for line in out.splitlines() if "model loads strictly" in line)
    assert "x # model loads strictly" in spoof and "<!--" not in (out if output == "markdown" else "")
    assert not any(line.lstrip("#- ").startswith("model loads strictly") for line in out.splitlines())


def test_the_file_is_read_in_another_process(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command's own process never unpickles or opens the checkpoint: its contained child does."""
    torch.save(_net().state_dict(), project / "ok.pt")
    save_file({k: v.clone() for k, v in _net().state_dict().items()}, str(project / "ok.safetensors"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the checkpoint was read in the command's own process")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr("safetensors.safe_open", refuse)
    assert _cli_check(project / "ok.pt", capsys)[0] == 0
    assert _cli_check(project / "ok.safetensors", capsys)[0] == 0


def test_as_the_program_the_reader_runs_none_of_the_users_code(project: Path) -> None:
    """``ckpt-compat check FILE --model``, run as the program, where the reader is a fork of a server
    forked from the command (`cli_model.run_match_model`): the user's module is imported once, by
    the command, and the answer is the one an interpreter of its own gives (the other tests here)."""
    import subprocess

    torch.save(_net().state_dict(), project / "ok.pt")
    record = project / "imports"
    (project / "keymodels.py").write_text(
        MODELS + f"\nopen({str(record)!r}, 'a').write(f'{{__import__(\"os\").getpid()}}\\n')\n"
    )
    root = Path(__file__).parents[1]
    command = [
        sys.executable,
        "-m",
        "ckpt_compat.cli",
        "check",
        "ok.pt",
        "--model",
        "keymodels:build",
        "--format",
        "json",
    ]
    ran = subprocess.run(
        command, cwd=project, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": f"{root}"}
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["loads_strictly"] is True
    assert len(record.read_text().split()) == 1  # the command's import; the reader never ran the module


def test_a_reader_that_dies_is_one_line_naming_the_file(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(_net().state_dict(), project / "ok.pt")
    monkeypatch.setattr("ckpt_compat.isolation.MEMORY_LIMIT", 64 * 2**20)  # too little to import torch
    assert main(["check", str(project / "ok.pt"), "--model", "keymodels:build"]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert str(project / "ok.pt") in line and "the process reading it failed" in line, line
    assert "Traceback" not in captured.err and captured.out == ""


def test_a_training_checkpoint_with_its_own_classes_needs_trust(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """weights_only=True refuses the argparse.Namespace a training script saves beside the weights;
    --trust loads the file with weights_only=False, in the contained child as ever."""
    import argparse

    torch.save({"state_dict": _net().state_dict(), "args": argparse.Namespace(lr=0.1)}, project / "train.pt")
    args = ["check", str(project / "train.pt"), "--model", "keymodels:build", "--format", "json"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "argparse.Namespace" in line and "pass --trust" in line, line
    assert main([*args, "--trust"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["inside"], report["loads_strictly"]) == ("state_dict", True)
    assert main(["check", str(project / "train.pt"), "--trust"]) == 2  # nothing to vouch for without --model
    assert "--trust: vouches for the CHECKPOINT that --model is compared with" in capsys.readouterr().err


EDITS = st.lists(st.sampled_from(["drop", "add", "prefix", "shape", "double", "twice", "buffer"]), max_size=3)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS, keys=st.randoms(use_true_random=False), versioned=st.booleans(), safetensors=st.booleans())
def test_loads_strictly_is_what_load_state_dict_does(
    project: Path, edits: list[str], keys: Any, versioned: bool, safetensors: bool
) -> None:
    """Differential: a state dict edited as files in the wild are (keys dropped or added, a wrapper
    prefix, a shape or dtype changed, a tie stored twice with two values, a non-persistent buffer
    saved) is said to load strictly exactly when load_state_dict(strict=True) takes it and leaves
    every tensor the file holds in the model as the file holds it (cast to the model's dtype)."""
    state = _net().state_dict() if versioned else dict(_net().state_dict())
    for edit in edits:
        names = list(state)
        if edit == "drop" and names:
            del state[keys.choice(names)]
        elif edit == "add":
            state[f"extra{keys.randint(0, 9)}.weight"] = torch.zeros(2)
        elif edit == "prefix":
            renamed = type(state)(("module." + k, v) for k, v in state.items())
            if hasattr(state, "_metadata"):
                renamed._metadata = state._metadata  # type: ignore[attr-defined]
            state = renamed
        elif edit == "shape" and names:
            name = keys.choice(names)
            state[name] = torch.zeros(*(d + 1 for d in state[name].shape)) if state[name].dim() else torch.zeros(2)
        elif edit == "double" and names:
            name = keys.choice(names)
            state[name] = state[name].double() if state[name].is_floating_point() else state[name]
        elif edit == "twice" and "head.weight" in state:
            state["head.weight"] = state["head.weight"] + 1
        elif edit == "buffer":
            state["position_ids"] = torch.arange(5)
    path = project / ("edited.safetensors" if safetensors else "edited.pt")
    if safetensors:
        save_file({k: v.contiguous().clone() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    found = match(read_stored(path), _net(), "keymodels:build")
    model = _net()
    on_disk = read_stored(path)
    loadable = type(state)(state) if not safetensors else dict(state)
    if not safetensors and hasattr(state, "_metadata"):
        loadable._metadata = state._metadata  # type: ignore[attr-defined]
    try:
        model.load_state_dict(loadable, strict=True)
        held = model.state_dict()
        torch_says = all(torch.equal(held[k], on_disk.read(k).to(held[k].dtype)) for k in on_disk.tensors)
    except RuntimeError:
        torch_says = False
    assert found.loads_strictly is torch_says, (edits, [(f.kind.value, f.keys) for f in found.findings])
