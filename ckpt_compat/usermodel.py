"""A user's own model as a round-trip subject: a factory (or a module) and its example inputs.

`UserModel` is what `ckpt-compat check --model`, the ``checkpoint_roundtrip`` pytest fixture and
`check FILE --model` check, through the same `roundtrip.check_spec` as the generated specs.

A fresh load target is what a user's loading code gets: the factory called again, under another
seed, so every tensor that no checkpoint carries (a plain tensor attribute, a non-persistent
buffer drawn at random) differs as it would in a new process; then every state-dict entry is
given other bytes, so a load that leaves one alone cannot pass by chance.
"""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckpt_compat.loading import Call
from ckpt_compat.specs import flipped

USER_MODEL_FORMAT = "ckpt-compat/user-model/1"


class UserModelError(ValueError):
    """A factory, module or inputs that cannot be used; the message names the argument and value."""


ModelSource = nn.Module | Callable[[], nn.Module]


class UserModel:
    """A user's model checked like a spec. ``source`` is a zero-argument factory (preferred: a
    fresh model is then really fresh) or a module (copied; state outside its state dict then
    cannot differ). ``inputs``: a tensor, a tuple of positional arguments, a dict of keyword
    arguments, a `loading.Call`, or a zero-argument callable returning one of those; None: the
    forward and the formats that trace (torch.export, ONNX, TorchScript trace) are not checked."""

    def __init__(
        self,
        source: ModelSource,
        inputs: Any = None,
        *,
        name: str | None = None,
        seed: int = 0,
        inputs_name: str | None = None,
    ) -> None:
        if not isinstance(source, nn.Module) and not callable(source):
            raise UserModelError(f"model={source!r}: expected an nn.Module or a zero-argument factory returning one")
        self.source = source
        self.name = name or _name_of(source)
        self.seed = seed
        self.inputs_name = inputs_name  # the MODULE:NAME of the inputs, for a corpus manifest
        raw = inputs() if callable(inputs) and not isinstance(inputs, (nn.Module, torch.Tensor)) else inputs
        self.call = None if raw is None else Call.of(raw)

    @property
    def id(self) -> str:
        return self.name

    def to_json(self) -> dict[str, Any]:
        """What a corpus manifest records to rebuild the model elsewhere (see `from_json`)."""
        return {"format": USER_MODEL_FORMAT, "model": self.name, "inputs": self.inputs_name, "seed": self.seed}

    def inputs(self) -> Any:
        # An empty tree: no block runs, and tracing formats say their model takes no input.
        return {} if self.call is None else self.call

    def model(self, device: str | torch.device = "cpu", *, perturb: bool = False) -> nn.Module:
        device = torch.device(device)
        if device.type == "meta":
            return self._meta()
        model = self._made(self.seed + 1 if perturb else self.seed)
        if perturb:
            _perturb_state(model)
        return model.to(device).eval()

    def _made(self, seed: int) -> nn.Module:
        if isinstance(self.source, nn.Module):
            return copy.deepcopy(self.source)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = self.source()
            except (Exception, SystemExit) as exc:  # sys.exit() in a factory must not end a check as passed
                raise UserModelError(f"model={self.name}: the factory raised {_raised(exc)}") from exc
        if not isinstance(model, nn.Module):
            raise UserModelError(f"model={self.name}: the factory returned {type(model).__name__}, not an nn.Module")
        return model

    def _meta(self) -> nn.Module:
        if not isinstance(self.source, nn.Module):
            try:  # torch.device as a context manager arrived in 2.0; a factory may still refuse meta
                with torch.device("meta"):
                    return self._made(self.seed).eval()
            except UserModelError:
                raise
            except Exception:
                pass
        return self._made(self.seed).to("meta").eval()

    def check_forward(self, built: nn.Module | None = None) -> None:
        """The forward must run on the example inputs before any save, or every cell would compare
        one error with another and pass having checked no output: raise `UserModelError` with
        what it raised (inputs of the wrong shape, dtype or device; a model that needs CUDA).
        ``built``: a build under the seed already at hand (`check_deterministic`'s), run in eval mode."""
        from ckpt_compat.loading import NoForward, forward_outputs

        if self.call is None:
            return
        model = (built if built is not None else self._made(self.seed)).eval()
        for output in forward_outputs(model, self.call).values():
            if isinstance(output, NoForward):
                raise UserModelError(
                    f"inputs={self.inputs_name or 'the example inputs'}: the model's forward raises on them on the "
                    f"CPU, before any save ({output.error.type}: {' '.join(output.error.message.split())[:300]}); "
                    "give inputs it runs on, or none to check the state dict only"
                )

    def check_deterministic(self) -> nn.Module:
        """Two builds under the same seed must agree, or no saved file could be judged against a
        rebuilt model: raise `UserModelError` naming the first tensor that differs. Returns one of
        them (for `check_forward`: a large model is built once less)."""
        first = self._made(self.seed)
        a, b = _tensors(first), _tensors(self._made(self.seed))
        if list(a) != list(b):
            raise UserModelError(f"model={self.name}: two builds have other tensors: {sorted(set(a) ^ set(b))[:5]}")
        for key, x in a.items():
            y = b[key]
            if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(_bits(x), _bits(y)):
                raise UserModelError(
                    f"model={self.name}: two builds under torch.manual_seed({self.seed}) differ at {key!r}; "
                    "seed every other random source in the factory (numpy, random) or load fixed weights"
                )
        return first


