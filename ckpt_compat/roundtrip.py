"""Round-trip one `ModelSpec` through every format, load option, device and map_location.

For each producer device the spec is built and saved once per format; the file is then loaded
once per (load variant, consumer device, map_location spelling), giving one `CellResult` each.
The cell that loads onto the CPU with a plain ``map_location="cpu"`` also runs the loading
checks: strict load into a fresh model, non-strict key reporting, ``assign=True`` on meta, and
the forward output against the original model's, bit for bit.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ckpt_compat import loading
from ckpt_compat.atomic import WriteFailed, storage_failure
from ckpt_compat.compare import compare_close, compare_records, compare_state_dicts, compare_values, tensor_leaves
from ckpt_compat.devices import MAP_LOCATION_KINDS, MapLocation, available_devices, map_locations, producer_devices
from ckpt_compat.differences import Difference
from ckpt_compat.dtypes import UnknownDType
from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.fingerprint import state_fingerprint
from ckpt_compat.formats import Format, Unsupported, Untrusted
from ckpt_compat.results import Cell, CellResult, Endpoint, Outcome
from ckpt_compat.specs import SpecError
from ckpt_compat.unsaved import (
    detached_references,
    non_persistent_buffers,
    outside_the_state,
    plain_tensors,
    references,
)


class Subject(Protocol):
    """What is round-tripped: a `specs.ModelSpec` or a user's model (`usermodel.UserModel`)."""

    @property
    def id(self) -> str: ...

    def model(self, device: str = "cpu", *, perturb: bool = False) -> nn.Module:
        """The model in eval mode; ``perturb``: a fresh load target whose every state-dict entry
        has other bytes; ``device="meta"``: shapes and dtypes only."""
        ...

    def inputs(self) -> Any:
        """The example input on the CPU: a tree of per-block inputs, or a `loading.Call`."""
        ...

    def to_json(self) -> dict[str, Any]:
        """What a corpus manifest records to rebuild it."""
        ...


LoadingChecks = tuple[list[Difference], list[str], list[str]]  # differences, notes, checks that ran


@dataclass(frozen=True)
class Expected:
    """What a spec means on the running torch: its state, hidden buffers and forward outputs."""

    state: Mapping[str, torch.Tensor]
    hidden: Mapping[str, torch.Tensor]
    reference: Mapping[str, Any]
    inputs: Mapping[str, Any]
    block_types: Mapping[str, str]  # dotted path -> class name of each block that runs
    # Tensors held as plain attributes (not a Parameter, not a buffer): no format but a whole-module
    # pickle carries them, so when they differ in a fresh model they explain a forward difference.
    plain: Mapping[str, torch.Tensor] = field(default_factory=dict)
    references: Mapping[str, str] = field(default_factory=dict)  # see `references`
    # State-dict key or buffer -> class name of the module that holds it: a difference in a tensor says whose
    # it is, so a known issue can name the block (a TensorBag's unread tensors, say).
    owners: Mapping[str, str] = field(default_factory=dict)
    # Builds the model on the CPU again, for `float64_leaves` (rarely needed: not kept built).
    rebuild: Callable[[], nn.Module] | None = field(default=None, compare=False, repr=False)
    # The loading checks' results by (aliasing, `state_fingerprint` of the loaded state): every
    # load of this spec that gives the same state (another load option, format or producer) would
    # give the same results. Only `_loading_checks` of the spec this was built from writes here.
    loading_checks: dict[Hashable, LoadingChecks] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, spec: Subject, device: str = "cpu") -> Expected:
        inputs = spec.inputs()
        model = spec.model(device)
        reference = loading.forward_outputs(model if device == "cpu" else spec.model(), inputs)
        types = {path: type(model.get_submodule(path)).__name__ for path, _ in loading.leaf_blocks(inputs)}
        state, hidden = model.state_dict(), non_persistent_buffers(model)
        return cls(
            state,
            hidden,
            reference,
            inputs,
            types,
            plain_tensors(model),
            references(model),
            holders_of(model, [*state, *hidden]),
            rebuild=spec.model,
        )

    def float64_leaves(self) -> Callable[[str, int], torch.Tensor | None]:
        """``leaf(path, index)``: tensor ``index`` (in the order of `tensor_leaves`) of ``path``'s
        block output computed in float64; None where the model is not at hand or the block cannot
        run so. The model is rebuilt once, when the first leaf is asked for, and each block run once."""
        model: list[nn.Module] = []
        outputs: dict[str, list[torch.Tensor] | None] = {}

        def leaf(path: str, index: int) -> torch.Tensor | None:
            if path not in outputs:
                outputs[path] = None
                if self.rebuild is not None:
                    try:
                        model[:] = model or [self.rebuild()]  # float64_output runs a copy of the block
                        outputs[path] = tensor_leaves(loading.float64_output(model[0], self.inputs, path))
                    except Exception:  # a block with no float64 kernel: judged by the tolerance alone
                        pass
            leaves = outputs[path]
            return leaves[index] if leaves is not None and index < len(leaves) else None

        return leaf


