"""`ckpt-compat check FILE` on good, broken, hostile and special inputs: nothing is executed.

The table of every bad-input class x format is written to docs/bad-inputs.md by this test
(``CKPT_COMPAT_WRITE_DOCS=1``) and checked against it otherwise, so the page cannot go stale.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ckpt_compat import payloads
from ckpt_compat.identify import NotAFile
from ckpt_compat.inspection import inspect_checkpoint
from tests.samples import rewrite_zip

TIED = Path(__file__).resolve().parent.parent / "ckpt_compat" / "fixtures" / "corpora" / "torch-2.13" / "tied"
DOC = Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md"
FILES = {
    "torch_zip": "torch_zip.pt",
    "torch_legacy": "torch_legacy.pt",
    "torch_module": "torch_module.pt",
    "safetensors": "safetensors_model.safetensors",
    "torchscript": "torchscript_script.pt",
    "torch_export": "torch_export.pt2",
    "onnx": "onnx.onnx",
}


def _copy(name: str, tmp: Path) -> Path:
    target = tmp / FILES[name]
    shutil.copyfile(TIED / FILES[name], target)
    return target


def _cut(fraction: float) -> Callable[[Path], None]:
    def cut(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return cut


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _drop_last_byte(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated to 10%": _cut(0.1),
    "truncated to 50%": _cut(0.5),
    "last byte missing": _drop_last_byte,
    "one bit flipped mid-file": _flip_middle,
}


@pytest.mark.parametrize("name", FILES)
def test_committed_files_inspect_as_what_they_are(name: str, tmp_path: Path) -> None:
    inspection = inspect_checkpoint(_copy(name, tmp_path))
    expected = "unsafe" if name in ("torch_module", "torchscript") else "ok"
    assert inspection.verdict == expected, inspection.lines()


def test_every_truncation_point_is_broken(tmp_path: Path) -> None:
    for name in ("torch_zip", "torch_legacy", "safetensors", "torch_export", "torchscript", "onnx"):
        data = (TIED / FILES[name]).read_bytes()
        path = tmp_path / FILES[name]
        path.write_bytes(data)
        passed = []
        for cut in reversed(range(len(data))):  # cut shorter and shorter: one write, no rewrites
            os.truncate(path, cut)
            if inspect_checkpoint(path).verdict == "ok":
                passed.append(cut)
        assert passed == [], f"{name}: cut at {passed[:5]} inspects as ok"


def _safetensors_header(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    change(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


def _first(header: dict[str, object]) -> dict[str, object]:
    entry = next(v for k, v in header.items() if k != "__metadata__")
    assert isinstance(entry, dict)
    return entry


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda h: _first(h).update(data_offsets=[0, 10**12]), "needs"),
        (lambda h: _first(h).update(dtype="Q9"), "unknown dtype"),
        (lambda h: _first(h).update(dtype=["F32"]), "unknown dtype"),  # found by the fuzzer: unhashable
        (lambda h: _first(h).update(shape=[-1]), "non-negative"),
        (lambda h: _first(h).update(data_offsets=[4, 4 + 4 * 16]), "gap or an overlap"),
        (lambda h: h.update(extra={"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}), "gap or an overlap"),
    ],
)
def test_safetensors_header_rules(change: Callable[[dict[str, object]], None], says: str, tmp_path: Path) -> None:
    path = _copy("safetensors", tmp_path)
    _safetensors_header(path, change)
    inspection = inspect_checkpoint(path)
    assert inspection.verdict == "broken" and any(says in p for p in inspection.problems), inspection.lines()


def test_a_storage_record_of_the_wrong_length_is_broken(tmp_path: Path) -> None:
    import zipfile

    path = _copy("torch_zip", tmp_path)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "cut.pt", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:-4] if "/data/" in info.filename and len(data) > 4 else data)
    inspection = inspect_checkpoint(tmp_path / "cut.pt")
    assert any("holds" in p and "bytes" in p for p in inspection.problems), inspection.lines()


def test_a_zip_version_python_cannot_read_is_broken(tmp_path: Path) -> None:
    # Found by the fuzzer: one flipped bit in a central-directory entry's "version needed to
    # extract" makes zipfile raise NotImplementedError("zip file version 6.4") on opening.
    from ckpt_compat.identify import identify_kind

    data = bytearray(_copy("torch_zip", tmp_path).read_bytes())
    entry = data.index(b"PK\x01\x02")
    data[entry + 6 : entry + 8] = struct.pack("<H", 64)
    (tmp_path / "v64.pt").write_bytes(bytes(data))
    assert identify_kind(tmp_path / "v64.pt").kind == "broken_zip"
    assert inspect_checkpoint(tmp_path / "v64.pt").verdict == "broken"


@pytest.mark.parametrize("name", [n for n, p in payloads.PAYLOADS.items() if p.executes])
def test_hostile_payloads_are_unsafe_and_nothing_runs(name: str, tmp_path: Path) -> None:
    payload = payloads.PAYLOADS[name]
    if payload.loader == "torch.export.load" and not hasattr(__import__("torch"), "export"):
        pytest.skip("this torch cannot write a .pt2")
    marker = tmp_path / "canary"
    path = payloads.write(name, tmp_path / f"payload{payload.suffix}", marker)
    inspection = inspect_checkpoint(path)
    assert inspection.verdict == "unsafe", inspection.lines()
    assert not marker.exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ckpt_compat.cli", "check", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_fifos_and_devices_are_refused_with_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/zero")):
        done = _cli(str(target))  # the timeout above fails the test if it hangs
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert str(target) in done.stderr
    with pytest.raises(NotAFile):
        inspect_checkpoint(fifo)


def test_exit_codes_and_the_file_alias(tmp_path: Path) -> None:
    assert _cli(str(_copy("torch_zip", tmp_path))).returncode == 0
    assert _cli("--file", str(_copy("torch_module", tmp_path))).returncode == 1
    bad = _copy("safetensors", tmp_path)
    _drop_last_byte(bad)
    assert _cli(str(bad)).returncode == 1
    big = _cli(str(_copy("torch_zip", tmp_path)), "--max-size", "100")
    assert big.returncode == 2 and "--max-size" in big.stderr
    assert _cli(str(tmp_path / "missing.pt")).returncode == 2
    assert _cli().returncode == 2


def _table() -> str:
    import tempfile

    rows = ["| input | " + " | ".join(FILES) + " |", "|---|" + "---|" * len(FILES)]
    with tempfile.TemporaryDirectory() as tmp:
        for label, corrupt in {"as committed": lambda _: None, **CORRUPTIONS}.items():
            cells = []
            for name in FILES:
                path = _copy(name, Path(tmp))
                corrupt(path)
                inspection = inspect_checkpoint(path)
                why = (inspection.problems or [inspection.executes or ", ".join(inspection.refused)])[0]
                why = why.replace(str(path), FILES[name]).replace("|", "/")[:90]
                cells.append(f"**{inspection.verdict}**" + (f": {why}" if why else ""))
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# A payload for each format whose loaders it targets (see ckpt_compat/payloads.py).
HOSTILE = {"torch_zip": "reduce_protocol_2", "torch_module": "nested_load", "torchscript": "torchscript_dispatch"}
VERIFIED = {"torch_zip": "torch_zip", "torch_legacy": "torch_legacy", "torch_module": "torch_module",
            "safetensors": "safetensors_model", "torchscript": "torchscript_script", "torch_export": "torch_export",
            "onnx": "onnx"}  # fmt: skip


def _verify_table() -> str:
    """What `verify` (untrusted, in its contained worker) makes of the same inputs, per format:
    the outcomes of all the file's cells, with the first error's type."""
    import tempfile

    from ckpt_compat.corpus import corpus_specs, produce
    from ckpt_compat.formats import get_format
    from ckpt_compat.manifest import Manifest
    from ckpt_compat.verify import Task, Worker

    rows = ["| input | " + " | ".join(VERIFIED) + " |", "|---|" + "---|" * len(VERIFIED)]
    formats = [get_format(f) for f in VERIFIED.values() if not get_format(f).why_not_usable()]
    inputs: dict[str, Callable[[Path], None] | None] = {"as committed": None, **CORRUPTIONS, "hostile payload": None}
    with tempfile.TemporaryDirectory() as tmp, Worker(timeout=120) as worker:
        corpus = Path(tmp) / "c"
        produce(corpus, formats, specs={"tied": corpus_specs()["tied"]}, objects=False)
        entries = {e.format: (i, corpus / str(e.file)) for i, e in enumerate(Manifest.read(corpus).entries) if e.file}
        for label, corrupt in inputs.items():
            cells = []
            for name, fmt in VERIFIED.items():
                if fmt not in entries or (label == "hostile payload" and name not in HOSTILE):
                    cells.append("")
                    continue
                index, path = entries[fmt]
                original = path.read_bytes()
                if label == "hostile payload":
                    payloads.write(HOSTILE[name], path, Path(tmp) / "canary")
                elif corrupt is not None:
                    corrupt(path)
                answer = worker.run(Task(str(corpus), index, False, ("cpu",)))
                path.write_bytes(original)
                assert not (Path(tmp) / "canary").exists(), f"{name}: a payload ran under verify"
                cells.append(_outcomes(answer))
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _outcomes(answer: object) -> str:
    if isinstance(answer, tuple):
        return f"**{answer[0].value}**"
    counts: dict[str, int] = {}
    for cell in answer:  # type: ignore[attr-defined]
        counts[cell["outcome"]] = counts.get(cell["outcome"], 0) + 1
    first = next((c["error"]["type"] for c in answer if c.get("error")), "")  # type: ignore[attr-defined]
    shown = ", ".join(f"{o} x{n}" for o, n in sorted(counts.items()))
    return f"{shown}" + (f" ({first})" if first else "")


def test_the_bad_inputs_page_is_current() -> None:
    header = (
        "# `ckpt-compat check` on bad inputs\n\n"
        "Generated by `tests/test_inspection.py` (`CKPT_COMPAT_WRITE_DOCS=1 python -m pytest "
        "tests/test_inspection.py`), from the committed torch 2.13 `tied` fixtures. Verdicts: ok "
        "(exit 0), broken or unsafe (exit 1). A FIFO, a device or a file over `--max-size` is refused "
        "before it is read (exit 2). A flipped bit in tensor bytes is found only where the format "
        "checksums them (zip CRC); for safetensors and ONNX, `verify` compares digests from the "
        "corpus manifest.\n\n"
    )
    verify_header = (
        "\n## What `verify` makes of them\n\n"
        "The same inputs in a corpus, loaded by `verify` without `--trust` in its contained worker: the "
        "outcomes of every cell of the file (load variants x devices), and the first error's type. A "
        "hostile payload is refused before any loader that could run it sees it; no canary fires.\n\n"
    )
    page = header + _table() + "\n" + verify_header + _verify_table() + "\n"
    if os.environ.get("CKPT_COMPAT_WRITE_DOCS"):
        DOC.write_text(page, encoding="utf-8")
    assert DOC.read_text(encoding="utf-8") == page, "docs/bad-inputs.md is stale: rerun with CKPT_COMPAT_WRITE_DOCS=1"


def test_a_decompression_bomb_is_broken_before_a_byte_is_decompressed(tmp_path: Path) -> None:
    """A 2 MiB file whose data.pkl expanded to 2 GiB cost `check` 23 s and 4 GiB of memory: now the
    archive's directory is judged first. A checkpoint a zip tool repacked (deflated) still checks."""
    from tests.faults import deflated

    source = _copy("torch_zip", tmp_path)
    assert inspect_checkpoint(deflated(source, tmp_path / "deflated.pt")).verdict == "ok"
    bomb = inspect_checkpoint(deflated(source, tmp_path / "bomb.pt", padding=64 * 2**20))
    assert bomb.verdict == "broken" and len(bomb.problems) == 1, bomb.lines()
    assert "data.pkl would expand to 67,1" in bomb.problems[0] and "a decompression bomb" in bomb.problems[0]


