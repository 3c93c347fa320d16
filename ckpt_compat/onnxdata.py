"""An ONNX model's tensor data, held to what onnx and ONNX Runtime need to use it.

Raw data stored in the model must take exactly the bytes its shape and dtype do: ``onnx.checker``
refuses too few but passes too many, which ONNX Runtime refuses (``raw_data size (12 bytes) does
not match expected size from shape and data type (8 bytes)``).

A tensor stored outside the model (``data_location = EXTERNAL``) names a file beside it and, where
several tensors share one, an ``offset`` and a ``length``. ``onnx.checker`` on the model file
checks that file is a regular one inside the model's folder, but not its size: data cut short, an
offset past its end or not a number, a length its shape does not take, all pass it. Then
``onnx.load`` fails (``External data offset (100) exceeds file size (8)``), or loads bytes that
the checker of the loaded model and ONNX Runtime refuse (``raw_data size (4 bytes) is too small
for the declared shape``; ``external data size mismatch``). Read from file sizes alone: nothing is
loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def tensor_data_problems(model: Any, folder: Path) -> list[str]:
    """One line per tensor of ``model`` (an ``onnx.ModelProto`` read without its external data)
    whose data (in the model, or external in ``folder``) onnx or ONNX Runtime cannot read or use."""
    import onnx

    problems = []
    for tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            problem = _external_problem(tensor, folder)
            if problem:
                problems.append(f"external data of tensor {tensor.name!r}: {problem}")
        elif tensor.raw_data and (needed := _nbytes(tensor)) is not None and len(tensor.raw_data) != needed:
            problems.append(
                f"tensor {tensor.name!r}: its shape {list(tensor.dims)} and dtype take {needed} bytes, its raw_data "
                f"holds {len(tensor.raw_data)} (ONNX Runtime refuses it)"
            )
    return problems


def _tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto in the model: initializers, sparse ones, constants in nodes, subgraphs
    and functions (where ``onnx.load`` looks for external data too)."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[Any]) -> Iterator[Any]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for graph in attribute.graphs:
                yield from _graph_tensors(graph)


def _external_problem(tensor: Any, folder: Path) -> str | None:
    fields = {entry.key: entry.value for entry in tensor.external_data}
    location = fields.get("location")
    if not location:
        return "names no file (external_data has no 'location')"
    numbers: dict[str, int] = {}
    for key in ("offset", "length"):
        if key in fields:
            try:
                numbers[key] = int(fields[key])
            except ValueError:
                return f"{key} {fields[key]!r:.40} is not a number"
            if numbers[key] < 0:
                return f"{key} {numbers[key]} is negative"
    path = folder / location
    try:
        size = path.stat().st_size
    except (OSError, ValueError):  # missing, a NUL in the name: the checker names these
        return None
    offset = numbers.get("offset", 0)
    if offset > size:
        return f"offset {offset} is past the end of {location} ({size} bytes)"
    needed = _nbytes(tensor)
    if "length" in numbers:
        length = numbers["length"]
        if offset + length > size:
            return f"{length} bytes at offset {offset} run past the end of {location} ({size} bytes)"
        if needed is not None and length != needed:  # ONNX Runtime: "external data size mismatch"
            return f"its shape {list(tensor.dims)} and dtype take {needed} bytes, not the {length} bytes it names"
    # No length: the rest of the file. Too little is refused by both; more, onnx.load reads it all
    # (and numpy_helper cannot reshape it) while ONNX Runtime takes what the shape needs: not broken.
    elif needed is not None and size - offset < needed:
        return (
            f"its shape {list(tensor.dims)} and dtype take {needed} bytes, {location} holds {size - offset} "
            f"from offset {offset}"
        )
    return None


# Sub-byte dtypes packed whole into bytes (two 4-bit or four 2-bit values a byte); the 6-bit floats'
# packing and strings' encoding are not checked here.
_PACKED_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}
_NOT_CHECKED = {"UNDEFINED", "STRING", "FLOAT6E2M3", "FLOAT6E3M2"}


def _known_types() -> frozenset[int]:
    import onnx

    return frozenset(onnx.TensorProto.DataType.values())


def _nbytes(tensor: Any) -> int | None:
    """The bytes ``tensor``'s raw data takes, or None for dtypes stored otherwise (strings)."""
    import onnx

    numel = 1
    for dim in tensor.dims:
        numel *= dim
    name = onnx.TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in _known_types() else None
    if name in _PACKED_BITS:
        return (numel * _PACKED_BITS[name] + 7) // 8
    if name is None or name in _NOT_CHECKED:
        return None
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):  # a dtype this onnx does not know
        return None
    return numel * itemsize
