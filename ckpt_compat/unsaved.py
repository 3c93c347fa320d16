"""Tensors outside the state dict: non-persistent buffers, plain tensor attributes, and ties kept
by reference outside the module tree. No checkpoint of a state dict carries them, so when a fresh
model's differ from the saved model's they explain a forward difference; that is how a failing
round trip names its culprit instead of "the outputs differ".

``expected`` below is a `roundtrip.Expected` (its ``hidden``, ``plain`` and ``references``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ckpt_compat.differences import Difference


def non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers a state dict leaves out; a whole-model pickle must still carry them."""
    out = {}
    for prefix, module in model.named_modules():
        for name in sorted(module._non_persistent_buffers_set):
            value = module._buffers.get(name)
            if value is not None:
                out[f"{prefix}.{name}" if prefix else name] = value
    return out


def plain_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Tensors a module holds as ordinary attributes (``self.scale = torch.randn(4)``), directly or
    in a list, tuple or dict attribute (``self.shared = [self.emb.weight]``): no state dict has them."""
    found: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        for name, value in vars(module).items():
            if name.startswith("_") and name in ("_parameters", "_buffers", "_modules"):
                continue
            key = f"{prefix}.{name}" if prefix else name
            if isinstance(value, torch.Tensor):
                found[key] = value
            elif isinstance(value, (list, tuple)):
                found.update({f"{key}[{i}]": v for i, v in enumerate(value) if isinstance(v, torch.Tensor)})
            elif isinstance(value, dict):
                found.update({f"{key}[{k!r}]": v for k, v in value.items() if isinstance(v, torch.Tensor)})
    return found


def references(model: nn.Module) -> dict[str, str]:
    """Plain tensor attributes that are a state-dict entry itself (a tie kept outside the module
    tree): attribute -> state-dict key."""
    entries = {id(v): k for k, v in model.state_dict(keep_vars=True).items()}
    return {name: entries[id(t)] for name, t in plain_tensors(model).items() if id(t) in entries}


def detached_references(expected: Any, model: nn.Module, how: str) -> list[Difference]:
    """References of `references` that no longer are their entry after a load (``assign=True``
    puts new tensors in the module tree; a reference held elsewhere keeps the old one)."""
    if not expected.references:
        return []
    entries = model.state_dict(keep_vars=True)
    plain = plain_tensors(model)
    return [
        Difference(
            "aliasing",
            ("attributes", name),
            f"held the state-dict entry {key!r} itself; after {how} it holds another tensor: the tie came "
            "apart. Register the tie in the module tree (b.weight = a.weight) or re-make it after loading",
        )
        for name, key in expected.references.items()
        if name in plain and key in entries and plain[name] is not entries[key]
    ]


_NOT_SAVED = {
    "buffers": "a non-persistent buffer (register_buffer(..., persistent=False)) that differs in a freshly built "
    "model: no state dict carries it, and the outputs depend on it; make it persistent or compute it the same "
    "way in every build",
    "attributes": "a plain tensor attribute (not a Parameter or buffer) that differs in a freshly built model: no "
    "state dict carries it, and the outputs depend on it; register it with register_buffer",
}


def outside_the_state(expected: Any, module: nn.Module) -> list[Difference]:
    """Why a forward differs after a complete load: tensors no state dict carries (plain tensor
    attributes, non-persistent buffers) whose values in the loaded model are not the saved model's."""
    found: list[Difference] = []
    for root, saved, loaded in (
        ("buffers", expected.hidden, non_persistent_buffers(module)),
        ("attributes", expected.plain, plain_tensors(module)),
    ):
        for name, want in saved.items():
            got = loaded.get(name)
            if got is not None and not _same(want, got):
                found.append(Difference("not_saved", (root, name), _NOT_SAVED[root]))
    return found


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype or a.is_meta or b.is_meta:
        return a.shape == b.shape and a.dtype == b.dtype
    return bool(
        torch.equal(a.detach().cpu().reshape(-1).view(torch.uint8), b.detach().cpu().reshape(-1).view(torch.uint8))
    )
