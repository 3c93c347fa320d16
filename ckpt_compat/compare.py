"""Bitwise comparison of state dicts and nested outputs, aliasing topology, and digests.

Like ``torch.testing``'s comparison, nothing stops at the first problem: every difference is
collected with its key path (``state_dict['blocks.0.weight']``, ``output['rnn'][1][0]``) and
reported once. Equality is on bytes, so NaN payloads and -0.0 vs 0.0 count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import xxhash

from ckpt_compat.differences import Difference, KeyPath, PathPart


class Mismatch(AssertionError):
    """Raised once with every difference found."""

    def __init__(self, differences: list[Difference]) -> None:
        self.differences = differences
        lines = "\n".join(f"  {d}" for d in differences)
        super().__init__(f"{len(differences)} difference(s):\n{lines}")


def tensor_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's logical elements as a flat uint8 CPU tensor (row-major, layout-independent)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    flat = t.contiguous().reshape(-1)
    if flat.stride() != (1,):
        # Size-0 and size-1 dims make a tensor "contiguous" whatever its strides; view(uint8) needs 1.
        flat = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)
    return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)


def _words(data: torch.Tensor) -> torch.Tensor:
    """Flat uint8 bytes as int64 words where length and alignment allow: torch.equal compares
    words about 4x faster than bytes (memory bandwidth instead of a byte loop)."""
    if data.numel() % 8 == 0 and data.storage_offset() % 8 == 0 and data.numel():
        return data.view(torch.int64)
    return data


def digest(t: torch.Tensor) -> str:
    """xxh3-128 of the tensor's logical bytes: the per-tensor digest written into manifests."""
    data = tensor_bytes(t)
    if data.numel() == 0:
        return xxhash.xxh3_128_hexdigest(b"")
    return str(xxhash.xxh3_128_hexdigest(data.numpy().data))


def record(t: torch.Tensor) -> dict[str, Any]:
    """What a manifest keeps of a tensor: enough to check a load without rebuilding the model."""
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "digest": digest(t)}


def compare_records(
    records: Mapping[str, Mapping[str, Any]], actual: Mapping[str, Any], root: str = "manifest"
) -> list[Difference]:
    """Differences between a manifest's per-tensor records and a loaded state dict. A digest
    says only *that* bytes differ: such differences carry no element counts or distances."""
    out = [Difference("missing", (root, k), "key absent") for k in records if k not in actual]
    out += [Difference("unexpected", (root, k), "key not in the manifest") for k in actual if k not in records]
    for key, want in records.items():
        t = actual.get(key)
        if not isinstance(t, torch.Tensor):
            continue
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype != want["dtype"]:
            out.append(Difference("dtype", (root, key), "dtype differs", expected=want["dtype"], actual=dtype))
        elif list(t.shape) != list(want["shape"]):
            out.append(
                Difference(
                    "shape",
                    (root, key),
                    "shape differs",
                    expected=str(tuple(want["shape"])),
                    actual=str(tuple(t.shape)),
                )
            )
        elif not t.is_meta and (got := digest(t)) != want["digest"]:
            out.append(
                Difference(
                    "bytes", (root, key), f"digest {got} differs from the manifest's {want['digest']}", total=t.numel()
                )
            )
    return out