@dataclass(frozen=True)
class SavedFile:
    """A checkpoint file and what every load of it is checked against.

    ``expected`` is None when the running torch cannot build the spec (a dtype it lacks); then
    only the producer's ``manifest`` (per-tensor dtype, shape, digest) is there to check against.
    """

    spec: Subject
    fmt: Format
    path: Path
    producer: Endpoint
    expected: Expected | None
    manifest: Mapping[str, Mapping[str, Any]] | None = None
    trusted: bool = True  # written by this run, a committed fixture, or vouched for with --trust
    not_built: str = ""  # why ``expected`` is None


def check_spec(
    spec: Subject,
    formats: Iterable[Format],
    workdir: Path,
    *,
    producers: list[str] | None = None,
    consumers: list[str] | None = None,
) -> list[CellResult]:
    """Every cell for ``spec`` on the running torch; files go to ``workdir`` and are removed."""
    results: list[CellResult] = []
    for device in producers or producer_devices():
        producer = Endpoint(torch.__version__, device)
        model = spec.model(device)
        expected = Expected.build(spec, device)
        for fmt in formats:
            path = workdir / f"{file_stem(spec.id)}.{device}.{fmt.name}{fmt.suffix}"
            failed = save_cell(spec, fmt, model, path, producer)
            if failed is not None:
                results.append(failed)
                continue
            try:
                results += check_file(SavedFile(spec, fmt, path, producer, expected), consumers)
            finally:
                remove(path)
    return results


def file_stem(subject_id: str) -> str:
    """A subject's id as one file name: a user's ``path/to/models.py:build`` holds a separator."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in subject_id)


def remove(path: Path) -> None:
    """Remove a checkpoint, a file or (DCP) a directory."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def save_cell(spec: Subject, fmt: Format, model: nn.Module, path: Path, producer: Endpoint) -> CellResult | None:
    """Save ``model``; None on success, else the cell saying why not (unsupported or save_error)."""
    cell = Cell(spec.id, fmt.name, producer, producer, {})
    try:
        fmt.save(model, path, _on(spec.inputs(), producer.device))
    except Unsupported as exc:
        return CellResult.failed(cell, Outcome.UNSUPPORTED, exc, prefix="save: ")
    except Exception as exc:
        if isinstance(exc, WriteFailed) or storage_failure(exc):  # the disk, not the format
            raise
        return CellResult.failed(cell, Outcome.SAVE_ERROR, exc)
    return None


