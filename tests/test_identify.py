from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from ckpt_compat.formats import get_format
from ckpt_compat.identify import identify, identify_kind
from ckpt_compat.specs import build, example_inputs
from tests.samples import load

FIXTURES = Path(__file__).resolve().parent.parent / "ckpt_compat" / "fixtures" / "corpora"


@pytest.mark.parametrize(
    ("fmt", "says"),
    [
        ("torch_zip", "a torch.save zip archive"),
        ("torch_legacy", "legacy (pre-1.6, non-zip) format"),
        ("safetensors_file", "a safetensors file with 25 tensor(s)"),
        ("torchscript_script", "a TorchScript archive"),
        ("torch_export", "a torch.export program"),
        ("onnx", "an ONNX model (protobuf)"),
        ("dcp", "(DCP) directory"),
    ],
)
def test_every_format_is_recognised(fmt: str, says: str, tmp_path: Path) -> None:
    f = get_format(fmt)
    if f.why_not_usable():
        pytest.skip(f.why_not_usable() or "")
    # "tied" for ONNX: torch 2.6's exporter with onnxscript >= 0.3 cannot convert BatchNorm (in "plain").
    spec = load("tied" if fmt == "onnx" else "plain")
    f.save(build(spec), tmp_path / f"m{f.suffix}", example_inputs(spec))
    assert says in identify(tmp_path / f"m{f.suffix}")


def test_a_state_dict_saved_as_pb_is_not_protobuf(tmp_path: Path) -> None:
    torch.save(build(load("plain")).state_dict(), tmp_path / "model.pb")
    assert identify(tmp_path / "model.pb").startswith("a torch.save zip archive (not protobuf, whatever its .pb suffix")


def test_truncated_and_unknown_files(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(3)}, tmp_path / "x.pt")
    data = (tmp_path / "x.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt zip" in identify(tmp_path / "cut.pt")
    (tmp_path / "notes.txt").write_text("hello")
    assert identify(tmp_path / "notes.txt").startswith("not a checkpoint format")


@pytest.mark.parametrize("release", ["2.2", "2.4", "2.6", "2.8", "2.15"])
def test_torch_export_archives_of_both_layouts_are_recognised(release: str) -> None:
    # 2.2-2.6 write flat members (serialized_exported_program.json ...), 2.8 on the PT2 archive
    # layout (<name>/models/, archive_format): both are programs that torch.export.load reads.
    path = FIXTURES / f"torch-{release}" / "drawn-00" / "torch_export.pt2"
    assert identify(path).startswith("a torch.export program")


def test_a_file_only_a_missing_package_reads_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without onnx installed an ONNX file cannot be told from noise: not "broken", but a usage
    error naming the file and the package (likewise safetensors for check FILE --model)."""
    from safetensors.torch import save_file

    from ckpt_compat.cli import main
    from ckpt_compat.identify import MissingDependency
    from ckpt_compat.keymatch import Layout, match_task

    onnx_file = Path(__file__).resolve().parent.parent / "ckpt_compat/fixtures/corpora/torch-2.13/tied/onnx.onnx"
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "w.safetensors"))
    monkeypatch.setitem(sys.modules, "onnx", None)  # what import finds when the package is not installed
    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(MissingDependency, match="pip install onnx"):
        identify_kind(onnx_file)
    # check FILE reads in a child of its own (`checkfile`): a machine without onnx, for it too.
    blocker = tmp_path / "without-onnx"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['onnx'] = None\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")])))
    assert main(["check", str(onnx_file)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(onnx_file) in line and "onnx is not installed" in line
    layout = Layout.of(torch.nn.Linear(2, 2, bias=False)).to_json()
    answer = match_task({"path": str(tmp_path / "w.safetensors"), "max_size": 2**30, "layout": layout, "model": "m"})
    assert "safetensors package is not installed" in answer["refused"]
