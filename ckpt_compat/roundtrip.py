"""Round-trip one `ModelSpec` through every format, load option, device and map_location.

For each producer device the spec is built and saved once per format; the file is then loaded
once per (load variant, consumer device, map_location spelling), giving one `CellResult` each.
The cell that loads onto the CPU with a plain ``map_location="cpu"`` also runs the loading
checks: strict load into a fresh model, non-strict key reporting, ``assign=True`` on meta, and
the forward output against the original model's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckpt_compat import loading
from ckpt_compat.compare import Difference, compare_state_dicts, compare_values
from ckpt_compat.devices import MapLocation, available_devices, map_locations, producer_devices
from ckpt_compat.formats import Format, Unsupported
from ckpt_compat.formats.base import first_line
from ckpt_compat.matrix import Cell, CellResult, Endpoint, Outcome, describe, outcome_of
from ckpt_compat.specs import ModelSpec, build, example_inputs


def non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers a state dict leaves out; a whole-model pickle must still carry them."""
    out = {}
    for prefix, module in model.named_modules():
        for name in sorted(module._non_persistent_buffers_set):
            value = module._buffers.get(name)
            if value is not None:
                out[f"{prefix}.{name}" if prefix else name] = value
    return out


@dataclass(frozen=True)
class _Saved:
    """One spec saved in one format from one device: what every load of that file is checked against."""

    spec: ModelSpec
    fmt: Format
    path: Path
    expected: Mapping[str, torch.Tensor]
    hidden: Mapping[str, torch.Tensor]
    reference: Mapping[str, Any]
    inputs: Mapping[str, Any]


def check_spec(
    spec: ModelSpec,
    formats: Iterable[Format],
    workdir: Path,
    *,
    producers: list[str] | None = None,
    consumers: list[str] | None = None,
) -> list[CellResult]:
    """Every cell for ``spec`` on the running torch; files go to ``workdir`` and are removed."""
    consumers = consumers or available_devices()
    inputs = example_inputs(spec)
    reference = loading.forward_outputs(build(spec), inputs)
    results: list[CellResult] = []
    for producer in producers or producer_devices():
        model = build(spec, device=producer)
        expected, hidden = model.state_dict(), non_persistent_buffers(model)
        for fmt in formats:
            path = workdir / f"{spec.id}.{producer}.{fmt.name}{fmt.suffix}"

            try:
                fmt.save(model, path)
            except Unsupported as exc:
                results.append(
                    CellResult(_cell(spec, fmt, producer, producer, {}), Outcome.UNSUPPORTED, f"save: {exc}")
                )
                continue
            except Exception as exc:
                results.append(
                    CellResult(_cell(spec, fmt, producer, producer, {}), Outcome.SAVE_ERROR, first_line(exc))
                )
                continue
            saved = _Saved(spec, fmt, path, expected, hidden, reference, inputs)
            try:
                for variant in fmt.load_variants():
                    for consumer in consumers:
                        for location in map_locations(producer, consumer):
                            if location.kind in fmt.map_location_kinds:
                                options = {**variant, "map_location": location.label()}
                                cell = _cell(spec, fmt, producer, consumer, options)
                                results.append(_check_load(cell, saved, variant, location))
            finally:
                path.unlink(missing_ok=True)
    return results


def _cell(spec: ModelSpec, fmt: Format, producer: str, consumer: str, options: Mapping[str, Any]) -> Cell:
    version = torch.__version__
    return Cell(spec.id, fmt.name, Endpoint(version, producer), Endpoint(version, consumer), dict(options))


def _check_load(cell: Cell, saved: _Saved, variant: Mapping[str, Any], location: MapLocation) -> CellResult:
    spec, fmt, consumer = saved.spec, saved.fmt, location.target
    try:
        loaded = fmt.load(
            saved.path, variant, location, lambda: build(spec, device=consumer, perturb=True), trusted=True
        )
    except Unsupported as exc:
        return CellResult(cell, Outcome.UNSUPPORTED, str(exc))
    except Exception as exc:
        return CellResult(cell, Outcome.LOAD_ERROR, first_line(exc))
    state = loaded.state_dict
    differences = [
        Difference("device", f"state_dict[{k!r}]", f"loaded onto {v.device}, asked for {consumer}")
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.device.type != consumer
    ]
    # Meta tensors have no storage, so sharing cannot be observed there.
    differences += compare_state_dicts(
        saved.expected, state, strides=fmt.preserves_strides, aliasing=fmt.preserves_aliasing and consumer != "meta"
    )
    if fmt.holds == "module" and loaded.module is not None:
        differences += compare_values(dict(saved.hidden), non_persistent_buffers(loaded.module), "buffers")
    notes: list[str] = []
    if consumer == "cpu" and location.kind == "str":
        more, notes = _loading_checks(saved, loaded.module, state)
        differences += more
    detail = "; ".join(filter(None, [describe(differences), *notes]))
    return CellResult(cell, outcome_of(differences), detail)


def _loading_checks(
    saved: _Saved, module: nn.Module | None, state: Mapping[str, Any]
) -> tuple[list[Difference], list[str]]:
    spec = saved.spec
    differences: list[Difference] = []
    if module is None:
        module = build(spec, perturb=True)
        differences += loading.strict_load(module, state, saved.expected)
    forward, notes = loading.compare_forward(saved.reference, module, saved.inputs)
    differences += forward
    differences += loading.non_strict_loads(build(spec, perturb=True), state)
    if loading.supports_assign():
        differences += loading.assign_onto_meta(build(spec, device="meta"), state, saved.expected)
    else:
        notes.append(f"assign=True not checked: torch {torch.__version__} has no load_state_dict(assign=)")
    return differences, notes