def _on(inputs: Any, device: str) -> Any:
    """The example inputs moved to the device the model lives on."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, loading.Call):
        return inputs.map(lambda t: t.to(device))
    if isinstance(inputs, dict):
        return {k: _on(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_on(v, device) for v in inputs)
    return inputs


def check_file(
    saved: SavedFile, consumers: list[str] | None = None, spellings: tuple[str, ...] = MAP_LOCATION_KINDS
) -> list[CellResult]:
    """One cell per (load variant, consumer device, map_location spelling) for one file."""
    results = []
    this_torch = torch.__version__
    for variant in saved.fmt.load_variants():
        for consumer in consumers or available_devices():
            for location in map_locations(saved.producer.device, consumer):
                if location.kind in saved.fmt.map_location_kinds and location.kind in spellings:
                    options = {**variant, "map_location": location.label()}
                    cell = Cell(saved.spec.id, saved.fmt.name, saved.producer, Endpoint(this_torch, consumer), options)
                    results.append(_check_load(cell, saved, variant, location))
    return results


def _check_load(cell: Cell, saved: SavedFile, variant: Mapping[str, Any], location: MapLocation) -> CellResult:
    spec, fmt, consumer, expected = saved.spec, saved.fmt, location.target, saved.expected

    def fresh_model() -> nn.Module:
        try:
            return spec.model(consumer, perturb=True)
        except (SpecError, UnknownDType) as exc:
            raise Unsupported(f"torch {torch.__version__} cannot build the model to load into: {exc}") from exc

    try:
        loaded = fmt.load(saved.path, variant, location, fresh_model, trusted=saved.trusted)
    except (Unsupported, Untrusted) as exc:
        return CellResult.failed(cell, Outcome.UNSUPPORTED, exc)
    except Exception as exc:
        return CellResult.failed(cell, Outcome.LOAD_ERROR, exc)
    state = loaded.state_dict
    absent = dict(loaded.absent or {})
    notes: list[str] = [f"UNSAFE: {loaded.unsafe}"] if loaded.unsafe else []
    checks = ["load"]
    differences = [
        Difference("device", ("state_dict", k), "loaded onto another device", expected=consumer, actual=str(v.device))
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.device.type != consumer
    ]
    if saved.manifest is not None:  # keys the format does not keep under their name are listed, not failed
        checks.append("manifest")
        records = compare_records({k: v for k, v in saved.manifest.items() if k not in absent}, state)
        differences += records if expected is None else _name_persisted_buffers(records, expected.hidden, state)
    if expected is None:
        notes.append(f"not rebuilt here, checked against the producer's digests only: {saved.not_built}")
    else:
        checks.append("state_dict")
        # Meta tensors have no storage, so sharing cannot be observed there.
        want = {k: v for k, v in expected.state.items() if k not in absent}
        found = compare_state_dicts(
            want, state, strides=fmt.preserves_strides, aliasing=fmt.preserves_aliasing and consumer != "meta"
        )
        if absent:
            notes.append(
                f"{len(absent)} of {len(expected.state)} tensors not kept under their name: "
                + ", ".join(sorted(absent)[:6])
                + (" ..." if len(absent) > 6 else "")
            )
        hidden = loaded.hidden
        if hidden is None and fmt.holds == "module" and loaded.module is not None:
            hidden = non_persistent_buffers(loaded.module)
        if hidden is not None:
            checks.append("buffers")
            # A plain tensor attribute is a program constant too (torch.export lifts it).
            plain = {k: v for k, v in expected.plain.items() if k in hidden and k not in expected.hidden}
            found += compare_values(
                {**expected.hidden, **plain},
                {k: v for k, v in hidden.items() if k in expected.hidden or k not in expected.state},
                ("buffers",),
            )
        differences = _owned(differences + _name_persisted_buffers(found, expected.hidden, state), expected.owners)
        if consumer == "cpu" and location.kind == "str":
            # A partial state dict cannot be loaded strictly, and its values are compared above: the
            # keys the comparison found missing are not reported again by every loading check.
            if any(k not in state for k in want):
                notes.append("loading checks not run: the loaded state dict lacks keys (above)")
            elif not absent:
                # Keys the state comparison already reported as unexpected are not reported again
                # by every loading check.
                known = _with_metadata_of(state, {k: v for k, v in state.items() if k in expected.state})
                more, more_notes, ran = _loading_checks(
                    spec, expected, loaded.module, known, aliasing=fmt.preserves_aliasing
                )
                differences += more
                notes += more_notes
                checks += ran
            if loaded.call is not None:
                checks.append("program")
                differences += _compare_whole_call(
                    expected, loaded.call, flat=loaded.flat_outputs, tolerance=fmt.output_tolerance
                )
    return CellResult.of(cell, differences, checks=checks, notes=notes, unsafe=loaded.unsafe is not None)


def _compare_whole_call(
    expected: Expected, call: Any, *, flat: bool = False, tolerance: tuple[float, float] | None = None
) -> list[Difference]:
    """Run a loaded program on the whole input and compare each block's output with the reference
    (bitwise, or within ``tolerance`` for another runtime; ``flat``: outputs come as one list)."""
    try:
        with torch.no_grad():
            # A flattened program (ONNX) takes the input whole; a module, as the model takes it.
            outputs = call(expected.inputs) if flat else loading.invoke(call, expected.inputs)
    except Exception as exc:
        error = ErrorInfo.of(exc)
        # Eager cannot run one of the blocks here either, with this very error (a kernel this torch
        # lacks for a dtype on the CPU): the program is no more comparable than that block, whose
        # forward the cell's notes already list as not checked.
        if any(isinstance(r, loading.NoForward) and r.error == error for r in expected.reference.values()):
            return []
        return [Difference("raised", ("program",), f"raised after loading: {error}", error=error)]
    if flat:
        return _compare_flat(expected, outputs, tolerance)
    differences: list[Difference] = []
    for path, _ in loading.leaf_blocks(expected.inputs):
        want = expected.reference.get(path)
        if isinstance(want, loading.NoForward):
            continue
        got: Any = outputs
        for name in path.split(".") if path else ():
            got = got[int(name)] if isinstance(got, (list, tuple)) else got[name]
        block = expected.block_types.get(path, "?")
        differences += [d.with_block(block) for d in compare_values(want, got, ("program", path))]
    return differences


def _compare_flat(expected: Expected, outputs: list[Any], tolerance: tuple[float, float] | None) -> list[Difference]:
    """Outputs flattened in block order (ONNX): match them to the reference's tensors by position."""
    want = [
        (path, index, t)
        for path, _ in loading.leaf_blocks(expected.inputs)
        if not isinstance(expected.reference.get(path), loading.NoForward)
        for index, t in enumerate(tensor_leaves(expected.reference.get(path)))
    ]
    if len(want) != len(outputs):
        return [
            Difference(
                "type", ("program",), "another number of outputs", expected=str(len(want)), actual=str(len(outputs))
            )
        ]
    differences = []
    exact = expected.float64_leaves()  # computed only for an output beyond the tolerance
    for (path, index, w), got in zip(want, outputs, strict=True):
        block = expected.block_types.get(path, "?")
        found = compare_close(w, got, ("program", path), tolerance, lambda: exact(path, index))  # noqa: B023
        differences += [d.with_block(block) for d in found]
    return differences


