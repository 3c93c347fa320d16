"""``check FILE --model``: a checkpoint's keys, dtypes and shapes against a user's model, with the
usual culprits named and their fix.

Culprits, in the order they are looked for: a key prefix (``_orig_mod.`` from torch.compile,
``module.`` from DataParallel / DDP, a task head's ``bert.``), a persistent entry that is a
non-persistent buffer in the model (``position_ids``), BatchNorm's ``num_batches_tracked``, a tie
stored once or stored twice with two different values; then whatever is still missing,
unexpected, or of another shape or dtype. Each `Finding` says whether it stops
``load_state_dict(strict=True)``.

The checkpoint is a file someone else wrote: the command reads it in a contained child
(`match_task`, memory-limited, its own process), which never imports the user's code: the model
crosses as its `Layout`, and the verdict comes back as `KeyMatch.to_json`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckpt_compat.errorinfo import markdown as escape_markdown
from ckpt_compat.errorinfo import printable
from ckpt_compat.stored import Stored, StoredError, TensorInfo, tensor_info
from ckpt_compat.unsaved import non_persistent_buffers

KNOWN_PREFIXES = {
    "_orig_mod.": "saved from a torch.compile'd model: save model._orig_mod.state_dict(), or strip the prefix "
    "before loading",
    "module.": "saved from DataParallel / DistributedDataParallel: save model.module.state_dict(), or strip it "
    "with torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, 'module.')",
}


class Kind(str, enum.Enum):
    PREFIX = "prefix"
    PERSISTED_BUFFER = "persisted_buffer"
    NUM_BATCHES_TRACKED = "num_batches_tracked"
    TIE_STORED_ONCE = "tie_stored_once"
    TIE_STORED_TWICE = "tie_stored_twice"
    MISSING = "missing"
    UNEXPECTED = "unexpected"
    SHAPE = "shape"
    DTYPE = "dtype"
    INDEX = "index"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Finding:
    kind: Kind
    keys: tuple[str, ...]
    detail: str
    fix: str
    blocks_strict: bool  # load_state_dict(strict=True) raises (or loads wrong values) because of it

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "keys": list(self.keys),
            "detail": self.detail,
            "fix": self.fix,
            "blocks_strict": self.blocks_strict,
        }

    @classmethod
    def from_json(cls, data: Any) -> Finding:
        keys = data["keys"]
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise TypeError(f"a finding's keys are a list of names, not {keys!r:.80}")
        detail, fix, blocks = data["detail"], data["fix"], data["blocks_strict"]
        if not (isinstance(detail, str) and isinstance(fix, str) and isinstance(blocks, bool)):
            raise TypeError("a finding's detail and fix are text and blocks_strict a boolean")
        return cls(Kind(data["kind"]), tuple(keys), detail, fix, blocks)


SCHEMA = "ckpt-compat/key-match/1"


@dataclass
class KeyMatch:
    """What `match` found, as `render` shows it and ``--format json`` writes it."""

    checkpoint: str
    kind: str  # the stored file's kind in words (`Stored.kind`)
    inside: str | None  # the key the weights sat under in a wrapping dict
    tensors_in_file: int
    model_name: str
    model_class: str
    entries_in_model: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def loads_strictly(self) -> bool:
        return not any(f.blocks_strict for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "checkpoint": self.checkpoint,
            "kind": self.kind,
            "inside": self.inside,
            "model": self.model_name,
            "model_class": self.model_class,
            "tensors_in_file": self.tensors_in_file,
            "entries_in_model": self.entries_in_model,
            "loads_strictly": self.loads_strictly,
            "findings": [f.to_json() for f in self.findings],
        }

    @classmethod
    def from_json(cls, data: Any) -> KeyMatch:
        """`to_json`'s output back, from the child that read the file; raises TypeError, KeyError
        or ValueError on anything else (the child ran a loader on a file nobody vouched for)."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise TypeError(f"not a {SCHEMA} answer")
        texts = [data[k] for k in ("checkpoint", "kind", "model", "model_class")]
        counts = [data[k] for k in ("tensors_in_file", "entries_in_model")]
        inside, findings = data["inside"], data["findings"]
        if not all(isinstance(t, str) for t in texts) or not (inside is None or isinstance(inside, str)):
            raise TypeError("a key match names its checkpoint, kind, model and class as text")
        if not all(type(n) is int for n in counts) or not isinstance(findings, list):
            raise TypeError("a key match counts with integers and lists its findings")
        found = cls(texts[0], texts[1], inside, counts[0], texts[2], texts[3], counts[1])
        found.findings = [Finding.from_json(f) for f in findings]
        if found.loads_strictly is not data["loads_strictly"]:
            raise ValueError("loads_strictly disagrees with the findings")
        return found

    def render(self, markdown: bool = False) -> str:
        verdict = "loads strictly" if self.loads_strictly else "does NOT load strictly"
        inside = f" under {self.inside!r}" if self.inside else ""
        head = (
            f"{self.checkpoint} ({self.kind}, {self.tensors_in_file} tensors{inside}) into "
            f"{self.model_name} ({self.model_class}, {self.entries_in_model} state-dict entries): {verdict}"
        )
        # Keys and names are the file's: each stays on its line, and is no Markdown of its own.
        text: Callable[[str], str] = (lambda t: escape_markdown(t, 10_000)) if markdown else printable
        lines = [f"# {text(head)}" if markdown else text(head)]
        for f in self.findings:
            keys = ", ".join(f.keys[:8]) + (f" ... ({len(f.keys)} keys)" if len(f.keys) > 8 else "")
            mark = "blocks strict load" if f.blocks_strict else "note"
            bullet = "- " if markdown else "  "
            lines += [f"{bullet}{f.kind} [{mark}]: {text(keys)}", f"    {text(f.detail)}", f"    fix: {text(f.fix)}"]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Layout:
    """What `match` needs of a model, as data: its class name, its state-dict entries, its ties
    and its non-persistent buffers. The user's code builds the model (on meta) in this process;
    the child that reads the checkpoint gets only this."""

    model_class: str
    expected: Mapping[str, TensorInfo]
    ties: tuple[tuple[str, ...], ...]
    hidden: frozenset[str]  # non-persistent buffers: in the model, never in its state dict

    @classmethod
    def of(cls, model: nn.Module) -> Layout:
        expected = {k: tensor_info(v) for k, v in model.state_dict().items()}
        return cls(type(model).__name__, expected, tuple(tie_groups(model)), frozenset(non_persistent_buffers(model)))

    def to_json(self) -> dict[str, Any]:
        return {
            "model_class": self.model_class,
            "expected": {k: [v.dtype, list(v.shape)] for k, v in self.expected.items()},
            "ties": [list(t) for t in self.ties],
            "hidden": sorted(self.hidden),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layout:
        expected = {k: TensorInfo(dtype, tuple(shape)) for k, (dtype, shape) in data["expected"].items()}
        return cls(data["model_class"], expected, tuple(tuple(t) for t in data["ties"]), frozenset(data["hidden"]))


def tie_groups(model: nn.Module) -> list[tuple[str, ...]]:
    """State-dict keys that are one Parameter or buffer (ties), in state-dict order."""
    groups: dict[int, list[str]] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(value), []).append(key)
    return [tuple(keys) for keys in groups.values() if len(keys) > 1]


