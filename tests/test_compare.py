from __future__ import annotations

import pytest
import torch

from ckpt_compat.compare import (
    Mismatch,
    aliasing_groups,
    assert_state_dicts_equal,
    compare_state_dicts,
    compare_values,
    digest,
)


def test_one_bit_is_found_with_key_path_and_index() -> None:
    a = {"layer.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    b = {"layer.weight": a["layer.weight"].clone()}
    b["layer.weight"].view(-1).view(torch.int32)[7] ^= 1
    [d] = compare_state_dicts(a, b)
    assert (d.kind, d.path, d.where) == ("bytes", ("state_dict", "layer.weight"), "state_dict['layer.weight']")
    assert "1 of 12 element(s) differ, first at flat index 7" in d.detail
    assert (d.elements, d.total, d.max_ulp) == (1, 12, 1)
    assert d.max_abs == abs(float(a["layer.weight"].view(-1)[7] - b["layer.weight"].view(-1)[7]))


def test_negative_zero_and_nan_payloads_count() -> None:
    zero, nan = torch.tensor([0.0]), torch.tensor([float("nan")])
    assert compare_values(zero, -zero)[0].kind == "bytes"
    other_nan = nan.clone()
    other_nan.view(torch.int32)[0] |= 1
    assert torch.isnan(other_nan).all()
    assert compare_values(nan, other_nan)[0].kind == "bytes"
    assert compare_values(nan, nan.clone()) == []


def test_dtype_shape_stride_and_type_differences() -> None:
    t = torch.zeros(2, 3)
    assert compare_values(t, t.double())[0].kind == "dtype"
    assert compare_values(t, t.reshape(3, 2))[0].kind == "shape"
    assert compare_values(t, t.t().contiguous().t(), strides=True)[0].kind == "stride"
    assert compare_values(t, t.t().contiguous().t()) == []
    assert compare_values(t, [t])[0].kind == "type"


def test_every_difference_is_collected_then_raised_once() -> None:
    expected = {"a": torch.ones(2), "b": torch.ones(2), "c": torch.ones(2)}
    actual = {"a": torch.zeros(2), "b": torch.ones(2, dtype=torch.float64), "d": torch.ones(2)}
    with pytest.raises(Mismatch) as info:
        assert_state_dicts_equal(expected, actual)
    found = {(d.kind, d.where) for d in info.value.differences}
    assert found == {
        ("bytes", "state_dict['a']"),
        ("dtype", "state_dict['b']"),
        ("missing", "state_dict['c']"),
        ("unexpected", "state_dict['d']"),
    }
    by_kind = {d.kind: d for d in info.value.differences}
    assert (by_kind["dtype"].expected, by_kind["dtype"].actual) == ("float32", "float64")
    assert (by_kind["bytes"].elements, by_kind["bytes"].total, by_kind["bytes"].max_abs) == (2, 2, 1.0)


def test_nested_outputs_have_paths() -> None:
    out = {"rnn": (torch.ones(2), (torch.ones(1), torch.zeros(1)))}
    bad = {"rnn": (torch.ones(2), (torch.ones(1), torch.ones(1)))}
    [d] = compare_values(out, bad, ("forward",))
    assert d.path == ("forward", "rnn", 1, 1) and d.where == "forward['rnn'][1][1]"


def test_lost_and_invented_ties() -> None:
    w = torch.ones(4)
    tied = {"embed.weight": w, "head.weight": w, "view": w[1:]}
    assert aliasing_groups(tied) == {frozenset({"embed.weight", "head.weight", "view"})}
    untied = {k: v.clone() for k, v in tied.items()}
    [d] = compare_state_dicts(tied, untied)
    assert d.kind == "aliasing" and "no longer share" in d.detail and d.path == ("state_dict", "embed.weight")
    [d] = compare_state_dicts(untied, tied)
    assert "share one storage that were separate" in d.detail


def test_ties_are_compared_over_the_keys_both_sides_hold() -> None:
    """A key only one side holds (a non-persistent buffer a format persisted, aliasing a parameter)
    joins its storage's group: no tie was lost. A group split in two is one lost tie, not a new one."""
    from ckpt_compat.compare import compare_aliasing

    w = torch.ones(4)
    expected = {"t0": w, "t2": w.view(4), "other": torch.zeros(2)}
    assert compare_aliasing(expected, {**expected, "t3": w.view(4)}) == []
    v = torch.ones(4)
    three = {"a": v, "b": v.view(4), "c": v.view(4)}
    split = {"a": v, "b": v.view(4), "c": v.clone()}
    [d] = compare_aliasing(three, split)
    assert d.detail == "keys ['a', 'b', 'c'] no longer share one storage"
    [d] = compare_aliasing(split, three)
    assert d.detail == "keys ['a', 'b', 'c'] share one storage that were separate"
    assert compare_aliasing(three, {"a": v, "b": v.clone()})[0].detail == "keys ['a', 'b'] no longer share one storage"


def test_odd_layouts_compare() -> None:
    strided = torch.zeros(4, dtype=torch.float16)[::2][:1]
    empty = torch.zeros(0, 3, dtype=torch.uint8)[:, ::2]
    assert compare_values(strided, strided.clone()) == []
    assert compare_values(empty, empty.clone()) == []


def test_digest_changes_with_one_bit() -> None:
    t = torch.arange(100, dtype=torch.int64)
    u = t.clone()
    u[50] ^= 1 << 40
    assert digest(t) == digest(t.clone()) == digest(t.t())
    assert digest(t) != digest(u)
    assert digest(torch.zeros(0)) == digest(torch.zeros(0, 3))


@pytest.mark.parametrize(
    ("dtype", "bits", "ulp"),
    [(torch.float32, 1, 1), (torch.float16, 3, 3), (torch.bfloat16, 1, 1), (torch.float64, 5, 5)],
)
def test_ulp_distance_counts_representable_values(dtype: torch.dtype, bits: int, ulp: int) -> None:
    a = torch.tensor([1.5, -2.0, 0.25], dtype=dtype)
    b = a.clone()
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    b.view(ints)[1] += bits  # away from zero on a negative number: still `bits` representable steps
    [d] = compare_values(a, b)
    assert (d.elements, d.total, d.max_ulp) == (1, 3, ulp)
    assert d.max_abs == pytest.approx(abs(float(a[1]) - float(b[1])))


def test_distances_across_zero_nan_and_infinity() -> None:
    zero = torch.tensor([0.0])
    [d] = compare_values(zero, -zero)
    assert (d.max_abs, d.max_ulp) == (0.0, 0.0)  # -0.0 and 0.0 differ in bytes, not in value
    tiny = torch.tensor([0.0]).view(torch.int32).add(1).view(torch.float32)
    [d] = compare_values(-tiny, tiny)
    assert d.max_ulp == 2  # the smallest subnormals either side of zero are two steps apart
    [d] = compare_values(torch.tensor([1.0]), torch.tensor([float("nan")]))
    assert d.max_abs == float("inf")
    [d] = compare_values(torch.tensor([1, 5], dtype=torch.int64), torch.tensor([1, -3], dtype=torch.int64))
    assert (d.max_abs, d.max_ulp) == (8.0, None)
    [d] = compare_values(torch.tensor([True]), torch.tensor([False]))
    assert (d.elements, d.max_abs, d.max_ulp) == (1, None, None)


@pytest.mark.parametrize("name", ["uint16", "uint32", "uint64"])
def test_unsigned_distances_are_read_as_unsigned_on_every_torch(name: str) -> None:
    """Older torch (2.6) cannot index these dtypes; the comparison must still measure them."""
    dtype = getattr(torch, name, None)
    if dtype is None:
        pytest.skip(f"torch {torch.__version__} has no {name}")
    size = torch.empty((), dtype=dtype).element_size()
    top = 2 ** (8 * size) - 1  # every bit set: -1 if the bits were read as signed

    def tensor(*values: int) -> torch.Tensor:
        raw = b"".join(v.to_bytes(size, "little") for v in values)
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)

    [d] = compare_values(tensor(5, 1, 7), tensor(5, top, 7))
    assert (d.elements, d.total, d.max_abs, d.max_ulp) == (1, 3, float(top - 1), None)