def _name_persisted_buffers(
    differences: list[Difference], hidden: Mapping[str, Any], state: Mapping[str, Any]
) -> list[Difference]:
    """Say what it is when a non-persistent buffer comes back as a state-dict entry. One missing
    from the buffers is that only where ``state`` (what was loaded) holds it: a buffer the file
    left out altogether stays ``missing``."""
    out = []
    for d in differences:
        key = d.path[1] if len(d.path) == 2 else None
        if key in hidden and (
            (d.kind, d.root) in (("unexpected", "state_dict"), ("unexpected", "manifest"))
            or ((d.kind, d.root) == ("missing", "buffers") and key in state)
        ):
            out.append(
                Difference("persisted", d.path, "a non-persistent buffer came back as a persistent state-dict entry")
            )
        else:
            out.append(d)
    return out


def holders_of(model: nn.Module, keys: Iterable[str]) -> dict[str, str]:
    """Key -> class name of the module that holds it. A key that names no module path (a user's
    state-dict hook renamed it) has no owner here."""
    found = {}
    for key in keys:
        try:
            found[key] = type(model.get_submodule(key.rpartition(".")[0])).__name__
        except AttributeError:
            continue
    return found


def _owned(differences: list[Difference], owners: Mapping[str, str]) -> list[Difference]:
    """Each difference in a state-dict entry or buffer names the class of the module that holds it."""
    roots = ("state_dict", "manifest", "buffers")
    return [
        d.with_block(owners[str(d.path[1])])
        if d.block is None and d.root in roots and len(d.path) > 1 and d.path[1] in owners
        else d
        for d in differences
    ]


def _with_metadata_of(state: Mapping[str, Any], items: dict[str, Any]) -> Mapping[str, Any]:
    if len(items) == len(state):
        return state
    return loading.with_metadata(state, items.items())


def _loading_checks(
    spec: Subject, expected: Expected, module: nn.Module | None, state: Mapping[str, Any], *, aliasing: bool
) -> LoadingChecks:
    """Differences, notes and the names of the checks that ran; for a state the format gave as a
    state dict (``module`` None), those of an earlier load with the same fingerprint."""
    fingerprint = state_fingerprint(state) if module is None else None
    if fingerprint is None:
        return _run_loading_checks(spec, expected, module, state, aliasing=aliasing)
    key = (aliasing, fingerprint)
    if key not in expected.loading_checks:
        expected.loading_checks[key] = _run_loading_checks(spec, expected, None, state, aliasing=aliasing)
    differences, notes, ran = expected.loading_checks[key]
    return list(differences), list(notes), list(ran)


def _run_loading_checks(
    spec: Subject, expected: Expected, module: nn.Module | None, state: Mapping[str, Any], *, aliasing: bool
) -> LoadingChecks:
    differences: list[Difference] = []
    ran = ["forward", "non_strict"]
    # The non-strict loads judge key sets and shapes, never values: the strict load's target serves
    # them too. A module the format loaded itself is left as it came, and they get a fresh one.
    keys_target = None
    if module is None:
        module = keys_target = spec.model(perturb=True)
        differences += loading.strict_load(module, state, expected.state)
        ran.append("strict_load")
    forward, notes = loading.compare_forward(expected.reference, module, expected.inputs, expected.block_types)
    differences += forward
    if forward:
        differences += outside_the_state(expected, module)
    differences += loading.non_strict_loads(spec.model(perturb=True) if keys_target is None else keys_target, state)
    if loading.supports_assign():
        ran.append("assign")
        meta_model = spec.model("meta")
        differences += loading.assign_onto_meta(meta_model, state, expected.state, aliasing=aliasing)
        differences += detached_references(expected, meta_model, "load_state_dict(assign=True)")
    else:
        notes.append(f"assign=True not checked: torch {torch.__version__} has no load_state_dict(assign=)")
    return differences, notes, ran
