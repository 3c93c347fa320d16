from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given

from ckpt_compat import dtypes
from ckpt_compat.compare import compare_state_dicts, digest, tensor_bytes
from ckpt_compat.specs import ModelSpec, SpecError, build, example_inputs, random_tensor
from ckpt_compat.strategies import model_specs
from ckpt_compat.unsaved import non_persistent_buffers
from tests.samples import load


@given(model_specs())
def test_build_is_deterministic(spec: ModelSpec) -> None:
    a, b = build(spec), build(spec)
    assert compare_state_dicts(a.state_dict(), b.state_dict(), strides=True) == []
    assert compare_state_dicts(non_persistent_buffers(a), non_persistent_buffers(b)) == []


@given(model_specs())
def test_spec_json_round_trip_keeps_id(spec: ModelSpec) -> None:
    again = ModelSpec.loads(spec.dumps())
    assert again == spec
    assert again.id == spec.id


def test_build_does_not_use_torch_rng() -> None:
    spec = load("rich")
    torch.manual_seed(0)
    a = build(spec).state_dict()
    torch.manual_seed(12345)
    b = build(spec).state_dict()
    assert compare_state_dicts(a, b, strides=True) == []


def test_random_tensor_is_stable_across_releases() -> None:
    # Golden digests: if numpy's PCG64 stream or our value mapping ever changed, every committed
    # corpus would stop matching its manifest. This is the canary for that.
    assert digest(random_tensor((3, 5), "float32", "values", 7, "w")) == "780222a3b9821b54daeb43d371014b54"


@pytest.mark.parametrize(
    "name", [d.name for d in dtypes.CATALOGUE if d.kind in ("float", "complex") and d.exact_values]
)
def test_values_are_exactly_representable(name: str) -> None:
    if dtypes.why_unsupported(name):
        pytest.skip(dtypes.why_unsupported(name) or "")
    t = random_tensor((64,), name, "values", 1, "k")
    wide = torch.complex128 if t.is_complex() else torch.float64
    assert torch.equal(t.to(wide).to(t.dtype).view(torch.uint8), t.view(torch.uint8))
    parts = torch.view_as_real(t.to(wide)) if t.is_complex() else t.to(wide)
    assert parts.abs().max() <= 1


def test_bits_mode_has_special_values() -> None:
    t = random_tensor((32,), "float32", "bits", 1, "k")
    assert torch.signbit(t[0]) and t[0] == 0  # -0.0
    assert torch.isinf(t[1]) and torch.isinf(t[2])
    assert torch.isnan(t).sum() >= 2
    assert t.view(torch.int32)[3] != t.view(torch.int32)[4]  # two different NaN payloads


def test_perturb_changes_every_persistent_byte_only() -> None:
    spec = load("rich")
    base, other = build(spec), build(spec, perturb=True)
    for key, value in base.state_dict().items():
        if value.numel():
            changed = tensor_bytes(value) != tensor_bytes(other.state_dict()[key])
            assert bool(changed.all()) or (value.dtype == torch.bool and bool(changed.any())), key
    assert compare_state_dicts(non_persistent_buffers(base), non_persistent_buffers(other)) == []


def test_builds_repeat_whatever_was_built_before_or_changed_since() -> None:
    spec = load("rich")
    first = build(spec).state_dict()
    perturbed = build(spec, perturb=True)  # the values are kept by spec id: perturb has its own
    with torch.no_grad():
        for tensor in perturbed.state_dict().values():
            tensor.zero_() if tensor.dtype != torch.bool else tensor.fill_(False)
    assert compare_state_dicts(first, build(spec).state_dict()) == []
    assert compare_state_dicts(build(spec, perturb=True).state_dict(), first) != []
    again = build(spec, perturb=True).state_dict()
    assert compare_state_dicts(again, build(spec, perturb=True).state_dict()) == []
    assert any(bool(t.any()) for t in again.values() if t.numel())  # not the zeros written above


def test_rich_spec_builds_what_it_says() -> None:
    model = build(load("rich"))
    bag = model.bag
    assert model.tied.embed.weight is model.tied.head.weight
    assert bag.b3 is None and "b3" not in model.state_dict()
    assert not bag.p0.is_contiguous()
    assert bag.b2.is_contiguous(memory_format=torch.channels_last) and "bag.b2" not in model.state_dict()
    assert bag.b4.untyped_storage().nbytes() == 2 * bag.b4.numel() * bag.b4.element_size()
    assert bag.v0.untyped_storage().data_ptr() == bag.p0.untyped_storage().data_ptr()
    assert bag.b0.dim() == 0 and bag.b1.numel() == 0
    assert "lin.parametrizations.weight.original0" in model.state_dict()
    assert not model.training


def test_meta_build_has_no_data() -> None:
    model = build(load("rich"), device="meta")
    assert all(t.is_meta for t in model.state_dict().values())


def test_example_inputs_are_deterministic_and_run() -> None:
    spec = load("plain")
    a, b = example_inputs(spec), example_inputs(spec)
    assert all(torch.equal(a[k], b[k]) for k in a)
    out = build(spec)(a)
    assert set(out) == set(a)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"root": {"kind": "dict", "children": {"x": {"kind": "Linearr", "args": {}}}}},
            "root.children.x.kind: unknown kind 'Linearr'",
        ),
        ({"fill": "zeros"}, "spec.fill"),
        ({"seed": -1}, "spec.seed"),
        (
            {
                "root": {
                    "kind": "dict",
                    "children": {
                        "x": {
                            "kind": "tensors",
                            "tensors": [
                                {
                                    "name": "a",
                                    "role": "buffer",
                                    "dtype": "float32",
                                    "shape": [2],
                                    "layout": "channels_last",
                                }
                            ],
                        }
                    },
                }
            },
            "channels_last needs a 4-d shape",
        ),
    ],
)
def test_bad_specs_name_the_field(patch: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelSpec.from_json({**load("plain").to_json(), **patch})


def test_bad_tie_is_a_spec_error() -> None:
    raw = load("tied").to_json()
    raw["ties"] = [{"source": "lm.embed.weight", "target": "norm.weight"}]
    with pytest.raises(SpecError, match=r"spec.ties\[0\]: cannot tie lm.embed.weight"):
        build(ModelSpec.from_json(raw))


def test_all_catalogue_dtypes_build_in_a_bag() -> None:
    names = dtypes.available_dtypes()
    spec = ModelSpec.from_json(
        {
            "root": {
                "kind": "dict",
                "children": {
                    "bag": {
                        "kind": "tensors",
                        "tensors": [
                            {"name": f"t{i}", "role": "buffer", "dtype": n, "shape": [2, 3]}
                            for i, n in enumerate(names)
                        ],
                    }
                },
            }
        }
    )
    state = build(spec).state_dict()
    assert [dtypes.name_of(state[f"bag.t{i}"].dtype) for i in range(len(names))] == names
    assert all(math.prod(v.shape) == 6 for v in state.values())
