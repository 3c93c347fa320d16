from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from torch import nn

from ckpt_compat import dtypes as dtype_catalogue
from ckpt_compat import strategies
from ckpt_compat.loading import NoForward, forward_outputs
from ckpt_compat.specs import ModelSpec, build, example_inputs
from ckpt_compat.strategies import (
    dtypes,
    layer_specs,
    model_specs,
    sequential_specs,
    state_dicts,
    tensor_bags,
    tied_pairs,
)


@given(dtypes())
def test_dtypes_exist_here(name: str) -> None:
    assert dtype_catalogue.why_unsupported(name) is None
    assert isinstance(getattr(torch, name), torch.dtype)


@given(st.one_of(layer_specs(), sequential_specs(), tensor_bags()))
def test_nodes_build_inside_a_spec(node: dict) -> None:
    spec = ModelSpec.from_json({"root": {"kind": "dict", "children": {"x": node}}})
    build(spec)


@given(sequential_specs())
def test_sequential_chains_line_up(node: dict) -> None:
    spec = ModelSpec.from_json({"root": {"kind": "dict", "children": {"x": node}}})
    build(spec)(example_inputs(spec))


@given(model_specs())
def test_model_specs_are_valid_json_specs(spec: ModelSpec) -> None:
    ModelSpec.from_json(spec.to_json())
    model = build(spec)
    for tie in spec.ties:
        assert model.get_parameter(tie["source"]) is model.get_parameter(tie["target"])


@given(state_dicts())
def test_state_dicts_hold_tensors(state: dict) -> None:
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


@given(st.one_of(layer_specs(dtype="float32"), layer_specs(dtype="float64"), sequential_specs(), tied_pairs()))
def test_float32_and_float64_blocks_really_run_forward(node: dict) -> None:
    # A block whose forward cannot run is only noted, not failed; in float32/64 every op exists on
    # CPU, so a NoForward here means the strategy drew an input that does not fit the layer.
    if any(
        c.get("dtype") not in ("float32", "float64")
        for c in [node, *node.get("children", [])]
        if isinstance(c, dict) and "dtype" in c
    ):
        return
    node = {k: v for k, v in node.items() if k != "tied"}
    spec = ModelSpec.from_json({"root": {"kind": "dict", "children": {"x": node}}})
    outputs = forward_outputs(build(spec), example_inputs(spec))
    assert outputs and not [v for v in outputs.values() if isinstance(v, NoForward)], outputs


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: strategies.model_specs(max_depth=0), r"model_specs\(max_depth=0\): expected an int from 1 to 4"),
        (lambda: strategies.model_specs(fill="zeros"), r"model_specs\(fill='zeros'\): expected one of"),
        (lambda: strategies.layer_specs(kinds=["Nope"]), r"layer_specs\(kinds=\['Nope'\]\)"),
        (lambda: strategies.layer_specs(dtype="int8"), r"layer_specs\(dtype='int8'\)"),
        (lambda: strategies.state_dicts(specs=3), r"state_dicts\(specs=3\): expected a strategy"),  # type: ignore[arg-type]
        (lambda: strategies.modules(device="tpu"), r"modules\(device='tpu'\)"),
        (lambda: strategies.corruptions(b""), r"corruptions\(data=bytes\): expected the non-empty bytes"),
        (lambda: strategies.corruptions(b"x", kinds=("melt",)), r"corruptions\(kinds=\('melt',\)\)"),
        (lambda: strategies.dtypes(module="yes"), r"dtypes\(module='yes'\)"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_fail_when_the_strategy_is_created(make: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        make()  # not drawn from: the error comes at creation, naming the argument and its value


@given(strategies.modules(strategies.model_specs(max_depth=1)), strategies.modules(device="meta"))
def test_modules_are_built_models_in_eval_mode_on_their_device(module: nn.Module, meta: nn.Module) -> None:
    assert isinstance(module, nn.Module) and not module.training and not meta.training
    assert all(t.device.type == "cpu" for t in module.state_dict().values())
    assert all(t.is_meta for t in meta.state_dict().values())  # shapes and dtypes only


@settings(max_examples=25)
@given(st.data())
def test_corruptions_change_the_file_and_keep_its_kind_of_damage(data: st.DataObject) -> None:
    raw = io.BytesIO()
    torch.save({"w": torch.arange(6.0)}, raw)
    original = raw.getvalue()
    damaged = data.draw(strategies.corruptions(original, kinds=("truncate",)))
    assert len(damaged) < len(original) and original.startswith(damaged)
    flipped = data.draw(strategies.corruptions(original, kinds=("flip",)))
    assert len(flipped) == len(original) and sum(a != b for a, b in zip(flipped, original, strict=True)) == 1
