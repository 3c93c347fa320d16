"""Public hypothesis strategies: architectures, modules, their state, dtypes, and corruptions
of a saved file. Arguments are checked when a strategy is created (hypothesis' InvalidArgument,
naming the argument and its value), not when it is first drawn from.

Everything drawn is valid for the running torch: dtypes come from `dtypes.available_dtypes()`,
layer kwargs that a torch version lacks are not drawn, parametrizations only where they exist.
Strategies shrink towards small float32 models, so a failure is reported on the simplest spec.

>>> import torch
>>> from hypothesis import given
>>> from ckpt_compat.strategies import modules, state_dicts
>>> @given(state_dicts())
... def test_my_loader_keeps_every_tensor(state):
...     torch.save(state, "/tmp/sd.pt")
...     assert torch.load("/tmp/sd.pt").keys() == state.keys()
>>> @given(modules(max_depth=1))
... def test_my_exporter(module): ...

`corruptions(data)` draws damaged copies of a saved file, for testing a loader's error paths.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from torch import nn

from ckpt_compat import dtypes as _dtypes
from ckpt_compat import mutations
from ckpt_compat.specs import FILL_MODES, LAYERS, PARAMETRIZATIONS, ModelSpec, build

__all__ = [
    "corruptions",
    "dtypes",
    "layer_specs",
    "model_specs",
    "modules",
    "sequential_specs",
    "state_dicts",
    "tensor_bags",
    "tied_pairs",
]

Node = dict[str, Any]
small = st.integers(1, 4)


def _accepts(cls: type[nn.Module], kwarg: str) -> bool:
    return kwarg in inspect.signature(cls.__init__).parameters


def dtypes(*, module: bool = False) -> st.SearchStrategy[str]:
    """Names of dtypes the running torch supports (``"float32"``, ``"float8_e4m3fn"``, ...);
    ``module=True``: only those layers can be built in and run forward with."""
    if not isinstance(module, bool):
        raise InvalidArgument(f"dtypes(module={module!r}): expected True or False")
    names = _dtypes.available_dtypes()
    if module:
        names = [n for n in _dtypes.MODULE_DTYPES if n in names]
    return st.sampled_from(names)


@st.composite
def _conv_args(draw: st.DrawFn, transposed: bool = False) -> dict[str, Any]:
    groups = 1 if transposed else draw(st.sampled_from([1, 2]))
    return {
        "in_channels": groups * draw(st.integers(1, 3)),
        "out_channels": groups * draw(st.integers(1, 3)),
        "kernel_size": draw(st.integers(1, 3)),
        "stride": draw(st.integers(1, 2)),
        "padding": draw(st.integers(0, 1)) if not transposed else 0,
        "groups": groups,
        "bias": draw(st.booleans()),
    }


@st.composite
def _norm_args(draw: st.DrawFn, cls: type[nn.Module]) -> dict[str, Any]:
    shape = draw(st.lists(small, min_size=1, max_size=2))
    args: dict[str, Any] = {"normalized_shape": shape, "elementwise_affine": draw(st.booleans())}
    if _accepts(cls, "bias"):  # LayerNorm(bias=) arrived in torch 2.1
        args["bias"] = draw(st.booleans())
    return args


@st.composite
def _rnn_args(draw: st.DrawFn, lstm: bool) -> dict[str, Any]:
    hidden = draw(small)
    args = {
        "input_size": draw(small),
        "hidden_size": hidden,
        "num_layers": draw(st.integers(1, 2)),
        "bias": draw(st.booleans()),
        "batch_first": True,
        "bidirectional": draw(st.booleans()),
    }
    if lstm and hidden > 1 and draw(st.booleans()):
        args["proj_size"] = draw(st.integers(1, hidden - 1))
    return args


@st.composite
def _mha_args(draw: st.DrawFn) -> dict[str, Any]:
    heads = draw(st.integers(1, 2))
    args: dict[str, Any] = {
        "embed_dim": heads * draw(st.integers(1, 3)),
        "num_heads": heads,
        "bias": draw(st.booleans()),
        "add_bias_kv": draw(st.booleans()),
        "batch_first": True,
    }
    if draw(st.booleans()):  # separate q/k/v projections instead of one in_proj_weight
        args.update(kdim=draw(small), vdim=draw(small))
    return args


@st.composite
def _encoder_args(draw: st.DrawFn) -> dict[str, Any]:
    heads = draw(st.integers(1, 2))
    args: dict[str, Any] = {
        "d_model": heads * draw(st.integers(1, 3)),
        "nhead": heads,
        "dim_feedforward": draw(st.integers(1, 8)),
        "dropout": 0.0,
        "batch_first": True,
        "norm_first": draw(st.booleans()),
        "activation": draw(st.sampled_from(["relu", "gelu"])),
    }
    if _accepts(nn.TransformerEncoderLayer, "bias"):
        args["bias"] = draw(st.booleans())
    return args


@st.composite
def _group_norm_args(draw: st.DrawFn) -> dict[str, Any]:
    groups = draw(st.integers(1, 3))
    return {"num_groups": groups, "num_channels": groups * draw(st.integers(1, 2)), "affine": draw(st.booleans())}


def _batch_norm_args() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "num_features": small,
            "affine": st.booleans(),
            "track_running_stats": st.booleans(),
        }
    )


LAYER_ARGS: dict[str, Callable[[], st.SearchStrategy[dict[str, Any]]]] = {
    "Linear": lambda: st.fixed_dictionaries({"in_features": small, "out_features": small, "bias": st.booleans()}),
    "Conv1d": _conv_args,
    "Conv2d": _conv_args,
    "Conv3d": _conv_args,
    "ConvTranspose2d": lambda: _conv_args(transposed=True),
    "BatchNorm1d": _batch_norm_args,
    "BatchNorm2d": _batch_norm_args,
    "LayerNorm": lambda: _norm_args(nn.LayerNorm),
    "GroupNorm": _group_norm_args,
    "Embedding": lambda: st.fixed_dictionaries({"num_embeddings": st.integers(1, 8), "embedding_dim": small}),
    "EmbeddingBag": lambda: st.fixed_dictionaries(
        {
            "num_embeddings": st.integers(1, 8),
            "embedding_dim": small,
            "mode": st.sampled_from(["sum", "mean", "max"]),
        }
    ),
    "LSTM": lambda: _rnn_args(lstm=True),
    "GRU": lambda: _rnn_args(lstm=False),
    "MultiheadAttention": _mha_args,
    "TransformerEncoderLayer": _encoder_args,
    "PReLU": lambda: st.fixed_dictionaries({"num_parameters": small}),
    "Dropout": lambda: st.fixed_dictionaries({"p": st.sampled_from([0.0, 0.5])}),
}
assert set(LAYER_ARGS) == set(LAYERS), "every layer the builder knows needs a strategy"


def layer_specs(kinds: list[str] | None = None, dtype: str | None = None) -> st.SearchStrategy[Node]:
    """One layer node, e.g. ``{"kind": "Linear", "args": {...}, "dtype": "float32"}``; ``kinds``
    limits the layer types (names of `specs.LAYERS`), ``dtype`` fixes the dtype."""
    if kinds is not None:
        unknown = sorted(set(kinds) - set(LAYERS)) if isinstance(kinds, (list, tuple)) else [kinds]
        if unknown or not kinds:
            raise InvalidArgument(f"layer_specs(kinds={kinds!r}): expected a non-empty list of {sorted(LAYERS)}")
    if dtype is not None and dtype not in _dtypes.MODULE_DTYPES:
        raise InvalidArgument(f"layer_specs(dtype={dtype!r}): expected one of {list(_dtypes.MODULE_DTYPES)}")
    return _layer_specs(kinds, dtype)


@st.composite
def _layer_specs(draw: st.DrawFn, kinds: list[str] | None, dtype: str | None) -> Node:
    kind = draw(st.sampled_from(kinds or list(LAYERS)))
    return {"kind": kind, "args": draw(LAYER_ARGS[kind]()), "dtype": dtype or draw(dtypes(module=True))}


@st.composite
def sequential_specs(draw: st.DrawFn) -> Node:
    """An ``nn.Sequential`` chain on [batch, features] whose shapes line up."""
    dtype = draw(dtypes(module=True))
    features = first = draw(small)
    children: list[Node] = []
    for _ in range(draw(st.integers(1, 4))):
        step = draw(st.sampled_from(["Linear", "LayerNorm", "PReLU", "BatchNorm1d", "Dropout"]))
        if step == "Linear":
            out = draw(small)
            args: dict[str, Any] = {"in_features": features, "out_features": out, "bias": draw(st.booleans())}
            features = out
        elif step == "LayerNorm":
            args = {"normalized_shape": [features]}
        elif step == "PReLU":
            args = {"num_parameters": draw(st.sampled_from([1, features]))}
        elif step == "BatchNorm1d":
            args = {"num_features": features}
        else:
            args = {"p": 0.0}
        children.append({"kind": step, "args": args, "dtype": dtype})
    return {"kind": "sequential", "input": [first], "children": children}


@st.composite
def _tensor_spec(draw: st.DrawFn, name: str, earlier: list[dict[str, Any]]) -> dict[str, Any]:
    bases = [t for t in earlier if not t.get("none") and "view_of" not in t and t.get("layout") == "contiguous"]
    choice = draw(st.sampled_from(["tensor", "tensor", "tensor", "none", "view"]))
    if choice == "none":
        return {"name": name, "role": "buffer", "none": True}
    if choice == "view" and bases:
        base = draw(st.sampled_from(bases))
        kinds = ["alias", "offset"] + (["transpose"] if len(base["shape"]) == 2 else [])
        return {
            "name": name,
            "role": "buffer",
            "view_of": base["name"],
            "view": draw(st.sampled_from(kinds)),
            "persistent": draw(st.booleans()),
        }
    shape = draw(st.lists(st.integers(0, 4), max_size=4))
    layouts = (
        ["contiguous"] + (["transposed", "strided"] if shape else []) + (["channels_last"] if len(shape) == 4 else [])
    )
    role = draw(st.sampled_from(["parameter", "buffer"]))
    spec: dict[str, Any] = {
        "name": name,
        "role": role,
        "dtype": draw(dtypes()),
        "shape": shape,
        "layout": draw(st.sampled_from(layouts)),
    }
    if role == "buffer":
        spec["persistent"] = draw(st.booleans())
    return spec


@st.composite
def tensor_bags(draw: st.DrawFn) -> Node:
    """Custom parameters and buffers: every dtype, 0-d, zero-size, None, views, non-contiguous."""
    tensors: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 5))):
        tensors.append(draw(_tensor_spec(f"t{i}", tensors)))
    return {"kind": "tensors", "tensors": tensors}


@st.composite
def tied_pairs(draw: st.DrawFn) -> Node:
    """An embedding and an output head sharing one weight (the tie is added by `model_specs`)."""
    vocab, dim, dtype = draw(st.integers(1, 8)), draw(small), draw(dtypes(module=True))
    return {
        "kind": "dict",
        "children": {
            "embed": {"kind": "Embedding", "args": {"num_embeddings": vocab, "embedding_dim": dim}, "dtype": dtype},
            "head": {
                "kind": "Linear",
                "args": {"in_features": dim, "out_features": vocab, "bias": draw(st.booleans())},
                "dtype": dtype,
            },
        },
        "tied": True,
    }


def _nodes(depth: int) -> st.SearchStrategy[Node]:
    leaves = st.one_of(layer_specs(), sequential_specs(), tensor_bags(), tied_pairs())
    if depth <= 0:
        return leaves
    inner = _nodes(depth - 1)
    return st.one_of(
        leaves,
        st.lists(inner, min_size=1, max_size=3).map(lambda c: {"kind": "list", "children": c}),
        st.lists(inner, min_size=1, max_size=3).map(
            lambda c: {"kind": "dict", "children": {f"m{i}": n for i, n in enumerate(c)}}
        ),
    )


def _walk(node: Node, path: str) -> list[tuple[str, Node]]:
    found = [(path, node)]
    children = node.get("children", ())
    items = children.items() if isinstance(children, dict) else enumerate(children)
    for name, child in items:
        found += _walk(child, f"{path}.{name}" if path else str(name))
    return found


def model_specs(max_depth: int = 2, fill: str | None = None) -> st.SearchStrategy[ModelSpec]:
    """A whole architecture: 1-4 top-level blocks nested up to ``max_depth`` (1-4), ties,
    parametrizations, a seed and a fill mode (``fill``: one of `specs.FILL_MODES`, default drawn).
    `specs.build` turns one into the module; its JSON (`ModelSpec.dumps`) reproduces it anywhere."""
    if not isinstance(max_depth, int) or isinstance(max_depth, bool) or not 1 <= max_depth <= 4:
        raise InvalidArgument(f"model_specs(max_depth={max_depth!r}): expected an int from 1 to 4")
    if fill is not None and fill not in FILL_MODES:
        raise InvalidArgument(f"model_specs(fill={fill!r}): expected one of {list(FILL_MODES)}")
    return _model_specs(max_depth, fill)


@st.composite
def _model_specs(draw: st.DrawFn, max_depth: int, fill: str | None) -> ModelSpec:
    children = draw(st.lists(_nodes(max_depth - 1), min_size=1, max_size=4))
    root: Node = {"kind": "dict", "children": {f"b{i}": c for i, c in enumerate(children)}}
    ties = []
    for path, node in _walk(root, ""):
        if node.pop("tied", False):
            ties.append({"source": f"{path}.embed.weight", "target": f"{path}.head.weight"})
    parametrizations: list[dict[str, str]] = []
    available = [k for k in PARAMETRIZATIONS if hasattr(torch.nn.utils.parametrizations, k)]
    eligible = [
        p
        for p, n in _walk(root, "")
        if n.get("kind") in ("Linear", "Conv1d", "Conv2d")
        and n.get("dtype") in ("float32", "float64")
        and not p.endswith(".head")
    ]
    wanted: bool = draw(st.booleans())
    if available and eligible and wanted:
        parametrizations.append(
            {"module": draw(st.sampled_from(eligible)), "tensor": "weight", "kind": draw(st.sampled_from(available))}
        )
    return ModelSpec(
        root=root,
        seed=draw(st.integers(0, 2**32 - 1)),
        fill=fill or draw(st.sampled_from(["values", "bits"])),
        ties=tuple(ties),
        parametrizations=tuple(parametrizations),
    )


def _spec_strategy(name: str, specs: Any) -> st.SearchStrategy[ModelSpec]:
    if specs is None:
        return model_specs()
    if not isinstance(specs, st.SearchStrategy):
        raise InvalidArgument(f"{name}(specs={specs!r}): expected a strategy of ModelSpec, e.g. model_specs()")
    return specs


def modules(specs: st.SearchStrategy[ModelSpec] | None = None, *, device: str = "cpu") -> st.SearchStrategy[nn.Module]:
    """Built models in eval mode (`specs.build` of ``specs``, default `model_specs()`), on ``device``."""
    chosen = _spec_strategy("modules", specs)
    if device not in ("cpu", "meta") and not (device == "cuda" and torch.cuda.is_available()):
        raise InvalidArgument(f"modules(device={device!r}): expected 'cpu', 'meta', or 'cuda' where one is present")
    return chosen.map(lambda spec: build(spec, device=device))


def state_dicts(specs: st.SearchStrategy[ModelSpec] | None = None) -> st.SearchStrategy[dict[str, torch.Tensor]]:
    """State dicts of built models: the thing most checkpoints hold."""
    return _spec_strategy("state_dicts", specs).map(lambda spec: dict(build(spec).state_dict()))


def corruptions(data: bytes, *, kinds: tuple[str, ...] = mutations.KINDS) -> st.SearchStrategy[bytes]:
    """Damaged copies of a saved file's bytes: truncations, bit flips, spliced ranges, mutated
    pickles inside a zip archive, a mutated safetensors header (``kinds``: a subset of those).

    >>> from hypothesis import given
    >>> raw = open("model.safetensors", "rb").read()  # doctest: +SKIP
    >>> @given(corruptions(raw))  # doctest: +SKIP
    ... def test_my_loader_fails_cleanly(damaged): ...
    """
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise InvalidArgument(f"corruptions(data={type(data).__name__}): expected the non-empty bytes of a file")
    if not kinds or set(kinds) - set(mutations.KINDS):
        raise InvalidArgument(f"corruptions(kinds={kinds!r}): expected a non-empty subset of {mutations.KINDS}")
    return mutations.mutated(bytes(data), tuple(kinds))
