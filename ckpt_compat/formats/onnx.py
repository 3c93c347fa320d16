"""ONNX (protobuf): ``torch.onnx.export`` (the dynamo exporter), read back with ``onnx``.

Checked: every state-dict tensor against the initializer of the same name, bit for bit; a tie is
one initializer under one of its names. Tensors the exporter folds or rewrites (an LSTM's packed
weights, ...) have no initializer of their own name: they are listed, not failed. Where
onnxruntime is installed, the model's outputs are compared with the eager ones within
``RTOL``/``ATOL``: ONNX runtimes promise no bitwise outputs, and say so.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckpt_compat.devices import MapLocation
from ckpt_compat.formats.base import Format, Loaded, ModelFactory, Unsupported, first_line

RTOL, ATOL = 1e-4, 1e-5


def _why_unavailable() -> str | None:
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not importable; pip install 'ckpt-compat[onnx]'"
    return None


def _why_unable_to_save() -> str | None:
    try:
        import onnxscript  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not importable; pip install 'ckpt-compat[onnx]'"
    export = getattr(getattr(torch, "onnx", None), "export", None)
    accepted = inspect.signature(export).parameters if export is not None else {}
    if "dynamo" not in accepted:
        return f"torch {torch.__version__} has no dynamo-based torch.onnx.export"
    # torch 2.4's dynamo=True is the older dynamo_export, which takes no kwargs= (a spec's tree is
    # one keyword argument); the torch.export-based exporter takes them. Write ONNX with torch >= 2.6.
    if "kwargs" not in accepted:
        return f"torch {torch.__version__}'s torch.onnx.export takes no kwargs= (an older exporter); use torch >= 2.6"
    return None


# The torchlib registry of each opset this process exported with, built once (see below).
_REGISTRIES: dict[Any, Any] = {}


def _torch_registry() -> Any:
    """torch's ``ONNXRegistry`` where it is built by ``from_torchlib``, else None."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return None
    registry_class = getattr(_registration, "ONNXRegistry", None)
    if registry_class is None or not isinstance(vars(registry_class).get("from_torchlib"), classmethod):
        return None
    return registry_class


@contextlib.contextmanager
def registry_built_once() -> Iterator[None]:
    """``torch.onnx.export`` builds its operator registry from torchlib on every call: about 1 s,
    onnxscript reading the source of ~3,000 functions, half the time of exporting a small model. The
    registry depends only on its arguments (the opset), so within this block each is built once per
    process and every export gets its own copy (an export may add custom ops to it). Feature-detected:
    where torch has no ``ONNXRegistry.from_torchlib``, exports run as they are."""
    registry_class = _torch_registry()
    if registry_class is None:
        yield
        return
    original = vars(registry_class)["from_torchlib"]
    build = original.__func__

    def from_torchlib(cls: type, *args: Any, **kwargs: Any) -> Any:
        key = (cls, args, tuple(sorted(kwargs.items())))
        try:
            hash(key)
        except TypeError:  # arguments this cache cannot key on: build it as torch would
            return build(cls, *args, **kwargs)
        if key not in _REGISTRIES:
            _REGISTRIES[key] = build(cls, *args, **kwargs)
        built = _REGISTRIES[key]
        registry = object.__new__(type(built))
        for name, value in vars(built).items():
            if isinstance(value, dict):  # functions: target -> [decompositions], one list per target
                value = {k: list(v) if isinstance(v, list) else v for k, v in value.items()}
            setattr(registry, name, value)
        return registry

    registry_class.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        registry_class.from_torchlib = original