def test_a_pickle_the_weights_only_unpickler_cannot_read_is_not_ok(tmp_path: Path) -> None:
    """torch.save(..., pickle_protocol=4) on torch <= 2.13: `check` said "ok ... for
    torch.load(weights_only=True)" of a file that load fails on ("Unsupported operand 149")."""
    import torch

    from ckpt_compat.picklescan import weights_only_opcodes

    torch.save({"w": torch.ones(2)}, tmp_path / "p4.pt", pickle_protocol=4)
    inspection = inspect_checkpoint(tmp_path / "p4.pt")
    implemented = weights_only_opcodes() or frozenset()
    if "FRAME" in implemented and "STACK_GLOBAL" in implemented:  # a torch that reads protocol 4
        assert inspection.verdict == "ok", inspection.lines()
        return
    assert inspection.verdict == "unsafe" and inspection.problems == [], inspection.lines()
    assert "FRAME" in inspection.unreadable and inspection.protocol == 4
    line = next(line for line in inspection.lines() if "cannot read its pickle" in line)
    assert "only weights_only=False reads it (pytorch/pytorch#118092)" in line


def test_a_member_outside_the_archive_directory_is_broken(tmp_path: Path) -> None:
    """torch's zip reader names the archive after its first member's directory and refuses any
    member outside it: a data.pkl in another directory is not what torch.load reads, and `check`
    said "ok" of such a file. The check is the real loader's verdict, asked here too."""
    import zipfile

    import torch

    source = _copy("torch_zip", tmp_path)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(tmp_path / "moved.pt", "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        top = src.namelist()[0].partition("/")[0]
        dst.writestr("other/data.pkl", src.read(f"{top}/data.pkl"))  # a second pickle beside the archive
    with pytest.raises(RuntimeError, match="not in a subdirectory"):
        torch.load(tmp_path / "moved.pt", weights_only=True)
    inspection = inspect_checkpoint(tmp_path / "moved.pt")
    assert inspection.verdict == "broken", inspection.lines()
    assert any(f"is outside {top}/, the first member's directory" in p for p in inspection.problems)


def test_a_name_cannot_print_a_line_of_its_own(tmp_path: Path) -> None:
    """A file (or zip member) named "x\\n  verdict: ok" printed a fake verdict line above the real one."""
    import subprocess
    import sys

    spoof = tmp_path / "x\n  verdict: ok\n.pt"
    shutil.copyfile(_copy("torch_zip", tmp_path), spoof)
    lines = inspect_checkpoint(spoof).lines()
    assert lines[0].startswith(f"{tmp_path}/x\\n  verdict: ok\\n.pt: ")
    assert [line for line in lines if "verdict:" in line and not line.startswith(str(tmp_path))] == ["  verdict: ok"]
    command = [sys.executable, "-m", "ckpt_compat.cli", "check", str(tmp_path / "no\nsuch.pt")]
    missing = subprocess.run(command, capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no\\nsuch.pt" in missing.stderr


def _header_case(change: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    return functools.partial(_safetensors_header, change=change)


def _packed(shape: list[int], nbytes: int) -> Callable[[Path], None]:
    """One more tensor, of 4-bit floats (two a byte), after the others' data."""

    def write(path: Path) -> None:
        raw = path.read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + size])
        end = len(raw) - 8 - size
        header["packed"] = {"dtype": "F4", "shape": shape, "data_offsets": [end, end + nbytes]}
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :] + bytes(nbytes))

    return write


