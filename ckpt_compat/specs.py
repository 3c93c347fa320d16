"""`ModelSpec`: a JSON description of an architecture, and `build()`, its deterministic builder.

`build(spec)` never uses torch's RNG. Every tensor is filled from numpy's PCG64 bit stream
(stable across numpy versions by numpy's own policy), seeded by the spec's seed and the
tensor's key, and turned into a tensor through raw bytes. Float values are chosen so that they
are exactly representable in the target dtype, so no torch rounding is involved either: two
torch versions build bit-identical tensors, which is what lets torch X and torch Y agree on
the expected value of every checkpoint.

A spec is a tree of nodes:

- containers: ``{"kind": "dict", "children": {name: node}}`` (a `Bundle`, the root is one),
  ``{"kind": "list", "children": [node]}`` (a `BundleList`), and
  ``{"kind": "sequential", "children": [node], "input": [features]}`` (an ``nn.Sequential``
  chain; ``input`` is the input shape after the batch dimension, default: the first layer's);
- layers: ``{"kind": "Linear", "args": {...torch kwargs...}, "dtype": "float32"}`` for the
  layers in `LAYERS`;
- custom tensors: ``{"kind": "tensors", "tensors": [TensorSpec, ...]}`` (a `TensorBag`).

plus spec-level ``ties`` (one Parameter in two places) and ``parametrizations``.
"""

from __future__ import annotations

import collections
import copy
import functools
import hashlib
import json
import math
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ckpt_compat import dtypes

SPEC_FORMAT = "ckpt-compat/spec/1"
FILL_MODES = ("values", "bits")
LAYOUTS = ("contiguous", "transposed", "strided", "channels_last")
VIEW_KINDS = ("alias", "offset", "transpose")
PARAMETRIZATIONS = ("weight_norm", "spectral_norm")
# XOR-ed into the seed so a spec can also build a model whose values differ from its own.
_PERTURB = 0x5DEECE66D
BATCH = 2


