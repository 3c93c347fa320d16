"""Several objects in one file: a dict of state dicts and plain values, and several ``torch.save``
calls into one stream (read back with one ``torch.load`` each, in order)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ckpt_compat.atomic import atomic_path
from ckpt_compat.compare import compare_aliasing, compare_values
from ckpt_compat.devices import MapLocation
from ckpt_compat.differences import Difference
from ckpt_compat.formats import Format, Unsupported, Untrusted
from ckpt_compat.formats.torch_save import torch_load
from ckpt_compat.objects import compare_object_records
from ckpt_compat.results import Cell, CellResult, Endpoint, Outcome
from ckpt_compat.specs import ModelSpec, build

BUNDLE_SPECS = {
    "encoder": ModelSpec.from_json(
        {
            "seed": 71,
            "root": {
                "kind": "dict",
                "children": {
                    "emb": {"kind": "Embedding", "args": {"num_embeddings": 6, "embedding_dim": 4}, "dtype": "float32"},
                    "rnn": {
                        "kind": "GRU",
                        "args": {"input_size": 4, "hidden_size": 3, "batch_first": True},
                        "dtype": "float32",
                    },
                },
            },
        }
    ),
    "decoder": ModelSpec.from_json(
        {
            "seed": 72,
            "root": {
                "kind": "dict",
                "children": {
                    "fc": {"kind": "Linear", "args": {"in_features": 3, "out_features": 6}, "dtype": "bfloat16"},
                    "bn": {"kind": "BatchNorm1d", "args": {"num_features": 6}, "dtype": "float64"},
                },
            },
        }
    ),
}


def bundle() -> dict[str, Any]:
    """Two state dicts and every plain value a checkpoint dict holds."""
    return {
        **{name: dict(build(spec).state_dict()) for name, spec in BUNDLE_SPECS.items()},
        "step": 1234,
        "lr": 0.125,
        "loss": float("-0.0"),
        "name": "run-7 ✓",
        "tags": ["a", "b", 3, None],
        "shape": (2, 3),
        "none": None,
        "flag": True,
        "nested": {"milestones": [10, 20], "gamma": 0.5},
    }


def stream() -> list[Any]:
    """What several torch.save calls into one file write, in order."""
    return [build(BUNDLE_SPECS["encoder"]).state_dict()["emb.weight"], {"step": 3}, [torch.arange(5), "end"]]


class UserConfig:
    """A user's own class in a checkpoint, as training scripts store their config objects."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserConfig) and other.lr == self.lr

    __hash__ = None  # type: ignore[assignment]


def refused_objects() -> dict[str, Any]:
    """Objects real checkpoints hold that the weights_only unpickler refuses, by kind."""
    import argparse

    import numpy as np

    return {
        "numpy_array": np.arange(3, dtype=np.float32),
        "numpy_scalar": np.float64(0.5),
        "argparse_namespace": argparse.Namespace(lr=0.1, epochs=3),
        "user_class": UserConfig(0.1),
    }


def check_multi_object(formats: Iterable[Format], workdir: Path) -> list[CellResult]:
    here = Endpoint(torch.__version__, "cpu")
    results = []
    for fmt in formats:
        if not fmt.holds_training_state:
            continue  # the same formats that hold a training checkpoint hold arbitrary objects
        expected = bundle()
        path = workdir / f"bundle-{fmt.name}{fmt.suffix}"
        fmt.save_object(expected, path)
        for variant in fmt.load_variants():
            cell = Cell("bundle", fmt.name, here, here, {**variant, "check": "bundle"})
            load = functools.partial(_load_object, fmt, path, variant)
            results.append(_compare(cell, expected, load))
        results.append(_check_stream(fmt, workdir, here))
        for kind, obj in refused_objects().items():
            path = workdir / f"refused-{kind}-{fmt.name}{fmt.suffix}"
            fmt.save_object({"obj": obj}, path)
            for variant in fmt.load_variants():
                if variant.get("mmap"):
                    continue
                cell = Cell(f"refused-{kind}", fmt.name, here, here, {**variant, "check": "safe_unpickler"})
                load = functools.partial(_load_object, fmt, path, variant)
                results.append(_compare(cell, {"obj": obj}, load, plain=True))
    return results