class ONNX(Format):
    name = "onnx"
    bench_note = "a program: a benchmark workload computes nothing, so an export keeps none of its weights"
    description = "torch.onnx.export(dynamo=True) -> .onnx protobuf; initializers read back with onnx"
    suffix = ".onnx"
    heavy = True
    map_location_kinds = ("str",)
    preserves_strides = False  # initializers are dense arrays
    preserves_aliasing = False  # a tie is one initializer; the names map back to it
    output_tolerance = (RTOL, ATOL)

    def why_unavailable(self) -> str | None:
        return _why_unavailable()

    def why_unable_to_save(self) -> str | None:
        return _why_unavailable() or _why_unable_to_save()

    def _save(self, model: nn.Module, path: Path, inputs: Any) -> None:
        from ckpt_compat.loading import Call, leaf_blocks

        # A spec's tree is passed as one keyword (a dict at the end of args would be taken for
        # keyword arguments); a user's model gets its own call.
        call = inputs if isinstance(inputs, Call) else Call((), {"inputs": inputs})
        if not isinstance(inputs, Call) and not leaf_blocks(inputs or {}):
            raise Unsupported(
                "ONNX export needs a forward that computes something — no block of this model takes input"
            )
        try:
            with warnings.catch_warnings(), torch.no_grad(), registry_built_once():
                warnings.simplefilter("ignore")
                logging.disable(logging.WARNING)  # the exporter logs every step
                # Initializers go inside the file: an external .data file would be named after the
                # temporary path of the atomic write, and dangle once it is renamed.
                # Unoptimized: the optimizer folds BatchNorm into a preceding Linear/Conv and rewrites that
                # weight's initializer under the same name, so initializers would not be the state dict.
                accepted = inspect.signature(torch.onnx.export).parameters
                extra: dict[str, Any] = {k: False for k in ("external_data", "optimize") if k in accepted}
                torch.onnx.export(
                    model, call.args, str(path), kwargs=dict(call.kwargs), dynamo=True, verbose=False, **extra
                )
        except Exception as exc:
            raise Unsupported(f"torch.onnx.export {_why_not_exported(exc)}") from exc
        finally:
            logging.disable(logging.NOTSET)

    def load(
        self,
        path: Path,
        options: Mapping[str, Any],
        map_location: MapLocation,
        fresh_model: ModelFactory,
        *,
        trusted: bool,
    ) -> Loaded:
        import onnx
        from onnx import numpy_helper

        if map_location.target != "cpu":
            raise Unsupported("an ONNX file holds arrays, read on the CPU")
        model = onnx.load(str(path))
        layout = fresh_model().state_dict()
        arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        state: dict[str, torch.Tensor] = {}
        absent: dict[str, str] = {}
        for key, value in layout.items():
            # A tie is one initializer, named after one of the tied keys.
            names = [key] + [
                k
                for k, v in layout.items()
                if k != key and value.numel() and v.untyped_storage().data_ptr() == value.untyped_storage().data_ptr()
            ]
            found = next((n for n in names if n in arrays), None)
            if found is None:
                absent[key] = "no initializer of this name (folded or rewritten by the exporter)"
            else:
                state[key] = _tensor(arrays[found], value.dtype)
        return Loaded(state, absent=absent, call=_runtime(path, model), flat_outputs=True)


def _why_not_exported(exc: BaseException) -> str:
    """What the exporter failed on. Where it failed translating the exported program, the graph
    node it was translating (the fx ``Node`` in its translation frames, read off the traceback: its
    ConversionError names the node only in prose) and the innermost error, so that a known issue
    names the op and the cause it explains ("cannot convert aten.x.default — AttributeError: ...");
    else (torch.export could not trace the model, ...) the error itself."""
    node, innermost, seen = None, exc, set()
    at: BaseException | None = exc
    while at is not None and id(at) not in seen:
        seen.add(id(at))
        innermost = at
        frame = at.__traceback__
        while frame is not None:
            candidate = frame.tb_frame.f_locals.get("node")
            if isinstance(candidate, torch.fx.Node) and frame.tb_frame.f_globals.get("__name__", "").startswith(
                "torch.onnx"
            ):
                node = candidate
            frame = frame.tb_next
        at = at.__cause__ or at.__context__
    if node is None:
        return f"cannot export this model — {first_line(exc)}"
    what = {"output": "the program's outputs", "placeholder": f"the program input {node.target}"}.get(
        node.op, str(node.target)
    )
    return f"cannot convert {what} — {first_line(innermost)}"


def _tensor(array: Any, dtype: torch.dtype) -> torch.Tensor:
    """The initializer's bytes as a tensor of the state dict's dtype (numpy has no bfloat16)."""
    if array.size == 0:
        return torch.empty(array.shape, dtype=dtype)
    # Another item size is another dtype, which the comparison reports. (torch.dtype.itemsize: 2.1+.)
    if array.dtype.itemsize != torch.empty((), dtype=dtype).element_size():
        return torch.from_numpy(array.copy())
    raw = torch.frombuffer(bytearray(array.tobytes()), dtype=torch.uint8)
    return raw.view(dtype).reshape(array.shape)


