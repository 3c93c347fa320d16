"""The interface every save format implements: small and uniform, one adapter per format."""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from torch import nn

from ckpt_compat.atomic import atomic_path
from ckpt_compat.devices import MapLocation


class Unsupported(Exception):
    """The format refuses this model, dtype or option by design; the message says why."""


class Untrusted(Exception):
    """Loading would unpickle arbitrary code from a file nobody vouched for."""


@dataclass
class Loaded:
    """What a load returns: always a state dict; the module too for whole-model formats; for
    programs that can only be run whole (torch.export), ``call`` and the loaded constants."""

    state_dict: Mapping[str, Any]
    module: nn.Module | None = None
    hidden: Mapping[str, Any] | None = None  # non-persistent buffers as loaded, where the format keeps them
    call: Callable[[Any], Any] | None = None
    # Keys the format does not keep under their name (ONNX folds some), with why: listed, not failed.
    absent: Mapping[str, str] | None = None
    # ``call`` returns the outputs flattened (ONNX) rather than nested like the model's forward.
    flat_outputs: bool = False
    # Set when the load ran a loader that can execute code although the options asked for one
    # that cannot (torch <= 2.5 hands TorchScript archives to torch.jit.load under
    # weights_only=True): what happened, in words. The cell's outcome is then `unsafe`.
    unsafe: str | None = None


ModelFactory = Callable[[], nn.Module]


class Format(abc.ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    suffix: ClassVar[str]
    holds: ClassVar[Literal["state_dict", "module"]] = "state_dict"
    # What a round trip promises to keep beyond bytes, dtype and shape.
    preserves_strides: ClassVar[bool] = True
    preserves_aliasing: ClassVar[bool] = True
    # Which spellings of map_location the loader accepts (see devices.MAP_LOCATION_KINDS).
    map_location_kinds: ClassVar[tuple[str, ...]] = ("str", "device", "dict", "callable")
    deprecated: ClassVar[str | None] = None
    caveat: ClassVar[str | None] = None  # a limit of its documented promise, shown in reports
    # Costly per model (compilation, export, processes): `run` checks it on a sample of examples.
    heavy: ClassVar[bool] = False
    # Can hold a whole training checkpoint (a dict of state dicts, numbers, strings, RNG states).
    holds_training_state: ClassVar[bool] = False
    # (rtol, atol) for outputs of a program run by another runtime (ONNX Runtime); None: bitwise.
    output_tolerance: ClassVar[tuple[float, float] | None] = None
    # Why the format benchmarks leave it out (the same bytes as another format, a program with no
    # weights of its own to time); None: `ckpt_compat.bench` measures its save and load.
    bench_note: ClassVar[str | None] = None

    def why_unavailable(self) -> str | None:
        """None when this torch and the installed packages can read the format, else the reason."""
        return None

    def why_unable_to_save(self) -> str | None:
        """None when they can also write it (a reader may be older than the writer needs)."""
        return self.why_unavailable()

    def why_not_usable(self) -> str | None:
        """Why a round trip (save, then load) cannot run here, or None."""
        return self.why_unavailable() or self.why_unable_to_save()

    def load_variants(self) -> list[dict[str, Any]]:
        """The load options worth checking, e.g. ``[{"weights_only": True}, {..., "mmap": True}]``."""
        return [{}]

    def save(self, model: nn.Module, path: Path, inputs: Any = None) -> None:
        """Write ``model`` (or its state dict) to ``path`` atomically. ``inputs`` is the model's
        example input (see `specs.example_inputs`), for formats that trace or export."""
        with atomic_path(path) as tmp:
            self._save(model, tmp, inputs)

    @abc.abstractmethod
    def _save(self, model: nn.Module, path: Path, inputs: Any) -> None: ...

    def save_object(self, obj: Any, path: Path) -> None:
        """Write an arbitrary checkpoint object (formats that `holds_training_state`), atomically."""
        raise Unsupported(f"{self.name} holds a model or its tensors only, not arbitrary objects")

    @abc.abstractmethod
    def load(
        self,
        path: Path,
        options: Mapping[str, Any],
        map_location: MapLocation,
        fresh_model: ModelFactory,
        *,
        trusted: bool,
    ) -> Loaded:
        """Load ``path``. ``fresh_model`` builds a load target for formats that need one;
        ``trusted`` says this run wrote the file (or the user vouched for it)."""


def require_state_dict(obj: Any, path: Path) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise TypeError(f"{path}: expected a state dict (str -> tensor), got {type(obj).__name__}")
    return obj


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(exc: BaseException, limit: int = 1200) -> str:
    """The exception as one line: torch puts the useful part of its errors on later lines. A long
    one keeps its start and its end, where runtimes put the reason (ONNX Runtime's "Could not
    find an implementation for Conv(11) node ... type='bfloat16'" comes after the node dump)."""
    text = " ".join(_ANSI.sub("", str(exc)).split())
    if len(text) > limit:
        half = (limit - 5) // 2
        text = f"{text[:half]} ... {text[-half:]}"
    return f"{type(exc).__name__}: {text}".strip()
