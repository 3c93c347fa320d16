"""Hand-written specs the tests share (tests/specs/*.json)."""

from __future__ import annotations

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
