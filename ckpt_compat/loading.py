"""``load_state_dict`` checks: strict, non-strict (exact missing / unexpected sets), shape
mismatches, ``assign=True`` onto a meta-device model, and the loaded model's forward output.

Every check returns a list of `Difference` (kind ``load_state_dict`` for loading behaviour,
the comparison kinds for values) instead of raising, so one cell reports all of them.
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ckpt_compat.compare import compare_state_dicts, compare_values
from ckpt_compat.differences import Difference
from ckpt_compat.errorinfo import ErrorInfo

EXTRA_KEY = "ckpt_compat_extra"


@functools.cache
def supports_assign() -> bool:
    """``load_state_dict(assign=True)`` arrived in torch 2.1."""
    return "assign" in inspect.signature(nn.Module.load_state_dict).parameters


def with_metadata(state: Mapping[str, Any], items: Any) -> OrderedDict[str, Any]:
    """A new state dict that keeps the original's ``_metadata`` (module versions matter to loads)."""
    out: OrderedDict[str, Any] = OrderedDict(items)
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def strict_load(
    model: nn.Module, state: Mapping[str, Any], expected: Mapping[str, Any], *, strides: bool = True
) -> list[Difference]:
    """Strict load into ``model`` (whose values differ), then compare its state with ``expected``."""
    where = ("load_state_dict(strict=True)",)
    try:
        result = model.load_state_dict(state, strict=True)
    except Exception as exc:
        return [_raised(where, exc)]
    out = []
    if result.missing_keys or result.unexpected_keys:
        out.append(
            Difference(
                "load_state_dict", where, f"returned missing={result.missing_keys} unexpected={result.unexpected_keys}"
            )
        )
    return out + compare_state_dicts(expected, model.state_dict(), strides=strides, root="loaded_model.state_dict")


def _raised(where: tuple[str, ...], exc: BaseException, prefix: str = "raised ") -> Difference:
    error = ErrorInfo.of(exc)
    return Difference("load_state_dict", where, f"{prefix}{error}", error=error)


def _droppable(keys: list[str]) -> list[str]:
    # BatchNorm fills in a missing num_batches_tracked when the state dict carries no version
    # metadata (safetensors files never do); that documented back-compat path would hide the key
    # from missing_keys, so those keys are not used to test key reporting.
    return [k for k in keys if not k.endswith("num_batches_tracked")]