def _leading_space(path: Path) -> None:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(struct.pack("<Q", size + 1) + b" " + raw[8:])


@pytest.mark.parametrize(
    "change",
    [
        _header_case(lambda h: h.setdefault("__metadata__", {}).update({"x": 1})),
        _header_case(lambda h: h.update({"__metadata__": [1]})),
        _header_case(lambda h: h.update({"__metadata__": None})),
        _header_case(lambda h: next(v for k, v in h.items() if k != "__metadata__").update({"note": 1})),
        _header_case(lambda h: next(v for k, v in h.items() if k != "__metadata__").update({"shape": [True]})),
        _header_case(lambda h: next(v for k, v in h.items() if k != "__metadata__").pop("shape")),
        _header_case(lambda h: next(v for k, v in h.items() if k != "__metadata__").update({"dtype": "f32"})),
        _leading_space,
        _packed([3], 2),  # 12 bits: the tensor ends inside a byte
        _packed([4], 2),
    ],
)
def test_a_safetensors_verdict_is_what_safetensors_does(tmp_path: Path, change: Callable[[Path], None]) -> None:
    """Differential: each header edit is ok to `check` exactly when safetensors' own reader opens the
    file and reads every tensor and the metadata."""
    from safetensors import safe_open

    path = _copy("safetensors", tmp_path)
    change(path)
    try:
        with safe_open(str(path), framework="pt") as reader:
            for key in reader.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                reader.get_tensor(key)
            reader.metadata()
        loads = True
    except Exception:
        loads = False
    inspection = inspect_checkpoint(path)
    assert (inspection.verdict == "ok") is loads, (loads, inspection.lines())