def _load_object(fmt: Format, path: Path, options: Mapping[str, Any]) -> Mapping[str, Any]:
    cpu = MapLocation("str", "cpu", "cpu")
    return fmt.load(path, options, cpu, torch.nn.Module, trusted=True).state_dict


def _compare(cell: Cell, expected: Mapping[str, Any], load: Any, *, plain: bool = False) -> CellResult:
    try:
        loaded = load()
    except (Unsupported, Untrusted) as exc:
        return CellResult.failed(cell, Outcome.UNSUPPORTED, exc)
    except Exception as exc:
        return CellResult.failed(cell, Outcome.LOAD_ERROR, exc)
    if plain:  # numpy and Python objects: equal by value, loaded only with weights_only=False
        got = loaded.get("obj")
        same = _same(expected["obj"], got)
        differences = [] if same else [Difference("type", ("obj",), "a different value", actual=repr(got)[:200])]
        return CellResult.of(cell, differences, checks=("load", "values"))
    differences = compare_values(dict(expected), dict(loaded), ("bundle",))
    for name in BUNDLE_SPECS:
        if isinstance(loaded.get(name), Mapping):
            differences += compare_aliasing(expected[name], loaded[name], "bundle")
    return CellResult.of(cell, differences, checks=("load", "values"))


def _same(a: Any, b: Any) -> bool:
    import numpy as np

    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return type(a) is type(b) and bool(a == b)


def write_stream(fmt: Format, path: Path, objects: list[Any]) -> None:
    """Several torch.save calls into one file, as training scripts append to a log of checkpoints."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for obj in objects:
            torch.save(obj, f, _use_new_zipfile_serialization=getattr(fmt, "zip_format", True))


def read_stream(cell: Cell, path: Path, count: int) -> list[Any] | CellResult:
    """``count`` objects read back with one torch.load each, or the cell that says which one failed."""
    loaded: list[Any] = []
    with open(path, "rb") as f:
        for i in range(count):
            try:
                loaded.append(torch_load(f, {"weights_only": True}, MapLocation("str", "cpu", "cpu"), trusted=True))
            except Exception as exc:
                prefix = f"torch.load of object {i + 1} of {count} from one stream: "
                return CellResult.failed(cell, Outcome.LOAD_ERROR, exc, prefix=prefix)
    return loaded


def stream_cell(fmt: Format, producer: Endpoint, consumer: Endpoint) -> Cell:
    return Cell("stream", fmt.name, producer, consumer, {"check": "stream", "weights_only": True})


def _check_stream(fmt: Format, workdir: Path, here: Endpoint) -> CellResult:
    cell = stream_cell(fmt, here, here)
    expected = stream()
    path = workdir / f"stream-{fmt.name}{fmt.suffix}"
    write_stream(fmt, path, expected)
    loaded = read_stream(cell, path, len(expected))
    if isinstance(loaded, CellResult):
        return loaded
    return CellResult.of(cell, compare_values(expected, loaded, ("stream",)), checks=("load", "values"))


def check_saved(cell: Cell, fmt: Format, path: Path, records: Mapping[str, Any], *, trusted: bool) -> CellResult:
    """A multi-object file or stream from a corpus (``cell.options["check"]`` says which),
    against the producer's records of every object in it."""
    if cell.options["check"] == "stream":
        loaded: Any = read_stream(cell, path, _stream_length(records))
        if isinstance(loaded, CellResult):
            return loaded
        return CellResult.of(cell, compare_object_records(records, loaded, "stream"), checks=("load", "manifest"))
    options = {k: v for k, v in cell.options.items() if k not in ("check", "map_location")}
    try:
        loaded = fmt.load(path, options, MapLocation("str", "cpu", "cpu"), torch.nn.Module, trusted=trusted).state_dict
    except (Unsupported, Untrusted) as exc:
        return CellResult.failed(cell, Outcome.UNSUPPORTED, exc)
    except Exception as exc:
        return CellResult.failed(cell, Outcome.LOAD_ERROR, exc)
    return CellResult.of(cell, compare_object_records(records, loaded, "bundle"), checks=("load", "manifest"))


def _stream_length(records: Mapping[str, Any]) -> int:
    """How many objects the recorded stream holds: the length of its top-level list."""
    return int(records["[]"]["len"])