def _name_of(source: Any) -> str:
    target = type(source) if isinstance(source, nn.Module) else source
    module = getattr(target, "__module__", None) or "?"
    return f"{module}:{getattr(target, '__qualname__', type(target).__name__)}"


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    from ckpt_compat.unsaved import non_persistent_buffers, plain_tensors

    return {**model.state_dict(), **non_persistent_buffers(model), **plain_tensors(model)}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _perturb_state(model: nn.Module) -> None:
    """Other bytes in every state-dict entry, each storage changed once (tied entries share one)."""
    seen: set[tuple[int, int]] = set()
    with torch.no_grad():
        for tensor in model.state_dict(keep_vars=True).values():
            if not isinstance(tensor, torch.Tensor) or tensor.is_meta or not tensor.numel():
                continue
            key = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()))
            if key in seen:
                continue
            seen.add(key)
            tensor.copy_(flipped(tensor.detach().contiguous()))


def _raised(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: it called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def import_object(reference: str, argument: str) -> Any:
    """``pkg.module:attr`` (or ``path/to/file.py:attr``), imported as the user's own code, with the
    current directory importable as pytest and uvicorn make it. Errors name the argument."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise UserModelError(f"{argument} {reference!r}: expected MODULE:NAME, e.g. mypkg.models:build_model")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise UserModelError(f"{argument} {reference!r}: no file {path}")
        sys.path.insert(0, str(path.resolve().parent))
        module_name = path.stem
    elif "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:
        raise UserModelError(
            f"{argument} {reference!r}: cannot import {module_name}: {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UserModelError(f"{argument} {reference!r}: {module_name} has no attribute {attr!r}") from None
    return obj


def from_references(model: str, inputs: str | None = None) -> UserModel:
    """The `UserModel` of ``--model MODULE:FACTORY [--inputs MODULE:NAME]``."""
    source = import_object(model, "--model")
    if isinstance(source, type) and issubclass(source, nn.Module):
        pass  # a class with no required arguments is its own factory
    elif not isinstance(source, nn.Module) and not callable(source):
        raise UserModelError(f"--model {model!r}: {type(source).__name__} is neither an nn.Module nor a factory")
    example = None if inputs is None else import_object(inputs, "--inputs")
    try:
        return UserModel(source, example, name=model, inputs_name=inputs)
    except UserModelError:
        raise
    except (Exception, SystemExit) as exc:
        raise UserModelError(f"--inputs {inputs!r}: calling it raised {_raised(exc)}") from exc


def is_user_model(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == USER_MODEL_FORMAT


def from_json(data: dict[str, Any]) -> UserModel:
    """The `UserModel` a manifest names. This imports and calls code the manifest names: only for
    a corpus that is trusted (written here, or vouched for with --trust)."""
    model, inputs = data.get("model"), data.get("inputs")
    if not isinstance(model, str) or not (inputs is None or isinstance(inputs, str)):
        raise UserModelError(f"a user-model entry names its model as MODULE:NAME, got {data!r}")
    return from_references(model, inputs)
