"""check FILE reads the file in a contained child: the command's process parses none of it, a child
that a file stops makes the file broken, and the child's answer is checked before it is shown."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ckpt_compat import checkfile
from ckpt_compat.cli import main
from ckpt_compat.inspection import Inspection, inspect_checkpoint

TIED = Path(__file__).parents[1] / "ckpt_compat" / "fixtures" / "corpora" / "torch-2.13" / "tied"


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("the file was parsed in the command's own process")


@pytest.mark.parametrize("name", ["torch_zip.pt", "onnx.onnx", "safetensors_model.safetensors", "dcp.dcp"])
def test_the_commands_process_parses_nothing_of_the_file(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch's archive reader (C++), onnx's protobuf parser and safetensors' run in the child: here
    each way into them raises, and the command still answers with the child's verdict."""
    for target in ("ckpt_compat.inspection.inspect_checkpoint", "ckpt_compat.identify.identify_kind"):
        monkeypatch.setattr(target, _refuse)
    assert main(["check", str(TIED / name), "--format", "json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["verdict"] == "ok" and answer["path"] == str(TIED / name)


def test_a_file_that_stops_its_reader_is_broken_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A native crash or exhausted memory while reading: the file is broken (torch.load's own
    reader meets the same bytes), said as a finding, and the command goes on (exit 1)."""
    monkeypatch.setattr("ckpt_compat.isolation.MEMORY_LIMIT", 64 * 2**20)  # the child dies on its imports
    assert main(["check", str(TIED / "torch_zip.pt")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{TIED / 'torch_zip.pt'}: not read to the end: it stopped the process reading it"
    stopped = r"  broken: reading it stopped the contained reader \((crash|out_of_memory): .*; do not load it"
    assert re.fullmatch(stopped, out[1]), out
    assert out[-1] == "  verdict: broken"


def test_an_answer_is_checked_field_by_field() -> None:
    found = inspect_checkpoint(TIED / "torch_module.pt")
    assert found.verdict == "unsafe" and found.refused
    back = Inspection.from_json(json.loads(json.dumps(found.to_json())))
    assert back.lines() == found.lines() and back.to_json() == found.to_json()
    for change, fragment in [
        ({"verdict": "ok"}, "does not follow from the findings"),  # refused globals, yet "ok"
        ({"problems": "none"}, "problems must be a list of text"),
        ({"refused_globals": [1]}, "refused_globals must be a list of text"),
        ({"pickle_protocol": True}, "pickle_protocol must be a whole number"),
        ({"executes": 3}, "executes must be text or null"),
        ({"path": None}, "path must be text"),
        ({"schema": "ckpt-compat/inspection/0"}, "not a ckpt-compat/inspection/1 object"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            Inspection.from_json({**found.to_json(), **change})


def test_an_error_of_ours_in_the_reader_is_no_verdict(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A Python exception in the child is ckpt-compat's bug: an internal error naming the file, not
    "broken"; what the child refuses to read is the caller's usage error."""

    def raising(path: Path, **kwargs: Any) -> Inspection:
        raise KeyError("a bug")

    monkeypatch.setattr("ckpt_compat.inspection.inspect_checkpoint", raising)
    answer = checkfile.handle({"path": str(TIED / "torch_zip.pt"), "max_size": 2**30})
    assert answer["error"]["type"] == "KeyError"
    monkeypatch.setattr("ckpt_compat.isolation.call_once", lambda *args, **kwargs: answer)
    with pytest.raises(RuntimeError, match=r"torch_zip.pt: reading it raised KeyError: .*a bug"):
        checkfile.inspect_contained(TIED / "torch_zip.pt", 2**30)
    monkeypatch.setattr("ckpt_compat.isolation.call_once", lambda *args, **kwargs: {"usage": "x: too large"})
    with pytest.raises(checkfile.NotRead, match="x: too large"):
        checkfile.inspect_contained(TIED / "torch_zip.pt", 2**30)


def test_a_read_that_does_not_finish_is_no_verdict(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hostile file may hang a reader, and a slow disk may only look like one: exit 2, one line."""
    monkeypatch.setattr(checkfile, "READ_TIMEOUT", 0.01)
    monkeypatch.setattr(checkfile, "SLOWEST_READ", 2**60)
    assert main(["check", str(TIED / "torch_zip.pt")]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert "torch_zip.pt: reading it did not finish in 0 s" in line and "do not load it unchecked" in line
    assert captured.out == ""