def _runtime(path: Path, model: Any) -> Any:
    """The model (``model``: the file's ModelProto) run by onnxruntime on the flattened inputs, or
    None where it is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    # The graph as the file holds it, not as ONNX Runtime's optimizer would rewrite it: its fusions
    # have numerics of their own, and its constant folding (1.32) dies with SIGSEGV on the
    # unoptimized graph the exporter writes for EmbeddingBag(mode="mean") (see `_save`: the file
    # is unoptimized so that its initializers are the state dict).
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # the runtime rejects the exported model: a finding, not a load error
        reason = f"onnxruntime {onnxruntime.__version__} cannot load the exported model — {first_line(exc)}"
        reason += _node_input_types(model, exc) + _schema_refusal(model, exc)

        def refuse(inputs: Any) -> list[Any]:
            raise RuntimeError(reason)

        return refuse
    names = [i.name for i in session.get_inputs()]

    def call(inputs: Any) -> list[Any]:
        from ckpt_compat.loading import Call, leaf_blocks

        if isinstance(inputs, Call):
            flat = inputs.tensors()
        else:
            flat = [t for _, x in leaf_blocks(inputs) for t in (x if isinstance(x, tuple) else (x,))]
        feeds = {n: _ort_value(t) for n, t in zip(names, flat, strict=False)}
        try:
            outputs = session.run_with_ort_values(None, feeds)
        except Exception as exc:
            if facts := _lstm_state_sizes(model, exc):  # the same exception type, with the graph's facts
                raise type(exc)(f"{exc}{facts}") from exc
            raise
        return [_from_ort_value(v) for v in outputs]

    return call


# ORT's CPU provider registers most ops for a few element types only; its refusal names the node,
# not the type, so the type is read off the model.
_NO_KERNEL = re.compile(r"NOT_IMPLEMENTED : Could not find an implementation for (\w+)\(\d+\) node with name '([^']*)'")
_FLOATING = (1, 10, 11, 16)  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _node_input_types(model: Any, exc: BaseException) -> str:
    """Where ONNX Runtime has no kernel for a node, the element types of the node's floating-point
    inputs as the model declares them (``" (its floating-point inputs: tensor(float16))"``), so that
    a known issue can say which precision lacks kernels; else nothing. A node ONNX Runtime made by
    expanding a function op (Gelu into Erf, ...) has no name: then the graph's function op nodes
    whose body holds that op are named with their inputs' types."""
    from onnx import TensorProto, shape_inference

    found = _NO_KERNEL.search(str(exc))
    if found is None:
        return ""
    with contextlib.suppress(Exception):  # the exporter declares most values; inference adds the rest
        model = shape_inference.infer_shapes(model)
    graph = model.graph
    declared = {
        **{v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)},
        **{i.name: i.data_type for i in graph.initializer},
    }
    op, name = found.groups()
    # By name and type: nameless nodes of other ops say nothing about this one.
    nodes = [n for n in graph.node if n.name == name and n.op_type == op]
    expanded = not nodes and not name
    if expanded:
        nodes = [n for n in graph.node if op in _function_body_ops(n, declared, _opset(model, n.domain))]
    types = sorted({declared[i] for n in nodes for i in n.input if declared.get(i) in _FLOATING})
    if not nodes or not types:
        return ""
    names = ", ".join(f"tensor({TensorProto.DataType.Name(t).lower()})" for t in types)
    if expanded:
        where = ", ".join(f"{n.op_type} '{n.name}'" for n in nodes)
        return f" (expanded from {where}, whose floating-point inputs are: {names})"
    return f" (its floating-point inputs: {names})"


# ORT checks an LSTM node's initial cell state against its hidden_size attribute when it runs.
_LSTM_CELL_STATE = re.compile(r"running LSTM node\. Name:'([^']*)' Status Message: Input initial_c must have shape")


def _lstm_state_sizes(model: Any, exc: BaseException) -> str:
    """Where ONNX Runtime refuses an LSTM node's initial cell state, the shapes the graph gives its
    initial hidden and cell states when their sizes differ and the hidden one is the node's
    hidden_size (``" (its initial_h has shape [1, 2, 1] and initial_c [1, 2, 2]: ...)"``): an LSTM
    with a projection, which the ONNX op does not have, exported as one without. Else nothing."""
    from onnx import helper

    found = _LSTM_CELL_STATE.search(str(exc))
    node = next((n for n in model.graph.node if found and n.name == found.group(1) and n.op_type == "LSTM"), None)
    if node is None or len(node.input) < 7:
        return ""
    shapes = _shapes(model)
    h, c = shapes.get(node.input[5]), shapes.get(node.input[6])
    hidden = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "hidden_size"), None)
    if not h or not c or h[-1] == c[-1] or h[-1] != hidden:
        return ""
    return (
        f" (its initial_h has shape {h} and initial_c {c}: hidden and cell states of different sizes, "
        "which only an LSTM with a projection has)"
    )


