"""What a model library writes to check its checkpoints: one call per model."""

from __future__ import annotations

import mylib


def test_tiny_lm_survives_every_format(checkpoint_roundtrip):
    checked = checkpoint_roundtrip(mylib.build, mylib.example_inputs)
    assert checked.passed
