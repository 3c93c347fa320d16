"""Models with the bugs checkpoint_roundtrip exists to catch: each of these tests must fail,
naming its culprit (tests/test_pytest_plugin.py in ckpt-compat checks that they do)."""

from __future__ import annotations

import mylib
import pytest


@pytest.mark.checkpoint_formats("torch_zip", "safetensors_model")
def test_scaled_lm(checkpoint_roundtrip):
    checkpoint_roundtrip(mylib.ScaledLM, mylib.example_inputs)


@pytest.mark.checkpoint_formats("torch_zip", "safetensors_model")
def test_shifted_lm(checkpoint_roundtrip):
    checkpoint_roundtrip(mylib.ShiftedLM, mylib.example_inputs)


@pytest.mark.checkpoint_formats("torch_zip", "safetensors_model")
def test_reference_tied_lm(checkpoint_roundtrip):
    checkpoint_roundtrip(mylib.ReferenceTiedLM, mylib.example_inputs)


@pytest.mark.checkpoint_formats("torch_zip")
def test_inputs_the_model_cannot_run(checkpoint_roundtrip):
    checkpoint_roundtrip(mylib.TinyLM, lambda: mylib.example_inputs().float())  # token ids as floats
