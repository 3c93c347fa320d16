"""ONNX tensor data: `check FILE` says broken where onnx or ONNX Runtime cannot read or use it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ckpt_compat.inspection import inspect_checkpoint

onnx = pytest.importorskip("onnx")
FIXTURE = Path(__file__).resolve().parent.parent / "ckpt_compat" / "fixtures" / "corpora" / "torch-2.13" / "tied"


def _external(tmp_path: Path) -> Path:
    """The committed ONNX fixture saved with every tensor in one external file, as onnx.save does
    for a model past 2 GiB: each tensor with its offset and length."""
    model = onnx.load(str(FIXTURE / "onnx.onnx"))
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


def _edit(key: str, value: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        model = onnx.load(str(path), load_external_data=False)
        tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
        entries = {e.key: e for e in tensor.external_data}
        if key in entries:
            entries[key].value = value
        else:
            added = tensor.external_data.add()
            added.key, added.value = key, value
        path.write_bytes(model.SerializeToString())

    return edit


def _cut_data(path: Path) -> None:
    data = path.with_name("weights.bin")
    data.write_bytes(data.read_bytes()[:-3])


def _alone(path: Path, data: bytes) -> None:
    """The first tensor in a file of its own, with no offset or length: the rest of the file is its data."""
    model = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    del tensor.external_data[:]
    location = tensor.external_data.add()
    location.key, location.value = "location", "alone.bin"
    path.with_name("alone.bin").write_bytes(data)
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (_cut_data, "run past the end of weights.bin"),
        (_edit("offset", "banana"), "offset 'banana' is not a number"),
        (_edit("offset", "99999999"), "offset 99999999 is past the end of weights.bin"),
        (_edit("length", "3"), "bytes, not the 3 bytes it names"),
        (_edit("length", str(2**40)), "run past the end of weights.bin"),
        (lambda path: _alone(path, b"\0" * 3), "bytes, alone.bin holds 3 from offset 0"),
    ],
)
def test_external_data_onnx_load_cannot_read_is_broken(
    tmp_path: Path, damage: Callable[[Path], None], said: str
) -> None:
    path = _external(tmp_path)
    assert inspect_checkpoint(path).verdict == "ok"
    onnx.load(str(path))  # the undamaged file loads
    damage(path)
    inspection = inspect_checkpoint(path)
    assert inspection.verdict == "broken", inspection.lines()
    assert any("external data of tensor" in p and said in p for p in inspection.problems), inspection.problems
    # What onnx makes of it: onnx.load refuses it, or its checker refuses what it loaded.
    with pytest.raises(Exception):  # noqa: B017 - ValueError or onnx's ValidationError, as the damage has it
        onnx.checker.check_model(onnx.load(str(path)))


def test_more_data_than_the_shape_takes_is_not_broken(tmp_path: Path) -> None:
    """No length and a longer file: ONNX Runtime reads what the shape takes (onnx.load reads it all)."""
    path = _external(tmp_path)
    _alone(path, b"\0" * 100_000)
    assert inspect_checkpoint(path).verdict == "ok"
    ort = pytest.importorskip("onnxruntime")
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_raw_data_longer_than_its_shape_is_broken(tmp_path: Path) -> None:
    """onnx.checker passes raw_data longer than the shape takes; ONNX Runtime refuses the model."""
    model = onnx.load(str(FIXTURE / "onnx.onnx"))
    tensor = next(t for t in model.graph.initializer if t.raw_data)
    tensor.raw_data += b"\0" * 4
    path = tmp_path / "long.onnx"
    path.write_bytes(model.SerializeToString())
    onnx.checker.check_model(str(path))
    problems = inspect_checkpoint(path).problems
    assert any(f"tensor {tensor.name!r}: its shape" in p and "ONNX Runtime refuses it" in p for p in problems), problems
    ort = pytest.importorskip("onnxruntime")
    with pytest.raises(Exception, match="raw_data size"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