def test_complex_distances_are_per_component() -> None:
    a = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64)
    b = a.clone()
    torch.view_as_real(b)[1, 1] = -1.5
    [d] = compare_values(a, b)
    assert (d.elements, d.total, d.max_abs) == (1, 2, 0.5)


def test_a_difference_survives_json() -> None:
    from ckpt_compat.differences import Difference

    a = torch.tensor([1.0, float("nan")])
    [d] = compare_values(a, torch.tensor([2.0, 0.0]), ("forward", "rnn", 0))
    d = d.with_block("LSTM")
    again = Difference.from_json(d.to_json())
    assert again == d and again.max_abs == float("inf") and again.block == "LSTM"
    with pytest.raises(ValueError, match="unknown difference kind"):
        Difference.from_json({**d.to_json(), "kind": "vibes"})
    with pytest.raises(ValueError, match="key path"):
        Difference.from_json({**d.to_json(), "path": ["x", 1.5]})


def test_a_tolerance_is_never_finer_than_the_dtype_resolves() -> None:
    from ckpt_compat.compare import compare_close

    expected = torch.tensor([0.1234, 1.0, -3.5], dtype=torch.float16)
    one_ulp = expected.clone()
    one_ulp.view(torch.int16)[0] += 1  # ONNX Runtime rounding one step the other way
    assert compare_close(expected, one_ulp, ("program",), (1e-4, 1e-5)) == []
    off = expected.clone()
    off[1] = 1.01  # ten ulps: a real difference still fails
    [found] = compare_close(expected, off, ("program",), (1e-4, 1e-5))
    assert found.elements == 1 and found.max_ulp is not None and found.max_ulp >= 10
    exact = torch.tensor([0.1234], dtype=torch.float32)
    nudged = exact.clone()
    nudged.view(torch.int32)[0] += 1000  # float32 keeps the tolerance asked for
    assert compare_close(exact, nudged, ("program",), (1e-6, 0.0))