def _records(change: Callable[[dict[str, bytes], str], None]) -> Callable[[Path], None]:
    """The torch.save archive rebuilt with its records changed (``change(records, archive root)``)."""

    def write(path: Path) -> None:
        rewrite_zip(path, lambda records: change(records, next(iter(records)).split("/")[0]))

    return write


@pytest.mark.parametrize(
    "change",
    [
        _records(lambda r, root: None),
        _records(lambda r, root: r.pop(f"{root}/version")),
        _records(lambda r, root: r.update({f"{root}/version": b"99\n"})),
        _records(lambda r, root: r.update({f"{root}/version": b"abc\n"})),
        _records(lambda r, root: r.update({f"{root}/byteorder": b"middle"})),
        _records(lambda r, root: r.update({f"{root}/.data/serialization_id": b"\xff\xfe"})),
        _records(lambda r, root: r.pop(f"{root}/byteorder", None)),
        _records(lambda r, root: r.update({f"{root}/extra": b"x"})),
        _records(lambda r, root: r.update({f"{root}/.storage_alignment": b"abc"})),
        _records(lambda r, root: r.update({f"{root}/.storage_alignment": b"7"})),
        _records(lambda r, root: r.update({f"{root}/.format_version": b"zz"})),
    ],
)
def test_a_torch_zip_verdict_is_what_torch_load_does(tmp_path: Path, change: Callable[[Path], None]) -> None:
    """Differential: each record edit is ok to `check` exactly when torch.load(weights_only=True)
    reads the file back with the values it was saved with."""
    import torch

    path = _copy("torch_zip", tmp_path)
    saved = torch.load(str(path), weights_only=True)
    change(path)
    try:
        loaded = torch.load(str(path), weights_only=True)
        loads = loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    except Exception:
        loads = False
    inspection = inspect_checkpoint(path)
    assert (inspection.verdict == "ok") is loads, (loads, inspection.lines())