def compare_tensors(expected: torch.Tensor, actual: Any, path: KeyPath, *, strides: bool = False) -> list[Difference]:
    """Differences between two tensors; meta tensors are compared on dtype and shape only."""
    if not isinstance(actual, torch.Tensor):
        return [Difference("type", path, "expected a tensor", expected="Tensor", actual=type(actual).__name__)]
    out: list[Difference] = []
    if actual.dtype != expected.dtype:
        out.append(Difference("dtype", path, "dtype differs", expected=_dtype(expected), actual=_dtype(actual)))
    if actual.shape != expected.shape:
        out.append(
            Difference(
                "shape", path, "shape differs", expected=str(tuple(expected.shape)), actual=str(tuple(actual.shape))
            )
        )
    if out:
        return out
    if strides and actual.numel() > 1 and actual.stride() != expected.stride():
        out.append(
            Difference("stride", path, "strides differ", expected=str(expected.stride()), actual=str(actual.stride()))
        )
    if "meta" in (expected.device.type, actual.device.type):
        return out
    a, b = tensor_bytes(expected), tensor_bytes(actual)
    if not torch.equal(_words(a), _words(b)):
        out.append(_bytes_difference(expected, actual, a, b, path))
    return out


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _bytes_difference(
    expected: torch.Tensor, actual: torch.Tensor, a: torch.Tensor, b: torch.Tensor, path: KeyPath
) -> Difference:
    size = expected.element_size()
    differ = (a.view(-1, size) != b.view(-1, size)).any(dim=1).nonzero().flatten()
    first = int(differ[0])
    max_abs, max_ulp = distances(expected, actual, differ)
    return Difference(
        "bytes",
        path,
        f"{len(differ)} of {expected.numel()} element(s) differ, first at flat index {first} "
        f"(expected bytes {a[first * size : (first + 1) * size].tolist()}, "
        f"got {b[first * size : (first + 1) * size].tolist()})",
        elements=len(differ),
        total=expected.numel(),
        max_abs=max_abs,
        max_ulp=max_ulp,
    )


# Sign-magnitude floats by byte size, for ULP distances; e8m0 has no sign bit and float4 packs
# two values a byte, so neither has one.
_SIGNED_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NO_ULP = ("float8_e8m0fnu", "float4_e2m1fn_x2")


def distances(expected: torch.Tensor, actual: torch.Tensor, index: torch.Tensor) -> tuple[float | None, float | None]:
    """(largest absolute difference, largest ULP distance) over the elements at flat ``index``.

    NaN against a number is an infinite absolute difference; NaN against NaN none (their bits may
    still differ, which the ULP distance shows). Complex numbers count per component. Integers have
    no ULP distance; bools and packed float4 neither distance.
    """
    e, g = _at(expected, index), _at(actual, index)
    if e.dtype.is_complex:
        try:
            e, g = torch.view_as_real(e).reshape(-1), torch.view_as_real(g).reshape(-1)
        except RuntimeError:
            return None, None
    name = _dtype(e)
    if e.dtype == torch.bool or name == "float4_e2m1fn_x2":
        return None, None
    try:
        ed, gd = e.double(), g.double()
    except (RuntimeError, TypeError):  # a dtype without a conversion on this torch
        return None, None
    if not e.dtype.is_floating_point and e.dtype != expected.dtype:  # unsigned bits read as signed (`_at`)
        ed, gd = (torch.where(t < 0, t + 2.0 ** (8 * e.element_size()), t) for t in (ed, gd))
    gap = (ed - gd).abs()
    both_nan = ed.isnan() & gd.isnan()
    gap = torch.where(both_nan, torch.zeros_like(gap), gap.nan_to_num(nan=math.inf))
    max_abs = float(gap.max()) if gap.numel() else 0.0
    if not e.dtype.is_floating_point or name in _NO_ULP:
        return max_abs, None
    ints = _SIGNED_INT[e.element_size()]
    a, b = (_ordered(t.view(ints)) for t in (e, g))
    step = a - b  # int64; only 64-bit floats can be 2**63 or more steps apart, where it wraps
    wrapped = (a >= b) != (step >= 0)
    ulps = torch.where(wrapped, torch.full_like(step, -(2**63)), step).abs().double()
    max_ulp = float(torch.where(ulps < 0, 2.0**63, ulps).max()) if gap.numel() else 0.0
    return max_abs, max_ulp


