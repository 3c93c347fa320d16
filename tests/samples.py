"""Hand-written specs the tests share (tests/specs/*.json), and a zip rewriter."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

from ckpt_compat.specs import ModelSpec

SPECS = Path(__file__).with_name("specs")


def load(name: str) -> ModelSpec:
    return ModelSpec.loads((SPECS / f"{name}.json").read_text())


def bag(*tensors: dict[str, object]) -> ModelSpec:
    """A spec whose only block is a TensorBag holding ``tensors`` (TensorSpec dicts)."""
    return ModelSpec.from_json(
        {"root": {"kind": "dict", "children": {"bag": {"kind": "tensors", "tensors": list(tensors)}}}}
    )


def rewrite_zip(path: Path, change: Callable[[dict[str, bytes]], None]) -> None:
    """The zip archive at ``path`` rebuilt with its records (name -> bytes) as ``change`` leaves
    them: every CRC right, as a tool that edits archives (or a writer with a bug) leaves it."""
    with zipfile.ZipFile(path) as archive:
        records = {name: archive.read(name) for name in archive.namelist()}
    change(records)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    path.write_bytes(out.getvalue())