@pytest.mark.parametrize(("field", "value"), [(0, 1), (1, 7), (2, 2), (2, 0), (1, 0)])
def test_a_tensor_view_past_its_storage_is_broken_as_torch_load_finds(tmp_path: Path, field: int, value: int) -> None:
    """The pickle's (storage offset, size, stride) of a 6-element tensor rewritten in place: a view
    reaching past the storage fails torch.load; a broadcast (stride 0) or empty one loads."""
    import pickletools

    import torch

    def patch(records: dict[str, bytes]) -> None:
        name = next(n for n in records if n.endswith("data.pkl"))
        ops = list(pickletools.genops(records[name]))
        after = next(i for i, (op, _, _) in enumerate(ops) if op.name == "BINPERSID")
        small = [pos for op, _, pos in ops[after:] if op.name == "BININT1"][:3]  # offset, size, stride
        pickled = bytearray(records[name])
        pickled[small[field] + 1] = value
        records[name] = bytes(pickled)

    path = tmp_path / "view.pt"
    torch.save({"a": torch.arange(6, dtype=torch.float32)}, path)
    rewrite_zip(path, patch)
    try:
        torch.load(str(path), weights_only=True)
        loads = True
    except RuntimeError:
        loads = False
    inspection = inspect_checkpoint(path)
    assert (inspection.verdict == "ok") is loads, inspection.lines()
    assert loads or any("torch.load cannot rebuild it" in p for p in inspection.problems)