def match(stored: Stored, model: nn.Module | Layout, model_name: str) -> KeyMatch:
    """Compare ``stored`` with ``model`` (built on any device; meta is enough) or its `Layout`."""
    layout = model if isinstance(model, Layout) else Layout.of(model)
    expected = layout.expected
    result = KeyMatch(
        str(stored.path), stored.kind, stored.inside, len(stored.tensors), model_name, layout.model_class, len(expected)
    )
    findings = result.findings
    findings += [
        Finding(Kind.INDEX, (), problem, "re-save the folder with save_pretrained", True) for problem in stored.problems
    ]
    found, renamed = _prefix(stored.tensors, expected)
    if renamed is not None:
        findings.append(renamed)
    hidden = layout.hidden
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]

    persisted = [k for k in unexpected if k in hidden]
    if persisted:
        findings.append(
            Finding(
                Kind.PERSISTED_BUFFER,
                tuple(persisted),
                f"persistent entries in the file, non-persistent buffers (register_buffer(..., persistent=False)) "
                f"in {layout.model_class}: the file was written by a version of the model code that saved them "
                "(transformers 4.1 registered BERT's position_ids persistent, 4.44 does not: "
                "gitabtion/BertBasedCorrectionModels#51)",
                "drop them from the state dict before load_state_dict (they are recomputed by the model), or load "
                "with strict=False and check that only these keys are reported unexpected",
                True,
            )
        )
    tracked = [k for k in missing if k.endswith("num_batches_tracked")]
    if tracked:
        findings.append(
            Finding(
                Kind.NUM_BATCHES_TRACKED,
                tuple(tracked),
                "BatchNorm's step counter is absent from the file"
                + (
                    "; this state dict carries module versions, so BatchNorm does not fill it in"
                    if stored.versioned
                    else "; BatchNorm fills it in when the state dict carries no module versions, as here"
                ),
                "load with strict=False, or save the full model.state_dict()",
                stored.versioned,
            )
        )
    ties = list(layout.ties)
    once = [(g, [k for k in g if k in found]) for g in ties if any(k not in found for k in g)]
    once = [(g, kept) for g, kept in once if kept]
    for group, kept in once:
        lost = tuple(k for k in group if k not in found)
        findings.append(
            Finding(
                Kind.TIE_STORED_ONCE,
                lost,
                f"tied to {kept[0]} in the model (one Parameter); the file stores the tie once",
                "load_state_dict(strict=False) and check that only these keys are missing: the tie makes them "
                "equal to " + kept[0] + " (safetensors.torch.load_model does this for you)",
                True,
            )
        )
    findings += _ties_stored_twice(stored, ties, found, expected)
    accounted = set(persisted) | set(tracked) | {k for f in findings if f.kind is Kind.TIE_STORED_ONCE for k in f.keys}
    rest_missing = tuple(k for k in missing if k not in accounted)
    rest_unexpected = tuple(k for k in unexpected if k not in accounted)
    if rest_missing:
        findings.append(
            Finding(
                Kind.MISSING,
                rest_missing,
                "in the model, not in the file",
                "a newer model version added them, or the file was saved from another config; load with "
                "strict=False only if their initial values are what you want",
                True,
            )
        )
    if rest_unexpected:
        findings.append(
            Finding(
                Kind.UNEXPECTED,
                rest_unexpected,
                "in the file, not in the model",
                "is this the model the file was saved from (its config, its version)? load with strict=False to "
                "ignore them only if they are not needed",
                True,
            )
        )
    findings += _shapes_and_dtypes(found, expected)
    return result


