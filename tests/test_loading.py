from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import nn

from ckpt_compat import loading
from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.specs import build, example_inputs
from tests.samples import load


def test_correct_loads_report_nothing() -> None:
    spec = load("rich")
    state = build(spec).state_dict()
    assert loading.strict_load(build(spec, perturb=True), state, state) == []
    assert loading.non_strict_loads(build(spec, perturb=True), state) == []
    if loading.supports_assign():
        assert loading.assign_onto_meta(build(spec, device="meta"), state, state) == []


def test_strict_load_that_does_not_copy_is_caught() -> None:
    spec = load("plain")
    state = build(spec).state_dict()

    class Forgetful(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

    model = build(spec, perturb=True)
    model.load_state_dict = lambda *a, **k: nn.modules.module._IncompatibleKeys([], [])  # type: ignore[method-assign]
    differences = loading.strict_load(model, state, state)
    assert {d.root for d in differences} == {"loaded_model.state_dict"}
    assert len(differences) == len(state)


class _SwallowsUnexpected(nn.Linear):
    """A module whose custom loader hides unexpected keys: what non-strict checks must catch."""

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        unexpected = args[-2]
        super()._load_from_state_dict(state_dict, prefix, *args)
        unexpected.clear()


def test_non_strict_reporting_bugs_are_caught() -> None:
    model = nn.Sequential(_SwallowsUnexpected(2, 2))
    differences = loading.non_strict_loads(model, nn.Sequential(nn.Linear(2, 2)).state_dict())
    assert any(d.kind == "unexpected" and "renamed=" in d.root for d in differences)
    assert any(d.kind == "unexpected" and "extra=" in d.root for d in differences)


def test_shape_mismatch_must_raise_even_non_strict() -> None:
    class Lenient(nn.Linear):
        def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
            fixed = {
                k: (v.reshape(self.weight.shape) if v.numel() == self.weight.numel() else v)
                for k, v in state_dict.items()
            }
            with contextlib.suppress(RuntimeError):
                super()._load_from_state_dict(fixed, prefix, *args)
            args[-1].clear()  # error_msgs: swallow the size mismatch

    differences = loading.non_strict_loads(Lenient(2, 2), nn.Linear(2, 2).state_dict())
    assert any("a shape mismatch did not raise" in d.detail for d in differences)


def test_forward_difference_is_found_per_block() -> None:
    spec = load("plain")
    inputs = example_inputs(spec)
    reference = loading.forward_outputs(build(spec), inputs)
    changed = build(spec)
    with torch.no_grad():
        changed.gru.weight_hh_l0[0, 0] += 1
    differences, notes = loading.compare_forward(reference, changed, inputs)
    assert differences and {d.path[:2] for d in differences} == {("forward", "gru")}
    assert notes == []


def test_blocks_that_cannot_run_here_are_noted_not_failed() -> None:
    reference = {"x": loading.NoForward(ErrorInfo("NotImplementedError", "no kernel"))}
    differences, notes = loading.compare_forward(reference, nn.Module(), {"x": torch.zeros(1)})
    assert differences == [] and notes == ["forward of 'x' not checked: NotImplementedError: no kernel"]


@pytest.mark.skipif(not loading.supports_assign(), reason="load_state_dict(assign=) needs torch >= 2.1")
def test_assign_on_meta_that_leaves_meta_tensors_is_caught() -> None:
    spec = load("plain")
    state = build(spec).state_dict()
    partial = dict(state)
    partial.pop("fc.bias")
    differences = loading.assign_onto_meta(build(spec, device="meta"), partial, state)
    assert differences and differences[0].error is not None and "Missing key(s)" in differences[0].error.message


def test_float64_output_widens_the_block_and_its_input_only() -> None:
    """The float64 result of one block: real floats as float64, complex as complex128 (never cast
    to real), integers and ties as they are; the model itself untouched."""

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2).half()
            self.head = nn.Linear(3, 2).half()
            self.head.weight = self.lin.weight  # a tie
            self.phase = nn.Parameter(torch.tensor([1 + 2j], dtype=torch.complex64))
            self.register_buffer("steps", torch.tensor([3]))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return self.lin(x), self.phase * 2, self.steps + 1

    model = nn.ModuleDict({"m": Mixed()})
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float16)
    out, phase, steps = loading.float64_output(model, {"m": x}, "m")
    assert out.dtype == torch.float64 and phase.dtype == torch.complex128 and steps.dtype == torch.int64
    assert phase.item() == 2 + 4j and steps.item() == 4
    m = model["m"]
    wide = torch.nn.functional.linear(x.double(), m.lin.weight.double(), m.lin.bias.double())
    assert torch.equal(out, wide)
    assert m.lin.weight.dtype == torch.float16 and m.head.weight is m.lin.weight  # the original as it was