def _at(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The elements of ``t`` at flat ``index``. Older torch (2.6 here) cannot index uint16/32/64
    ("index_cpu not implemented for 'UInt32'"): there the same bits are taken as the signed integer
    of their size, and `distances` reads them back as unsigned."""
    flat = t.detach().cpu().reshape(-1)
    try:
        return flat[index]
    except RuntimeError:
        signed = _SIGNED_INT.get(t.element_size())
        if signed is None or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == signed:
            raise
        return flat.view(signed)[index]


def _ordered(bits: torch.Tensor) -> torch.Tensor:
    """Sign-magnitude float bits as int64 that count representable values: +0 and -0 are 0, the
    next float up is 1, the next one down -1."""
    wide = bits.long()
    magnitude = wide & ((1 << (bits.element_size() * 8 - 1)) - 1)
    return torch.where(wide < 0, -magnitude, wide)


# How much further from the float64 result than eager's own another runtime's output may be, by
# root mean square: torch's compiler accuracy check (``torch._dynamo.utils.same``, fp64_ref) allows
# 3x for float16 / bfloat16 and for tensors under 1,000 elements, every block output here.
FLOAT64_MULTIPLIER = 3.0


def compare_close(
    expected: torch.Tensor,
    actual: Any,
    path: KeyPath,
    tolerance: tuple[float, float] | None,
    exact: Callable[[], torch.Tensor | None] | None = None,
) -> list[Difference]:
    """Bitwise without ``tolerance``; else dtype, shape and values within (rtol, atol), NaN == NaN,
    rtol at least the dtype's machine epsilon. Beyond that, with ``exact`` (the same output computed
    in float64, or None where it cannot be), ``actual`` is still the same output when it is about
    as accurate as ``expected``: its RMSE from the float64 result at most `FLOAT64_MULTIPLIER` times
    eager's own, plus atol. A float16 sum that cancels puts eager itself several ulps off, and
    another runtime that rounds elsewhere (or accumulates in float32) lands elsewhere; a program that
    computes something else is far from both."""
    if tolerance is None or not isinstance(actual, torch.Tensor) or not expected.is_floating_point():
        return compare_tensors(expected, actual, path)
    out = compare_tensors(expected, actual, path)
    if any(d.kind != "bytes" for d in out) or not out:
        return out
    rtol, atol = tolerance
    # Never finer than the dtype resolves: another runtime may round one step the other way
    # (ONNX Runtime's float16 BatchNorm is one ulp off torch's on some elements).
    rtol = max(rtol, torch.finfo(expected.dtype).eps)
    e, a = expected.detach().cpu().double(), actual.detach().cpu().double()
    close = torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return []
    detail = ""
    exact_value = exact() if exact is not None else None
    if exact_value is not None and exact_value.shape == e.shape:
        x = exact_value.detach().cpu().double()
        # Where the float64 result is NaN, eager's formula met an indeterminate form (inf - inf,
        # 0 * inf: a non-finite weight, as bit-pattern specs draw) and another runtime's equivalent
        # formula may not: no value there is more right than another. Where it or eager is
        # infinite, the elementwise check alone decides; the rest is judged by RMSE.
        finite = torch.isfinite(x) & torch.isfinite(e)
        undecided = ~close & ~finite & ~torch.isnan(x)
        eager_error, runtime_error = _rmse(e[finite], x[finite]), _rmse(a[finite], x[finite])
        # False where the runtime gave a non-finite value (its error is inf or NaN).
        if not bool(undecided.any()) and runtime_error <= FLOAT64_MULTIPLIER * eager_error + atol:
            return []
        detail = f"; RMSE from the float64 result {runtime_error:.3g}, eager's {eager_error:.3g}"
    beyond = (~close).reshape(-1).nonzero().flatten()
    max_abs, max_ulp = distances(expected, actual, beyond)
    return [
        Difference(
            "bytes",
            path,
            f"{len(beyond)} of {e.numel()} element(s) beyond rtol={rtol}, atol={atol}{detail}",
            elements=len(beyond),
            total=e.numel(),
            max_abs=max_abs,
            max_ulp=max_ulp,
        )
    ]


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return math.sqrt(float(((a - b) ** 2).mean())) if a.numel() else 0.0


def tensor_leaves(x: Any) -> list[torch.Tensor]:
    """Every tensor in a nested structure of mappings, lists and tuples, in order."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in tensor_leaves(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in tensor_leaves(v)]
    return []