def _prefix(
    stored: Mapping[str, TensorInfo], expected: Mapping[str, TensorInfo]
) -> tuple[dict[str, TensorInfo], Finding | None]:
    """The file's keys renamed by the one prefix change that matches the model best, if any."""
    best_overlap = len(set(stored) & set(expected))
    best: tuple[str, str] | None = None  # (strip from file keys, add to file keys)
    for prefix in _candidates(stored):
        overlap = len({k.removeprefix(prefix) for k in stored} & set(expected))
        if overlap > best_overlap:
            best_overlap, best = overlap, (prefix, "")
    for prefix in _candidates(expected):
        overlap = len({prefix + k for k in stored} & set(expected))
        if overlap > best_overlap:
            best_overlap, best = overlap, ("", prefix)
    if best is None:
        return dict(stored), None
    strip, add = best
    renamed = {add + k.removeprefix(strip): v for k, v in stored.items()}
    if strip:
        why = KNOWN_PREFIXES.get(strip, f"every matching key carries {strip!r} in the file")
        fix = f"strip {strip!r} from the file's keys: {{k.removeprefix({strip!r}): v for k, v in state.items()}}"
        keys = tuple(k for k in stored if k.startswith(strip))
    else:
        why = f"the model's keys carry {add!r} (a task model wrapping the base model the file was saved from)"
        fix = f"load into the model's {add.rstrip('.')!r} submodule, or add {add!r} to the file's keys"
        keys = tuple(stored)
    return renamed, Finding(Kind.PREFIX, keys, why, fix, True)


