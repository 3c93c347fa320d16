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
    assert (d.kind, d.path) == ("bytes", "state_dict['layer.weight']")
    assert "1 of 12 element(s) differ, first at flat index 7" in d.detail


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
    found = {(d.kind, d.path) for d in info.value.differences}
    assert found == {
        ("bytes", "state_dict['a']"),
        ("dtype", "state_dict['b']"),
        ("missing", "state_dict['c']"),
        ("unexpected", "state_dict['d']"),
    }


def test_nested_outputs_have_paths() -> None:
    out = {"rnn": (torch.ones(2), (torch.ones(1), torch.zeros(1)))}
    bad = {"rnn": (torch.ones(2), (torch.ones(1), torch.ones(1)))}
    [d] = compare_values(out, bad, "forward")
    assert d.path == "forward['rnn'][1][1]"


def test_lost_and_invented_ties() -> None:
    w = torch.ones(4)
    tied = {"embed.weight": w, "head.weight": w, "view": w[1:]}
    assert aliasing_groups(tied) == {frozenset({"embed.weight", "head.weight", "view"})}
    untied = {k: v.clone() for k, v in tied.items()}
    [d] = compare_state_dicts(tied, untied)
    assert d.kind == "aliasing" and "no longer share" in d.detail and "embed.weight" in d.path
    [d] = compare_state_dicts(untied, tied)
    assert "share one storage that were separate" in d.detail


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