def compare_values(
    expected: Any, actual: Any, path: KeyPath = ("value",), *, strides: bool = False
) -> list[Difference]:
    """Differences between two nested structures of tensors, sequences, mappings and scalars."""
    if isinstance(expected, torch.Tensor):
        return compare_tensors(expected, actual, path, strides=strides)
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return [Difference("type", path, "expected a mapping", expected="Mapping", actual=type(actual).__name__)]
        out = [Difference("missing", (*path, _part(k)), "key absent") for k in expected if k not in actual]
        out += [Difference("unexpected", (*path, _part(k)), "key not expected") for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                out += compare_values(expected[k], actual[k], (*path, _part(k)), strides=strides)
        return out
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            return [
                Difference(
                    "type",
                    path,
                    "a sequence of another length or type",
                    expected=_describe(expected),
                    actual=_describe(actual),
                )
            ]
        out = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            out += compare_values(e, a, (*path, i), strides=strides)
        return out
    if type(expected) is type(actual) and _plain_object(expected) and len(path) < _MAX_OBJECT_DEPTH:
        # An output object (a model's KV cache) is equal when its attributes are: its own __eq__
        # is identity, and would call every rebuilt cache different.
        return compare_values(vars(expected), vars(actual), path, strides=strides)
    if type(expected) is not type(actual) or expected != actual:
        return [Difference("type", path, "a different value", expected=_describe(expected), actual=_describe(actual))]
    return []


_MAX_OBJECT_DEPTH = 32


def _plain_object(x: Any) -> bool:
    """An instance of a user class that compares by identity and keeps its state in __dict__."""
    return (
        hasattr(x, "__dict__")
        and getattr(type(x), "__eq__", None) is getattr(object, "__eq__", None)
        and not isinstance(x, type)
        and not callable(x)
    )


def _part(key: Any) -> PathPart:
    return key if isinstance(key, (str, int)) and not isinstance(key, bool) else repr(key)


def _describe(x: Any) -> str:
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__} of {len(x)}"
    return f"{type(x).__name__} {x!r}"[:120]


def aliasing_groups(tensors: Mapping[str, torch.Tensor]) -> frozenset[frozenset[str]]:
    """Groups of two or more keys whose tensors share one storage (ties, views).

    Zero-byte and meta storages have no identity worth comparing and are left out.
    """
    by_storage: dict[tuple[str, int], set[str]] = {}
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        if storage.nbytes() == 0:
            continue
        by_storage.setdefault((str(t.device), storage.data_ptr()), set()).add(key)
    return frozenset(frozenset(keys) for keys in by_storage.values() if len(keys) > 1)


def compare_aliasing(
    expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor], root: str = "state_dict"
) -> list[Difference]:
    """Differences in which keys share storage: a lost tie or a new, unintended one. The path
    names the group's first key; the detail lists the group.

    Only keys both sides hold are compared (a key missing or added is reported as such): a
    non-persistent buffer that a format persisted joins its storage's group, which is not a tie lost.
    A group split in two is reported once, as lost."""
    common = set(expected) & set(actual)
    want, got = _groups_within(expected, common), _groups_within(actual, common)
    out = [
        Difference("aliasing", (root, min(g)), f"keys {sorted(g)} no longer share one storage")
        for g in sorted(want - got, key=sorted)
        if not any(g <= h for h in got)
    ]
    out += [
        Difference("aliasing", (root, min(g)), f"keys {sorted(g)} share one storage that were separate")
        for g in sorted(got - want, key=sorted)
        if not any(g <= h for h in want)
    ]
    return out


def _groups_within(tensors: Mapping[str, torch.Tensor], keys: set[str]) -> frozenset[frozenset[str]]:
    return frozenset(g & keys for g in aliasing_groups(tensors) if len(g & keys) > 1)


def compare_state_dicts(
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    *,
    strides: bool = False,
    aliasing: bool = True,
    root: str = "state_dict",
) -> list[Difference]:
    """Every difference between two state dicts: keys, dtypes, shapes, bytes, strides, aliasing."""
    out = compare_values(dict(expected), dict(actual), (root,), strides=strides)
    if aliasing:
        out += compare_aliasing(expected, actual, root)
    return out


def assert_state_dicts_equal(expected: Mapping[str, Any], actual: Mapping[str, Any], **kwargs: Any) -> None:
    """Raise `Mismatch` listing every difference, or return quietly."""
    differences = compare_state_dicts(expected, actual, **kwargs)
    if differences:
        raise Mismatch(differences)


def kinds(differences: Iterable[Difference]) -> set[str]:
    return {d.kind for d in differences}