def _candidates(keys: Iterable[str]) -> list[str]:
    """Leading dotted prefixes shared by at least half of ``keys`` (and the known ones)."""
    keys = list(keys)
    counts: dict[str, int] = {}
    for k in keys:
        head, dot, _ = k.partition(".")
        if dot:
            counts[head + "."] = counts.get(head + ".", 0) + 1
    common = [p for p, n in counts.items() if n * 2 >= len(keys)]
    return list(dict.fromkeys([*KNOWN_PREFIXES, *common]))


def _ties_stored_twice(
    stored: Stored, ties: list[tuple[str, ...]], found: Mapping[str, TensorInfo], expected: Mapping[str, TensorInfo]
) -> list[Finding]:
    out = []
    names = {v: k for k, v in zip(stored.tensors, found, strict=True)}  # model key -> file key
    for group in ties:
        if not all(k in found for k in group):
            continue
        # What the one Parameter holds after each copy: load_state_dict casts to its dtype.
        dtype = getattr(torch, expected[group[0]].dtype, None)
        values = [_as_loaded(stored.read(names[k]), dtype) for k in group]
        first = values[0].contiguous().view(-1).view(torch.uint8) if values[0].numel() else None
        differ = [
            k
            for k, v in zip(group[1:], values[1:], strict=True)
            if first is None
            or v.shape != values[0].shape
            or not torch.equal(v.contiguous().view(-1).view(torch.uint8), first)
        ]
        if differ and values[0].numel():
            out.append(
                Finding(
                    Kind.TIE_STORED_TWICE,
                    (group[0], *differ),
                    f"one Parameter in the model, two different tensors in the file: load_state_dict copies both "
                    f"into it and keeps whichever it copies last ({group[-1]})",
                    "find which one the model was trained with and save the tied model's state dict again",
                    True,
                )
            )
    return out


def _as_loaded(value: torch.Tensor, dtype: Any) -> torch.Tensor:
    """``value`` as load_state_dict copies it into a Parameter of ``dtype`` (None: as it is)."""
    if not isinstance(dtype, torch.dtype) or value.dtype == dtype:
        return value
    try:
        return value.to(dtype)
    except (RuntimeError, TypeError):  # a cast torch has no kernel for: compared as stored
        return value


def _shapes_and_dtypes(found: Mapping[str, TensorInfo], expected: Mapping[str, TensorInfo]) -> list[Finding]:
    common = [k for k in expected if k in found]
    shapes = tuple(k for k in common if found[k].shape != expected[k].shape)
    dtypes = tuple(k for k in common if found[k].dtype != expected[k].dtype and k not in shapes)
    out = []
    if shapes:
        detail = "; ".join(f"{k}: file {list(found[k].shape)}, model {list(expected[k].shape)}" for k in shapes[:5])
        out.append(Finding(Kind.SHAPE, shapes, detail, "build the model with the config the file was saved with", True))
    if dtypes:
        detail = "; ".join(f"{k}: file {found[k].dtype}, model {expected[k].dtype}" for k in dtypes[:5])
        out.append(
            Finding(
                Kind.DTYPE,
                dtypes,
                detail + " (load_state_dict copies with a cast; assign=True keeps the file's dtype)",
                "build the model in the file's dtype if the cast loses precision you need",
                False,
            )
        )
    return out


def match_task(message: dict[str, Any]) -> dict[str, Any]:
    """The ``keymatch.file`` task of `workers`: read the checkpoint at ``message["path"]`` and
    match it with ``message["layout"]``: ``{"match": KeyMatch JSON}``, or ``{"refused": why}``
    (one line naming the file) when the file cannot be read as a state dict."""
    from ckpt_compat.identify import NotAFile
    from ckpt_compat.stored import read_stored

    path = Path(message["path"])
    try:
        stored = read_stored(path, message["max_size"], trusted=bool(message.get("trusted")))
    except (StoredError, NotAFile) as exc:
        return {"refused": str(exc)}
    except OSError as exc:
        return {"refused": f"{path}: cannot read it ({exc.strerror or exc})"}
    return {"match": match(stored, Layout.from_json(message["layout"]), message["model"]).to_json()}