def test_safetensors_fnuz_floats_are_read_as_safetensors_reads_them() -> None:
    for name in ("float8_e4m3fnuz", "float8_e5m2fnuz"):
        path = TIED.parent / f"dtype-{name}" / "safetensors_file.safetensors"
        assert inspect_checkpoint(path).verdict == "ok", inspect_checkpoint(path).lines()


def _legacy_edit(name: str) -> Callable[[Path], None]:
    """A legacy file's records rewritten: its protocol pickle, a storage's element count, bytes after it."""
    import pickle

    from ckpt_compat.picklescan import scan

    def edit(path: Path) -> None:
        raw = path.read_bytes()
        ends = [0]
        for _ in range(5):
            ends.append(scan(raw, start=ends[-1]).end)
        if name == "protocol":
            raw = raw[: ends[1]] + pickle.dumps(1002, protocol=2) + raw[ends[2] :]
        elif name == "count":
            (count,) = struct.unpack("<q", raw[ends[5] : ends[5] + 8])
            raw = raw[: ends[5]] + struct.pack("<q", count - 1) + raw[ends[5] + 8 :]
        elif name == "appended":
            raw += raw  # a second save in the same file
        path.write_bytes(raw)

    return edit


@pytest.mark.parametrize("name", ["none", "protocol", "count", "appended"])
def test_a_legacy_verdict_is_what_torch_load_does(tmp_path: Path, name: str) -> None:
    import torch

    path = tmp_path / "legacy.pt"
    saved = {"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int64)}
    torch.save(saved, path, _use_new_zipfile_serialization=False)
    _legacy_edit(name)(path)
    try:
        loaded = torch.load(str(path), weights_only=True)
        loads = all(torch.equal(loaded[k], saved[k]) for k in saved)
    except Exception:
        loads = False
    inspection = inspect_checkpoint(path)
    assert (inspection.verdict == "ok") is loads, (loads, inspection.lines())


def test_a_torchscript_archive_its_reader_refuses_is_broken(tmp_path: Path) -> None:
    import torch

    path = _copy("torchscript", tmp_path)
    assert inspect_checkpoint(path).verdict == "unsafe"  # it runs code: never "ok"
    _records(lambda r, root: r.update({f"{root}/version": b"99\n"}))(path)
    with pytest.raises(RuntimeError, match="version 99"):
        torch.jit.load(str(path))
    inspection = inspect_checkpoint(path)
    assert inspection.verdict == "broken" and "version 99" in inspection.problems[0]


def test_check_json_is_typed_and_follows_its_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import jsonschema

    from ckpt_compat.cli import main

    schema = json.loads(
        (Path(__file__).resolve().parent.parent / "ckpt_compat/schemas/inspection.schema.json").read_text()
    )
    path = _copy("torch_zip", tmp_path)
    assert main(["check", str(path), "--format", "json"]) == 0
    clean = json.loads(capsys.readouterr().out)
    jsonschema.validate(clean, schema)
    assert (clean["verdict"], clean["problems"], clean["kind"]) == ("ok", [], "torch_zip")
    payloads.write("reduce_protocol_2", path, tmp_path / "canary")
    assert main(["check", str(path), "--format", "json"]) == 1
    hostile = json.loads(capsys.readouterr().out)
    jsonschema.validate(hostile, schema)
    assert hostile["verdict"] == "unsafe" and hostile["refused_globals"] and not (tmp_path / "canary").exists()
    assert main(["check", str(path), "--format", "markdown"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("### ") and "- verdict: unsafe" in out