def _shapes(model: Any) -> dict[str, list[int]]:
    """The fully known shapes of the graph's values, as declared or inferred."""
    from onnx import shape_inference

    with contextlib.suppress(Exception):
        model = shape_inference.infer_shapes(model)
    graph = model.graph
    out = {i.name: list(i.dims) for i in graph.initializer}
    for v in (*graph.input, *graph.value_info, *graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
        if v.type.tensor_type.HasField("shape") and all(d > 0 for d in dims):
            out[v.name] = dims
    return out


# ONNX's checker in ORT refuses a value whose type the op's schema does not list for that input.
_TYPE_ERROR = re.compile(
    r"Type Error: Type '(tensor\(\w+\))' of input parameter \((.*)\) of operator \((\w+)\) in node \((.*)\) is invalid"
)


def _schema_refusal(model: Any, exc: BaseException) -> str:
    """Where ONNX Runtime refuses a node's input type, whether the op's ONNX schema at the model's
    opset lists that type for that input (``" (ONNX's Conv schema at opset 18 takes no
    tensor(bfloat16) for that input)"``): a schema fact, not an exporter that declared a wrong type."""
    from onnx import defs

    found = _TYPE_ERROR.search(str(exc))
    node = next((n for n in model.graph.node if found and n.name == found.group(4)), None)
    if found is None or node is None or found.group(2) not in node.input:
        return ""
    opset = _opset(model, node.domain)
    try:
        schema: Any = defs.get_schema(node.op_type, opset, node.domain)
    except Exception:  # no schema at that opset: nothing to say
        return ""
    formal = schema.inputs[min(list(node.input).index(found.group(2)), len(schema.inputs) - 1)]
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    if found.group(1) in allowed.get(formal.type_str, {formal.type_str}):
        return ""
    return f" (ONNX's {node.op_type} schema at opset {opset} takes no {found.group(1)} for that input)"


def _opset(model: Any, domain: str) -> int:
    """The opset version ``model`` imports for ``domain`` ("" and "ai.onnx" name the same one); 0 if none."""
    same = {"", "ai.onnx"} if domain in ("", "ai.onnx") else {domain}
    return next((o.version for o in model.opset_import if o.domain in same), 0)


def _function_body_ops(node: Any, declared: dict[str, int], opset: int) -> set[str]:
    """The op types in the body ONNX gives ``node``'s op as a function at ``opset`` (for the
    input types ``declared``); empty for an op that is not a function."""
    from onnx import FunctionProto, defs, helper

    try:
        schema: Any = defs.get_schema(node.op_type, opset, node.domain)  # its stubs lack the function API
        if schema.has_function:
            body = schema.function_body
        elif schema.has_context_dependent_function:
            types = [helper.make_tensor_type_proto(declared[i], None).SerializeToString() for i in node.input if i]
            body = FunctionProto.FromString(schema.get_context_dependent_function(node.SerializeToString(), types))
        else:
            return set()
    except Exception:  # no schema at this opset, an input of unknown type: not a function we can expand
        return set()
    return {n.op_type for n in body.node}


def _ort_value(t: torch.Tensor) -> Any:
    """An input for ONNX Runtime: numpy has no bfloat16, so its bits go as uint16, typed BFLOAT16."""
    from onnx import TensorProto
    from onnxruntime import OrtValue

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return OrtValue.ortvalue_from_numpy_with_onnx_type(t.view(torch.int16).numpy(), TensorProto.BFLOAT16)
    return OrtValue.ortvalue_from_numpy(t.numpy())


def _from_ort_value(value: Any) -> torch.Tensor:
    """An output of ONNX Runtime as a tensor; a bfloat16 one (no numpy type) copied by its bytes."""
    import ctypes

    if value.data_type() != "tensor(bfloat16)":
        return torch.from_numpy(value.numpy())
    shape = list(value.shape())
    size = 2 * int(torch.Size(shape).numel())
    if not size:  # frombuffer refuses an empty buffer
        return torch.empty(shape, dtype=torch.bfloat16)
    return torch.frombuffer(bytearray(ctypes.string_at(value.data_ptr(), size)), dtype=torch.bfloat16).reshape(shape)
