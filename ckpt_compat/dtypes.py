"""The dtypes ckpt-compat knows, their bit layout, and which ones the running torch supports.

Support is feature-detected with a tiny probe, never assumed from a version number: a dtype
counts only if it exists *and* the few operations the harness needs (build from bytes, copy,
reinterpret as bytes, channels_last) work on it.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

Kind = Literal["float", "complex", "int", "uint", "bool"]


@dataclass(frozen=True)
class DTypeInfo:
    """Bit layout of one dtype.

    For float and complex dtypes ``ebits``/``mbits`` describe one real component. A dtype has
    ``exact_values`` when values of the form k * 2**-(mbits) with |k| < 2**mbits are exactly
    representable, which lets `build()` produce the same tensor whatever torch's rounding does.
    """

    name: str
    itemsize: int
    kind: Kind
    ebits: int = 0
    mbits: int = 0
    exact_values: bool = True

    @property
    def components(self) -> int:
        return 2 if self.kind == "complex" else 1

    @property
    def component_size(self) -> int:
        return self.itemsize // self.components

    @property
    def significant_bits(self) -> int:
        return self.mbits + 1


# Every dtype that some torch >= 2.0 has and a checkpoint can hold. Order is stable: it is the
# order strategies draw from, so hypothesis shrinks towards float32.
CATALOGUE: tuple[DTypeInfo, ...] = (
    DTypeInfo("float32", 4, "float", 8, 23),
    DTypeInfo("float64", 8, "float", 11, 52),
    DTypeInfo("float16", 2, "float", 5, 10),
    DTypeInfo("bfloat16", 2, "float", 8, 7),
    DTypeInfo("float8_e4m3fn", 1, "float", 4, 3),
    DTypeInfo("float8_e5m2", 1, "float", 5, 2),
    DTypeInfo("float8_e4m3fnuz", 1, "float", 4, 3),
    DTypeInfo("float8_e5m2fnuz", 1, "float", 5, 2),
    # e8m0 has no sign and no zero; float4 packs two values a byte: raw bit patterns only.
    DTypeInfo("float8_e8m0fnu", 1, "float", 8, 0, exact_values=False),
    DTypeInfo("float4_e2m1fn_x2", 1, "float", 2, 1, exact_values=False),
    DTypeInfo("complex64", 8, "complex", 8, 23),
    DTypeInfo("complex128", 16, "complex", 11, 52),
    DTypeInfo("int8", 1, "int"),
    DTypeInfo("int16", 2, "int"),
    DTypeInfo("int32", 4, "int"),
    DTypeInfo("int64", 8, "int"),
    DTypeInfo("uint8", 1, "uint"),
    DTypeInfo("uint16", 2, "uint"),
    DTypeInfo("uint32", 4, "uint"),
    DTypeInfo("uint64", 8, "uint"),
    DTypeInfo("bool", 1, "bool"),
    # Last, so the corpus specs made from this order keep their seeds. Half-precision components.
    DTypeInfo("complex32", 4, "complex", 5, 10),
)
INFO: dict[str, DTypeInfo] = {info.name: info for info in CATALOGUE}

# Dtypes a module with a forward() can be built in; the others only appear in custom tensors.
MODULE_DTYPES: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16")


class UnknownDType(ValueError):
    """A dtype name that ckpt-compat does not know or the running torch does not have."""


def info(name: str) -> DTypeInfo:
    try:
        return INFO[name]
    except KeyError:
        raise UnknownDType(f"unknown dtype {name!r}; known: {', '.join(INFO)}") from None


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name``; raises `UnknownDType` if this torch lacks it."""
    info(name)
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise UnknownDType(f"dtype {name!r} does not exist in torch {torch.__version__}")
    return dtype


def name_of(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@functools.cache
def why_unsupported(name: str) -> str | None:
    """None if the running torch supports ``name`` for everything the harness does, else why."""
    try:
        dtype = torch_dtype(name)
    except UnknownDType as exc:
        return str(exc)
    size = INFO[name].itemsize
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "ComplexHalf support is experimental": said once, here
            raw = torch.zeros(16 * size, dtype=torch.uint8)
            t = raw.view(dtype).reshape(2, 2, 2, 2)
            t.clone().copy_(t)
            torch.zeros((2, 2), dtype=dtype).t().copy_(torch.zeros((2, 2), dtype=dtype))  # strided destination
            t.contiguous(memory_format=torch.channels_last).reshape(-1)
            t.transpose(0, 1).contiguous().reshape(-1).view(torch.uint8)
            torch.zeros(0, dtype=dtype)
    except Exception as exc:  # any failure means "not usable here": the reason is reported
        return f"torch {torch.__version__} cannot use {name}: {type(exc).__name__}: {exc}"
    return None


def usable_dtype(name: str) -> torch.dtype:
    """The torch dtype, if the running torch supports everything the harness does with it."""
    why = why_unsupported(name)
    if why:
        raise UnknownDType(why)
    return torch_dtype(name)


def available_dtypes() -> list[str]:
    """Names of the catalogue dtypes the running torch fully supports, in catalogue order."""
    return [d.name for d in CATALOGUE if why_unsupported(d.name) is None]