def non_strict_loads(model: nn.Module, state: Mapping[str, Any]) -> list[Difference]:
    """Drop, rename, add and reshape keys; the reported sets must be exactly what was done."""
    keys = list(state)
    candidates = _droppable(keys)
    out: list[Difference] = []

    def expect(label: str, changed: Mapping[str, Any], missing: set[str], unexpected: set[str]) -> None:
        where = (f"load_state_dict(strict=False, {label})",)
        try:
            result = model.load_state_dict(changed, strict=False)
        except Exception as exc:
            out.append(_raised(where, exc))
            return
        if set(result.missing_keys) != missing:
            out.append(
                Difference("missing", where, f"missing_keys {sorted(result.missing_keys)}, expected {sorted(missing)}")
            )
        if set(result.unexpected_keys) != unexpected:
            out.append(
                Difference(
                    "unexpected",
                    where,
                    f"unexpected_keys {sorted(result.unexpected_keys)}, expected {sorted(unexpected)}",
                )
            )
        if missing or unexpected:
            try:
                model.load_state_dict(changed, strict=True)
            except RuntimeError:
                pass
            else:
                out.append(Difference("load_state_dict", (where[0].replace("False", "True"),), "did not raise"))

    if candidates:
        dropped = {candidates[0], candidates[-1]}
        expect(
            f"dropped={sorted(dropped)}",
            with_metadata(state, ((k, v) for k, v in state.items() if k not in dropped)),
            dropped,
            set(),
        )
        renamed = candidates[len(candidates) // 2]
        new_name = renamed + "_renamed"
        expect(
            f"renamed={renamed!r}",
            with_metadata(state, ((new_name if k == renamed else k, v) for k, v in state.items())),
            {renamed},
            {new_name},
        )
    prefix = keys[0].rpartition(".")[0] if keys else ""
    extra = {EXTRA_KEY} | ({f"{prefix}.{EXTRA_KEY}"} if prefix else set())
    expect(
        f"extra={sorted(extra)}",
        with_metadata(state, [*state.items(), *((k, torch.zeros(1)) for k in sorted(extra))]),
        set(),
        extra,
    )
    if keys:
        target = keys[0]
        where = (f"load_state_dict(strict=False, reshaped={target!r})",)
        value = state[target]
        # Two extra dims: a 0-d parameter would accept a 1-d tensor through a 0.3-era compat path.
        wrong = torch.zeros((*value.shape, 2, 2), dtype=value.dtype, device="meta" if value.is_meta else "cpu")
        try:
            model.load_state_dict(
                with_metadata(state, ((k, wrong if k == target else v) for k, v in state.items())), strict=False
            )
        except RuntimeError as exc:
            if "size mismatch" not in str(exc):
                out.append(_raised(where, exc, "raised without saying 'size mismatch': "))
        else:
            out.append(Difference("load_state_dict", where, "a shape mismatch did not raise"))
    return out


def assign_onto_meta(
    meta_model: nn.Module, state: Mapping[str, Any], expected: Mapping[str, Any], *, aliasing: bool = True
) -> list[Difference]:
    """``load_state_dict(assign=True)`` into a model built on meta: every persistent tensor must
    become the loaded one, bit for bit, with ties kept through shared storage."""
    where = "load_state_dict(assign=True) on meta"
    try:
        meta_model.load_state_dict(state, strict=True, assign=True)
    except Exception as exc:
        return [_raised((where,), exc, "")]
    after = meta_model.state_dict()
    out = [
        Difference("load_state_dict", (where, k), "still on the meta device")
        for k, v in after.items()
        if v.is_meta and not expected[k].is_meta
    ]
    return out + compare_state_dicts(expected, after, root="assigned.state_dict", aliasing=aliasing)


@dataclass(frozen=True)
class NoForward:
    """The block could not run here (e.g. an op missing for a dtype on CPU): what it raised."""

    error: ErrorInfo


@dataclass(frozen=True)
class Call:
    """The example input of a whole model (a user's, not a spec's): ``model(*args, **kwargs)``.
    A spec's input is a tree with one input per block; a `Call` is one input for the root."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, inputs: Any) -> Call:
        """A tensor or other value is one positional argument, a tuple is the positional
        arguments, a dict the keyword arguments (as ``model(**batch)`` takes a tokenizer's batch)."""
        if isinstance(inputs, Call):
            return inputs
        if isinstance(inputs, tuple):
            return cls(inputs)
        if isinstance(inputs, Mapping):
            return cls((), dict(inputs))
        return cls((inputs,))

    def tensors(self) -> list[torch.Tensor]:
        """The tensors of the call in order (positional, then keyword): a flattened program's feeds."""
        from torch.utils._pytree import tree_flatten  # tree_leaves is newer than torch 2.0

        leaves, _ = tree_flatten((list(self.args), dict(self.kwargs)))
        return [t for t in leaves if isinstance(t, torch.Tensor)]

    def map(self, fn: Any) -> Call:
        """The call with ``fn`` applied to each tensor (moving it to a device)."""
        from torch.utils._pytree import tree_map

        def one(x: Any) -> Any:
            return fn(x) if isinstance(x, torch.Tensor) else x

        return Call(tuple(tree_map(one, list(self.args))), dict(tree_map(one, dict(self.kwargs))))


def invoke(block: Any, x: Any) -> Any:
    """Run ``block`` on its example input: a `Call`, a tuple of arguments or one argument."""
    if isinstance(x, Call):
        return block(*x.args, **x.kwargs)
    return block(*x) if isinstance(x, tuple) else block(x)


def submodule(model: Any, path: str) -> Any:
    """The block at a dotted path; the model itself at "" (a whole model's `Call`)."""
    for name in path.split(".") if path else ():
        model = getattr(model, name)
    return model


def leaf_blocks(inputs: Any) -> list[tuple[str, Any]]:
    """(dotted path, input) of every block that runs on its own input: the containers' inputs
    are dicts and lists of their children's, a block's input is a tensor or a tuple of tensors.
    A `Call` is the whole model's input: one block, the root, at path ""."""
    if isinstance(inputs, Call):
        return [("", inputs)]
    found: list[tuple[str, Any]] = []

    def walk(x: Any, path: str) -> None:
        if isinstance(x, dict):
            for name, child in x.items():
                walk(child, f"{path}.{name}" if path else name)
        elif isinstance(x, list):
            for i, child in enumerate(x):
                if child is not None:
                    walk(child, f"{path}.{i}" if path else str(i))
        else:
            found.append((path, x))

    walk(inputs, "")
    return found


def forward_outputs(model: nn.Module, inputs: Any) -> dict[str, Any]:
    """Each block's output on its input, by dotted path, or `NoForward` with the reason it cannot
    run. Containers are walked, not called, so a TorchScript archive (whose container forwards
    cannot be compiled) is checked block by block like any other module."""
    outputs: dict[str, Any] = {}
    with torch.no_grad():
        for path, x in leaf_blocks(inputs):
            try:
                outputs[path] = invoke(submodule(model, path), x)
            except Exception as exc:
                outputs[path] = NoForward(ErrorInfo.of(exc))
    return outputs


def float64_output(model: nn.Module, inputs: Any, path: str) -> Any:
    """The output of the block at ``path`` with it and its input in float64 (complex ones in
    complex128): the value no rounding step of a lower precision has touched, to tell which of two
    runtimes' results is the further off (`compare.compare_close`). Raises where the block cannot
    run so."""
    import copy

    def wide(t: torch.Tensor) -> torch.Tensor:
        if t.is_complex():
            return t.to(torch.complex128)
        return t.to(torch.float64) if t.is_floating_point() else t

    def cast(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return wide(x)
        if isinstance(x, Call):
            return Call(tuple(cast(a) for a in x.args), {k: cast(v) for k, v in x.kwargs.items()})
        if isinstance(x, (tuple, list)):
            return type(x)(cast(v) for v in x)
        if isinstance(x, Mapping):
            return {k: cast(v) for k, v in x.items()}
        return x

    # Module.to(float64) would cast complex parameters to float64 too; _apply casts each as asked,
    # in place on a shared Parameter, so ties stay ties.
    block = copy.deepcopy(submodule(model, path))._apply(wide)
    with torch.no_grad():
        return invoke(block, cast(dict(leaf_blocks(inputs))[path]))


def compare_forward(
    reference: Mapping[str, Any],
    model: nn.Module,
    inputs: Any,
    block_types: Mapping[str, str] | None = None,
) -> tuple[list[Difference], list[str]]:
    """Differences between ``model``'s outputs and ``reference``, and notes on blocks not run.
    With ``block_types`` each difference's detail starts with the block's class, ``[LSTM] ...``."""
    notes = [f"forward of {k!r} not checked: {v.error}" for k, v in reference.items() if isinstance(v, NoForward)]
    got = {k: v for k, v in forward_outputs(model, inputs).items() if not isinstance(reference.get(k), NoForward)}
    differences: list[Difference] = []
    for name, value in got.items():
        block = (block_types or {}).get(name)
        if isinstance(value, NoForward):
            found = [Difference("raised", ("forward", name), f"raised after loading: {value.error}", error=value.error)]
        else:
            found = compare_values(reference[name], value, ("forward", name))
        differences += [d.with_block(block) if block else d for d in found]
    return differences, notes