class SpecError(ValueError):
    """A spec that cannot be built; the message names the offending field and its value."""


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class ModelSpec:
    """A JSON-serialisable architecture plus the seed and fill mode of its values."""

    root: dict[str, Any]
    seed: int = 0
    fill: str = "values"
    ties: tuple[dict[str, str], ...] = ()
    parametrizations: tuple[dict[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "seed": self.seed,
            "fill": self.fill,
            "root": self.root,
            "ties": list(self.ties),
            "parametrizations": list(self.parametrizations),
        }

    def model(self, device: str | torch.device = "cpu", *, perturb: bool = False) -> nn.Module:
        """`build` of this spec (so a spec is a `roundtrip.Subject`)."""
        return build(self, device=device, perturb=perturb)

    def inputs(self) -> dict[str, Any]:
        """`example_inputs` of this spec."""
        return example_inputs(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    @functools.cached_property
    def id(self) -> str:
        """A short content hash: equal specs have equal ids on every machine. Cached: a round trip
        asks for it once per cell, and a spec is not changed once made."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @classmethod
    def from_json(cls, obj: Any) -> ModelSpec:
        """Validate and load a spec; raises `SpecError` naming the bad field."""
        if not isinstance(obj, dict):
            raise SpecError(f"spec: expected a JSON object, got {type(obj).__name__}")
        if obj.get("format", SPEC_FORMAT) != SPEC_FORMAT:
            raise SpecError(f"spec.format: expected {SPEC_FORMAT!r}, got {obj.get('format')!r}")
        seed = obj.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise SpecError(f"spec.seed: expected an integer in [0, 2**63), got {seed!r}")
        fill = obj.get("fill", "values")
        if fill not in FILL_MODES:
            raise SpecError(f"spec.fill: expected one of {FILL_MODES}, got {fill!r}")
        root = obj.get("root")
        if not isinstance(root, dict) or root.get("kind") != "dict":
            raise SpecError("spec.root: expected a node of kind 'dict'")
        _validate_node(root, "spec.root")
        ties = tuple(_validate_pairs(obj.get("ties", []), "spec.ties", ("source", "target")))
        params = tuple(
            _validate_pairs(obj.get("parametrizations", []), "spec.parametrizations", ("module", "tensor", "kind"))
        )
        for i, p in enumerate(params):
            if p["kind"] not in PARAMETRIZATIONS:
                raise SpecError(
                    f"spec.parametrizations[{i}].kind: expected one of {PARAMETRIZATIONS}, got {p['kind']!r}"
                )
        return cls(root=root, seed=seed, fill=fill, ties=ties, parametrizations=params)

    @classmethod
    def loads(cls, text: str) -> ModelSpec:
        return cls.from_json(json.loads(text))


def _validate_pairs(items: Any, where: str, keys: tuple[str, ...]) -> Iterator[dict[str, str]]:
    if not isinstance(items, list):
        raise SpecError(f"{where}: expected a list, got {type(items).__name__}")
    for i, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or sorted(item) != sorted(keys)
            or not all(isinstance(item[k], str) for k in keys)
        ):
            raise SpecError(f"{where}[{i}]: expected an object with string keys {keys}, got {item!r}")
        yield dict(item)


def _validate_node(node: Any, where: str) -> None:
    if not isinstance(node, dict) or "kind" not in node:
        raise SpecError(f"{where}: expected an object with a 'kind', got {node!r}")
    kind = node["kind"]
    if kind == "dict":
        children = node.get("children")
        if not isinstance(children, dict):
            raise SpecError(f"{where}.children: expected an object")
        for name, child in children.items():
            if not name.isidentifier():
                raise SpecError(f"{where}.children: {name!r} is not a valid module name")
            _validate_node(child, f"{where}.children.{name}")
    elif kind in ("list", "sequential"):
        children = node.get("children")
        if not isinstance(children, list):
            raise SpecError(f"{where}.children: expected a list")
        width = node.get("input")
        if width is not None and not (isinstance(width, list) and all(isinstance(w, int) and w > 0 for w in width)):
            raise SpecError(
                f"{where}.input: expected a list of positive ints (the input shape after the batch), got {width!r}"
            )
        for i, child in enumerate(children):
            _validate_node(child, f"{where}.children[{i}]")
    elif kind == "tensors":
        tensors = node.get("tensors")
        if not isinstance(tensors, list):
            raise SpecError(f"{where}.tensors: expected a list")
        names: set[str] = set()
        for i, t in enumerate(tensors):
            _validate_tensor(t, f"{where}.tensors[{i}]", names)
            names.add(t["name"])
    elif kind in LAYERS:
        if not isinstance(node.get("args"), dict):
            raise SpecError(f"{where}.args: expected an object of {kind} keyword arguments")
        dtype = node.get("dtype", "float32")
        if dtype not in dtypes.MODULE_DTYPES:
            raise SpecError(f"{where}.dtype: expected one of {dtypes.MODULE_DTYPES}, got {dtype!r}")
    else:
        known = ["dict", "list", "sequential", "tensors", *LAYERS]
        raise SpecError(f"{where}.kind: unknown kind {kind!r}; known: {', '.join(known)}")


def _validate_tensor(t: Any, where: str, earlier: set[str]) -> None:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise SpecError(f"{where}: expected an object with a 'name'")
    if not t["name"].isidentifier():
        raise SpecError(f"{where}.name: {t['name']!r} is not a valid attribute name")
    if t.get("role") not in ("parameter", "buffer"):
        raise SpecError(f"{where}.role: expected 'parameter' or 'buffer', got {t.get('role')!r}")
    if t.get("none"):
        if t["role"] != "buffer":
            raise SpecError(f"{where}.none: only a buffer can be None")
        return
    if "view_of" in t:
        if t["role"] != "buffer" or t["view_of"] not in earlier:
            raise SpecError(f"{where}.view_of: must be a buffer viewing an earlier tensor, got {t['view_of']!r}")
        if t.get("view") not in VIEW_KINDS:
            raise SpecError(f"{where}.view: expected one of {VIEW_KINDS}, got {t.get('view')!r}")
        return
    dtypes.info(t.get("dtype", ""))
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise SpecError(f"{where}.shape: expected a list of non-negative ints, got {shape!r}")
    layout = t.get("layout", "contiguous")
    if layout not in LAYOUTS:
        raise SpecError(f"{where}.layout: expected one of {LAYOUTS}, got {layout!r}")
    if layout == "channels_last" and len(shape) != 4:
        raise SpecError(f"{where}.layout: channels_last needs a 4-d shape, got {shape}")
    if layout in ("transposed", "strided") and len(shape) < 1:
        raise SpecError(f"{where}.layout: {layout} needs at least one dimension")


# --------------------------------------------------------------------------- deterministic values


def _stream(seed: int, key: str) -> np.random.PCG64:
    return np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(key.encode())]))


def _raw(seed: int, key: str, count: int) -> np.ndarray:
    """``count`` raw 64-bit words: the bit stream itself, which numpy promises not to change."""
    return np.asarray(_stream(seed, key).random_raw(count), dtype="<u8")


def _special_patterns(info: dtypes.DTypeInfo) -> list[int]:
    """Bit patterns of one float component that torch must not normalise on a round trip."""
    width = info.component_size * 8
    if info.name == "float4_e2m1fn_x2":
        return [0x0F, 0xF0, 0x88, 0xFF]
    sign = 1 << (width - 1)
    exp_all = ((1 << info.ebits) - 1) << info.mbits
    patterns = [
        sign,  # -0.0
        exp_all,  # +inf (or the max / NaN of formats without inf)
        sign | exp_all,  # -inf
        exp_all | 1,  # NaN with payload 1 (signalling where the format has it)
        (1 << width) - 1,  # negative NaN, every payload bit set
        1,  # smallest subnormal
    ]
    return [p for p in patterns if p < (1 << width)]


def random_tensor(shape: tuple[int, ...], dtype_name: str, fill: str, seed: int, key: str) -> torch.Tensor:
    """A contiguous CPU tensor whose bytes depend on (seed, key, shape, dtype, fill) only.

    ``fill="values"`` draws ordinary, exactly representable values; ``fill="bits"`` draws raw bit
    patterns and starts every float tensor with -0.0, ±inf, NaN payloads and a subnormal.
    """
    info = dtypes.info(dtype_name)
    dtype = dtypes.usable_dtype(dtype_name)
    numel = math.prod(shape)
    if numel == 0:
        return torch.zeros(shape, dtype=dtype)
    if info.kind == "bool":
        data = (_raw(seed, key, numel) & 1).astype(np.uint8)
        return _from_bytes(data.tobytes(), torch.bool).reshape(shape)
    if info.kind in ("float", "complex") and fill == "values" and info.exact_values:
        p = info.significant_bits
        comps = numel * info.components
        k = (_raw(seed, key, comps) >> np.uint64(64 - p)).astype(np.int64) - (1 << (p - 1))
        values = k.astype(np.float64) * 2.0 ** -(p - 1)
        if info.kind == "complex":  # components of exactly the complex dtype's half size
            component = {2: (np.float16, torch.float16), 4: (np.float32, torch.float32), 8: (np.float64, torch.float64)}
            np_type, torch_type = component[info.component_size]
            return _from_bytes(values.astype(np_type).tobytes(), torch_type).view(dtype).reshape(shape)
        wide = np.float64 if info.mbits > 23 else np.float32
        t = _from_bytes(values.astype(wide).tobytes(), torch.float64 if wide is np.float64 else torch.float32)
        return t.to(dtype).reshape(shape)
    nbytes = numel * info.itemsize
    raw = bytearray(_raw(seed, key, -(-nbytes // 8)).tobytes()[:nbytes])
    if info.kind in ("float", "complex") and fill == "bits":
        size = info.component_size
        for i, pattern in enumerate(_special_patterns(info)[: numel * info.components]):
            raw[i * size : (i + 1) * size] = pattern.to_bytes(size, "little")
    return _from_bytes(bytes(raw), dtype).reshape(shape)


def _from_bytes(data: bytes, dtype: torch.dtype) -> torch.Tensor:
    # frombuffer, not from_numpy: torch 2.0 wheels cannot see numpy 2, bytes always work.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype)


def flipped(t: torch.Tensor) -> torch.Tensor:
    """Every byte changed: a load target that cannot pass for the real values by chance."""
    if t.dtype == torch.bool:
        return t.logical_not()
    flat = t.reshape(-1).view(torch.uint8).bitwise_not()
    return flat.view(t.dtype).reshape(t.shape)


# --------------------------------------------------------------------------- modules


def _call(module: nn.Module, x: Any) -> Any:
    if x is None:
        return None
    return module(*x) if isinstance(x, tuple) else module(x)


class Bundle(nn.ModuleDict):
    """The root and every "dict" node: each child runs on its own input."""

    # Heterogeneous inputs cannot be typed for TorchScript; scripting still compiles every child.
    @torch.jit.unused
    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {name: _call(child, inputs[name]) for name, child in self.items() if name in inputs}


class BundleList(nn.ModuleList):
    """A "list" node: child i runs on input i."""

    @torch.jit.unused
    def forward(self, inputs: list[Any]) -> list[Any]:
        return [_call(child, x) for child, x in zip(self, inputs, strict=True)]


class TensorBag(nn.Module):
    """Custom parameters and buffers: persistent or not, 0-d, zero-size, None, views, layouts."""

    def __init__(self, tensors: list[dict[str, Any]], device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.views: list[str] = []
        for t in tensors:
            name = t["name"]
            if t.get("none"):
                self.register_buffer(name, None, persistent=t.get("persistent", True))
                continue
            if "view_of" in t:
                base = getattr(self, t["view_of"]).detach()
                self.register_buffer(name, _view(base, t["view"]), persistent=t.get("persistent", True))
                self.views.append(name)
                continue
            value = _laid_out(tuple(t["shape"]), dtypes.usable_dtype(t["dtype"]), t.get("layout", "contiguous"), device)
            if t["role"] == "parameter":
                grad = value.dtype.is_floating_point or value.dtype.is_complex
                setattr(self, name, nn.Parameter(value, requires_grad=grad))
            else:
                self.register_buffer(name, value, persistent=t.get("persistent", True))

    def forward(self) -> None:  # holds state only
        return None


def _laid_out(shape: tuple[int, ...], dtype: torch.dtype, layout: str, device: torch.device | str) -> torch.Tensor:
    """A zero tensor of ``shape`` whose memory layout is ``layout``."""
    if layout == "transposed":
        return torch.zeros(shape[::-1], dtype=dtype, device=device).permute(*reversed(range(len(shape))))
    if layout == "strided":
        # Every other row of a twice-as-long storage: the storage is larger than the tensor.
        return torch.zeros((shape[0] * 2, *shape[1:]), dtype=dtype, device=device)[::2]
    t = torch.zeros(shape, dtype=dtype, device=device)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def _view(base: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "alias":
        return base.view(base.shape)
    if kind == "offset":
        return base.reshape(-1)[1:] if base.is_contiguous() and base.numel() > 1 else base.view(base.shape)
    return base.t() if base.dim() == 2 else base.view(base.shape)


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class LayerKind:
    """How to build one torch layer from its kwargs, and the input its forward takes."""

    cls: Callable[..., nn.Module]
    example_input: Callable[[dict[str, Any], InputMaker], Any]
    factory_kwargs: bool = True


@dataclass
class InputMaker:
    """Draws example inputs deterministically for one layer."""

    dtype: str
    seed: int
    key: str
    _count: int = field(default=0)

    def floats(self, *shape: int) -> torch.Tensor:
        self._count += 1
        return random_tensor(shape, self.dtype, "values", self.seed, f"{self.key}#{self._count}")

    def indices(self, high: int, *shape: int) -> torch.Tensor:
        self._count += 1
        raw = _raw(self.seed, f"{self.key}#{self._count}", math.prod(shape)) % np.uint64(max(high, 1))
        return _from_bytes(raw.astype("<i8").tobytes(), torch.int64).reshape(shape)


LAYERS: dict[str, LayerKind] = {
    "Linear": LayerKind(nn.Linear, lambda a, m: m.floats(BATCH, a["in_features"])),
    "Conv1d": LayerKind(nn.Conv1d, lambda a, m: m.floats(BATCH, a["in_channels"], 8)),
    "Conv2d": LayerKind(nn.Conv2d, lambda a, m: m.floats(BATCH, a["in_channels"], 6, 6)),
    "Conv3d": LayerKind(nn.Conv3d, lambda a, m: m.floats(BATCH, a["in_channels"], 4, 4, 4)),
    "ConvTranspose2d": LayerKind(nn.ConvTranspose2d, lambda a, m: m.floats(BATCH, a["in_channels"], 4, 4)),
    "BatchNorm1d": LayerKind(nn.BatchNorm1d, lambda a, m: m.floats(BATCH, a["num_features"], 5)),
    "BatchNorm2d": LayerKind(nn.BatchNorm2d, lambda a, m: m.floats(BATCH, a["num_features"], 3, 3)),
    "LayerNorm": LayerKind(nn.LayerNorm, lambda a, m: m.floats(BATCH, *a["normalized_shape"])),
    "GroupNorm": LayerKind(nn.GroupNorm, lambda a, m: m.floats(BATCH, a["num_channels"], 4)),
    "Embedding": LayerKind(nn.Embedding, lambda a, m: m.indices(a["num_embeddings"], BATCH, 5)),
    "EmbeddingBag": LayerKind(nn.EmbeddingBag, lambda a, m: m.indices(a["num_embeddings"], BATCH, 4)),
    "LSTM": LayerKind(nn.LSTM, lambda a, m: m.floats(BATCH, 3, a["input_size"])),
    "GRU": LayerKind(nn.GRU, lambda a, m: m.floats(BATCH, 3, a["input_size"])),
    "MultiheadAttention": LayerKind(
        nn.MultiheadAttention,
        lambda a, m: (
            m.floats(BATCH, 3, a["embed_dim"]),
            m.floats(BATCH, 4, a.get("kdim") or a["embed_dim"]),
            m.floats(BATCH, 4, a.get("vdim") or a["embed_dim"]),
        ),
    ),
    "TransformerEncoderLayer": LayerKind(nn.TransformerEncoderLayer, lambda a, m: m.floats(BATCH, 3, a["d_model"])),
    "PReLU": LayerKind(nn.PReLU, lambda a, m: m.floats(BATCH, a.get("num_parameters", 1), 3)),
    "Dropout": LayerKind(nn.Dropout, lambda a, m: m.floats(BATCH, 4), factory_kwargs=False),
}


# --------------------------------------------------------------------------- build


def build(spec: ModelSpec, *, device: str | torch.device = "cpu", perturb: bool = False) -> nn.Module:
    """Build ``spec`` as an ``nn.Module`` in eval mode, every tensor filled deterministically.

    ``device="meta"`` builds shapes and dtypes only. ``perturb=True`` gives every persistent
    tensor (every state-dict entry) other bytes than the spec's: a fresh load target that a
    load must overwrite completely to pass. Non-persistent buffers keep the spec's values,
    since no checkpoint carries them.
    """
    device = torch.device(device)
    on_meta = device.type == "meta"
    if on_meta:
        return _meta_copy(spec)
    return _build(spec, device, perturb)


# Meta builds by spec id: modules initialise meta tensors through torch's Python reference
# kernels (spectral_norm's power method, normal_), so a meta build costs several CPU builds, and
# a round trip asks for one per format.
_META: collections.OrderedDict[str, nn.Module] = collections.OrderedDict()
# The values of a spec's tensors by spec id and perturb: a round trip builds the spec ~30 times (a
# perturbed load target for each loading check), and drawing the values was most of each build.
_VALUES: collections.OrderedDict[tuple[str, bool], dict[tuple[Any, ...], torch.Tensor]] = collections.OrderedDict()
_T = TypeVar("_T")


def _recent(cache: collections.OrderedDict[Any, _T], key: Any, make: Callable[[], _T], keep: int = 64) -> _T:
    """``cache[key]``, made if absent; the ``keep`` most recently used entries stay. 64: `verify`
    meets the committed corpora's 43 specs once per corpus (8 of them), and a generated spec's
    tensors are small (all 43 together: a few MB)."""
    value = cache.pop(key) if key in cache else make()
    cache[key] = value
    while len(cache) > keep:
        cache.popitem(last=False)
    return value


def _meta_copy(spec: ModelSpec) -> nn.Module:
    """A copy of the spec's meta build: an untouched meta module is the same after deepcopy."""
    template = _recent(_META, spec.id, lambda: _build(spec, torch.device("meta"), False))
    try:
        return copy.deepcopy(template)
    except Exception:  # a module deepcopy cannot copy (old weight_norm hooks hold a non-leaf tensor)
        return _build(spec, torch.device("meta"), False)


def _build(spec: ModelSpec, device: torch.device, perturb: bool) -> nn.Module:
    on_meta = device.type == "meta"
    model = _build_node(spec.root, "spec.root", "meta" if on_meta else "cpu")
    for i, tie in enumerate(spec.ties):
        _apply_tie(model, tie, f"spec.ties[{i}]")
    for i, p in enumerate(spec.parametrizations):
        _apply_parametrization(model, p, f"spec.parametrizations[{i}]")
    if not on_meta:
        _fill(model, spec, perturb)
        if device.type != "cpu":
            model = model.to(device)
    return model.eval()


def _build_node(node: dict[str, Any], where: str, device: str) -> nn.Module:
    kind = node["kind"]
    if kind == "dict":
        return Bundle({n: _build_node(c, f"{where}.children.{n}", device) for n, c in node["children"].items()})
    if kind == "list":
        return BundleList([_build_node(c, f"{where}.children[{i}]", device) for i, c in enumerate(node["children"])])
    if kind == "sequential":
        return nn.Sequential(
            *[_build_node(c, f"{where}.children[{i}]", device) for i, c in enumerate(node["children"])]
        )
    if kind == "tensors":
        return TensorBag(node["tensors"], device)
    layer = LAYERS[kind]
    kwargs = dict(node["args"])
    if layer.factory_kwargs:
        kwargs.update(dtype=dtypes.usable_dtype(node.get("dtype", "float32")), device=device)
    try:
        return layer.cls(**kwargs)
    except Exception as exc:
        raise SpecError(f"{where}: {kind}(**{node['args']}) failed: {type(exc).__name__}: {exc}") from exc


def _apply_tie(model: nn.Module, tie: Mapping[str, str], where: str) -> None:
    try:
        source = model.get_parameter(tie["source"])
        target = model.get_parameter(tie["target"])
    except AttributeError as exc:
        raise SpecError(f"{where}: {exc}") from exc
    if source.shape != target.shape or source.dtype != target.dtype:
        raise SpecError(
            f"{where}: cannot tie {tie['source']} {tuple(source.shape)} {source.dtype} "
            f"to {tie['target']} {tuple(target.shape)} {target.dtype}"
        )
    owner, _, attr = tie["target"].rpartition(".")
    setattr(model.get_submodule(owner), attr, source)


def _apply_parametrization(model: nn.Module, p: Mapping[str, str], where: str) -> None:
    parametrizations = torch.nn.utils.parametrizations
    register = getattr(parametrizations, p["kind"], None)
    if register is None:
        raise SpecError(f"{where}.kind: torch {torch.__version__} has no parametrizations.{p['kind']}")
    try:
        register(model.get_submodule(p["module"]), p["tensor"])
    except Exception as exc:
        raise SpecError(f"{where}: {p['kind']} on {p['module']}.{p['tensor']} failed: {exc}") from exc


def _fill(model: nn.Module, spec: ModelSpec, perturb: bool) -> None:
    values = _recent(_VALUES, (spec.id, perturb), dict)
    seen: set[int] = set()
    with torch.no_grad():
        for prefix, module in model.named_modules():
            skip = set(module.views) if isinstance(module, TensorBag) else set()
            persistent_buffers = set(module._buffers) - set(module._non_persistent_buffers_set)
            owned = [(n, t, True) for n, t in module._parameters.items()]
            owned += [(n, t, n in persistent_buffers) for n, t in module._buffers.items() if n not in skip]
            for name, tensor, persistent in owned:
                if tensor is None or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                key = f"{prefix}.{name}" if prefix else name
                which = (key, tuple(tensor.shape), tensor.dtype, persistent)
                value = values.get(which)
                if value is None:
                    value = random_tensor(which[1], dtypes.name_of(tensor.dtype), spec.fill, spec.seed, key)
                    values[which] = flipped(value) if perturb and persistent else value
                tensor.copy_(values[which])


def example_inputs(spec: ModelSpec) -> dict[str, Any]:
    """The deterministic CPU input of the built model's forward (see `Bundle.forward`)."""
    inputs = _node_input(spec.root, spec.seed, "input")
    assert isinstance(inputs, dict)
    return inputs


def _node_input(node: dict[str, Any], seed: int, key: str) -> Any:
    kind = node["kind"]
    if kind == "dict":
        found = {n: _node_input(c, seed, f"{key}.{n}") for n, c in node["children"].items()}
        return {n: x for n, x in found.items() if x is not None}
    if kind == "list":
        return [_node_input(c, seed, f"{key}.{i}") for i, c in enumerate(node["children"])]
    if kind == "sequential":
        if not node["children"]:
            return None
        if "input" in node:  # a chain's input is its own, not its first layer's default
            return InputMaker(node["children"][0].get("dtype", "float32"), seed, key).floats(BATCH, *node["input"])
        return _node_input(node["children"][0], seed, f"{key}.0")
    if kind == "tensors":
        return None
    maker = InputMaker(node.get("dtype", "float32"), seed, key)
    return LAYERS[kind].example_input(node["args"], maker)
