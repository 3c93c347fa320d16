"""A state's fingerprint changes with every property the loading checks can read, and there is
none for a state it cannot describe completely."""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from ckpt_compat.fingerprint import state_fingerprint


def _state() -> OrderedDict[str, Any]:
    """Two keys on one storage (a tie), a 2-d tensor, a float64 one, and module metadata."""
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state: OrderedDict[str, Any] = OrderedDict(
        [
            ("embed.weight", weight),
            ("head.weight", weight),
            ("head.bias", torch.ones(3)),
            ("bn.var", torch.ones(2).double()),
        ]
    )
    state._metadata = OrderedDict([("", {"version": 1}), ("bn", {"version": 2})])  # type: ignore[attr-defined]
    return state


def _reloaded(state: OrderedDict[str, Any]) -> Any:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


State = OrderedDict[str, Any]


def _replace(key: str, make: Callable[[torch.Tensor], Any]) -> Callable[[State], State]:
    def change(state: State) -> State:
        state[key] = make(state[key])
        return state

    return change


def _in_storage(offset: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same values in a storage one element longer, at ``offset`` (0 or 1)."""

    def move(t: torch.Tensor) -> torch.Tensor:
        base = torch.zeros(t.numel() + 1, dtype=t.dtype)
        base[offset : offset + t.numel()] = t.flatten()
        return base[offset : offset + t.numel()].view(t.shape)

    return move


def _nudged(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = torch.nextafter(t.view(-1)[0], torch.tensor(float("inf"), dtype=t.dtype))
    return t


def _tied_value(state: State) -> State:
    state["embed.weight"].view(-1)[5] = 100.0  # through the tie: both keys see it
    return state


def _retie(state: State) -> State:
    state["head.bias"] = state["embed.weight"].view(-1)[:3]
    return state


def _reorder(state: State) -> State:
    state.move_to_end("embed.weight")
    return state


def _rename(state: State) -> State:
    state["head.bias2"] = state.pop("head.bias")
    return state


def _metadata(version: Any) -> Callable[[State], State]:
    def change(state: State) -> State:
        state._metadata["bn"] = {"version": version}  # type: ignore[attr-defined]
        return state

    return change


def _no_metadata(state: State) -> State:
    del state._metadata  # type: ignore[attr-defined]
    return state


def _plain_dict(state: State) -> dict[str, Any]:
    return dict(state)


CHANGES: dict[str, Callable[[State], Any]] = {
    "one element one ulp up": _replace("head.bias", _nudged),
    "a value of the tied storage": _tied_value,
    "dtype": _replace("head.bias", lambda t: t.double()),
    "strides": _replace("head.weight", lambda t: t.t().contiguous().t()),
    "storage size": _replace("head.bias", _in_storage(0)),
    "storage offset": _replace("head.bias", _in_storage(1)),
    "tie broken": _replace("head.weight", torch.clone),
    "a new tie": _retie,
    "requires_grad": _replace("head.bias", lambda t: t.requires_grad_()),
    "a Parameter": _replace("head.bias", lambda t: nn.Parameter(t, requires_grad=False)),
    "shape": _replace("head.bias", lambda t: t.view(3, 1)),
    "key order": _reorder,
    "a key renamed": _rename,
    "mapping type": _plain_dict,
    "metadata version": _metadata(3),
    "metadata True for 1": _metadata(True),
    "metadata 1.0 for 1": _metadata(1.0),
    "no metadata": _no_metadata,
}


def test_the_same_state_loaded_twice_has_one_fingerprint() -> None:
    state = _state()
    first, second = _reloaded(state), _reloaded(state)
    assert first["embed.weight"].data_ptr() != second["embed.weight"].data_ptr()
    assert state_fingerprint(first) is not None
    assert state_fingerprint(first) == state_fingerprint(second) == state_fingerprint(state)


def test_every_property_the_checks_read_changes_it() -> None:
    """Each change alone gives a fingerprint of its own: none equals the unchanged state's or
    another change's (so storage size and storage offset, changed one at a time, are told apart)."""
    found = {"unchanged": state_fingerprint(_reloaded(_state()))}
    for name, change in CHANGES.items():
        found[name] = state_fingerprint(change(_reloaded(_state())))
        assert found[name] is not None, name
    same = [(a, b) for a in found for b in found if a < b and found[a] == found[b]]
    assert same == []


class _Subclass(torch.Tensor):
    pass


def _attribute(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.scale = 2.0  # type: ignore[attr-defined]
    return t


INCOMPLETE: dict[str, Callable[[torch.Tensor], Any]] = {
    "a Python attribute on a tensor": _attribute,
    "a tensor subclass": lambda t: t.as_subclass(_Subclass),
    "autograd history": lambda t: t.clone().requires_grad_() * 2,
    "a lazy conjugate": lambda t: torch.complex(t, t).conj(),
    "a quantized tensor": lambda t: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8),
    "a meta tensor": lambda t: t.to("meta"),
    "a sparse tensor": lambda t: t.to_sparse(),
    "a value that is not a tensor": lambda t: {"extra": 1},
}


@pytest.mark.parametrize("make", INCOMPLETE, ids=list(INCOMPLETE))
def test_a_state_it_cannot_describe_has_none(make: str) -> None:
    state = _state()
    state["head.bias"] = INCOMPLETE[make](state["head.bias"])
    assert state_fingerprint(state) is None


def test_metadata_beyond_plain_data_has_none() -> None:
    state = _state()
    state._metadata["bn"] = {"version": object()}  # type: ignore[attr-defined]
    assert state_fingerprint(state) is None
