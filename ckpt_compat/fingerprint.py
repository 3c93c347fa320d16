"""A complete fingerprint of a loaded state dict: equal fingerprints, equal loading checks.

The loading checks (`roundtrip`: strict and non-strict loads into a fresh model, ``assign=True``
onto meta, the forward pass) cost about half of checking a file, and many loads of one spec give
the same state: torch.load with and without ``weights_only`` or ``mmap``, and the same spec saved
by every format or every torch release in a corpus. Their results are reused only between states
whose fingerprints are equal, so a fingerprint records everything those checks can read, and
there is none (``None``) for a state holding anything it cannot describe completely: a value
that is not a plain dense CPU tensor or Parameter, Python attributes on a tensor, autograd
history, a lazy conjugate or negative view, or ``_metadata`` beyond plain data.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from torch import nn

from ckpt_compat.compare import digest

_PLAIN_TYPES = (torch.Tensor, nn.Parameter)


class _NotPlain(Exception):
    pass


def state_fingerprint(state: Mapping[str, Any]) -> Hashable | None:
    """Keys in order; per tensor its exact type, dtype, shape, strides, storage offset, device,
    requires_grad, which earlier key's storage it shares (with the storage's size) and a digest
    of its logical bytes; the mapping's type and its ``_metadata``. None where one is not complete."""
    storages: dict[int, int] = {}  # data_ptr -> index of the first key on that storage
    entries = []
    for index, (key, t) in enumerate(state.items()):
        if not _describable(t):
            return None
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        # Zero-byte storages have no identity (compare.aliasing_groups leaves them out too).
        shares = storages.setdefault(storage.data_ptr(), index) if nbytes else None
        entries.append(
            (
                key,
                type(t),
                t.dtype,
                tuple(t.shape),
                t.stride(),
                t.storage_offset(),
                str(t.device),
                t.requires_grad,
                shares,
                nbytes,
                digest(t),
            )
        )
    try:
        metadata = _plain(getattr(state, "_metadata", None))
    except _NotPlain:
        return None
    return (type(state), tuple(entries), metadata)


def _describable(t: Any) -> bool:
    return (
        type(t) in _PLAIN_TYPES
        and t.layout == torch.strided
        and t.device.type == "cpu"
        and not t.is_quantized
        and not t.is_conj()
        and not t.is_neg()
        and t.grad_fn is None
        and t.grad is None
        and not t.__dict__
        and not getattr(t, "_backward_hooks", None)
    )


def _plain(value: Any) -> Hashable:
    """``value`` as hashable plain data tagged with each scalar's type (``1``, ``1.0`` and ``True``
    hash alike in Python but are different metadata); raises `_NotPlain` for anything else."""
    if value is None or type(value) in (bool, int, float, str):
        return (type(value).__name__, value)
    if isinstance(value, Mapping):
        return ("map", type(value).__name__, tuple((_plain(k), _plain(v)) for k, v in value.items()))
    if type(value) in (list, tuple):
        return (type(value).__name__, tuple(_plain(v) for v in value))
    raise _NotPlain(type(value).__name__)