def test_another_runtime_as_accurate_as_eager_is_the_same_output() -> None:
    """Beyond the elementwise tolerance, a runtime's output is judged against the float64 result:
    as accurate as eager's own (RMSE at most FLOAT64_MULTIPLIER times), it is the same output."""
    from ckpt_compat.compare import FLOAT64_MULTIPLIER, compare_close

    exact = torch.tensor([1.0050077, 0.25, -0.5], dtype=torch.float64)
    eager = torch.tensor([1.0029296875, 0.25, -0.5], dtype=torch.float16)  # a cancelling sum: 2 ulps off
    closer = torch.tensor([1.0048828125, 0.25, -0.5], dtype=torch.float16)  # rounded once from float32
    assert compare_close(eager, closer, ("program",), (1e-4, 1e-5))  # 2 ulps apart: beyond eps alone
    assert compare_close(eager, closer, ("program",), (1e-4, 1e-5), lambda: exact) == []
    # Four times eager's distance from the float64 result: a different program, still a mismatch.
    far = exact.clone()
    far[0] -= 4 * FLOAT64_MULTIPLIER * float(exact[0] - eager[0].double())
    [found] = compare_close(eager, far.half(), ("program",), (1e-4, 1e-5), lambda: exact)
    assert found.kind == "bytes" and found.elements == 1 and "RMSE from the float64 result" in found.detail
    # No float64 result (a block with no such kernel): the tolerance alone decides.
    assert compare_close(eager, closer, ("program",), (1e-4, 1e-5), lambda: None)


def test_where_the_float64_result_is_nan_no_runtime_value_is_more_right() -> None:
    """GroupNorm with weight and bias inf (a bit-pattern spec): eager's formula meets inf - inf
    where ONNX Runtime's gives inf. Only there; an infinite or finite float64 result still binds."""
    from ckpt_compat.compare import compare_close

    inf, nan = float("inf"), float("nan")
    exact = torch.tensor([nan, inf, 0.5, 0.25], dtype=torch.float64)
    eager = torch.tensor([nan, inf, 0.5, 0.25])
    assert compare_close(eager, torch.tensor([inf, inf, 0.5, 0.25]), ("program",), (1e-4, 1e-5), lambda: exact) == []
    for runtime in ([nan, nan, 0.5, 0.25], [nan, inf, nan, 0.25], [nan, inf, 0.5, 0.3]):
        [found] = compare_close(eager, torch.tensor(runtime), ("program",), (1e-4, 1e-5), lambda: exact)
        assert found.elements == 1, runtime
