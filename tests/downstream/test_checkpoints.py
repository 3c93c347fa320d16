"""What a model library writes to check its checkpoints: one call per model."""

from __future__ import annotations

import mylib
import pytest


def test_tiny_lm_survives_every_format(checkpoint_roundtrip):
    checked = checkpoint_roundtrip(mylib.TinyLM, mylib.example_ids)
    assert checked.passed


@pytest.mark.checkpoint_formats("torch_zip", "safetensors_model")
def test_scaled_lm(checkpoint_roundtrip):
    checkpoint_roundtrip(mylib.ScaledLM, mylib.example_ids)


@pytest.mark.checkpoint_formats("torch_zip", "safetensors_model")
def test_shifted_lm(checkpoint_roundtrip):
    checkpoint_roundtrip(mylib.ShiftedLM, mylib.example_ids)


@pytest.mark.checkpoint_formats("torch_zip", "safetensors_model")
def test_reference_tied_lm(checkpoint_roundtrip):
    checkpoint_roundtrip(mylib.ReferenceTiedLM, mylib.example_ids)
