"""A corpus's ``manifest.json``: what was written, by which torch, and how to check it (`Entry`,
`Manifest`).

`verify` reads manifests of corpora other machines wrote, so `Manifest.read` takes nothing on
trust: every field has its type, every name is a name (`results.check_name`: it reaches reports and
matrices as it is), the torch is a release, each file stays inside the corpus, and each model entry
names a spec the manifest holds. A manifest that breaks any of these is a `ManifestError` naming the
file, the entry and the field, never a crash or a cell judged on what it claims.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ckpt_compat.errorinfo import ErrorInfo
from ckpt_compat.results import Endpoint, Outcome, check_endpoint, check_name, check_options
from ckpt_compat.trust import OutsideCorpus, inside

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "ckpt-compat/manifest/1"
KINDS = ("model", "training", "bundle", "stream")
_REDO = "re-run `ckpt-compat produce`"


class ManifestError(ValueError):
    pass


@dataclass
class Entry:
    """One spec in one format: the file written (or why none was)."""

    spec: str
    spec_id: str
    format: str
    file: str | None
    outcome: str
    detail: str = ""
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)  # early manifests kept records here
    # "model" (a spec's state dict or module), or a whole object: "training" (a training
    # checkpoint), "bundle" (a dict of state dicts and plain values), "stream" (several saves).
    kind: str = "model"
    options: dict[str, Any] = field(default_factory=dict)  # cell options the entry implies (optimizer, ...)
    reference: str | None = None  # training: the producer's uninterrupted run, to resume against
    # xxh3-128 of the file's bytes as written (a folder: of its files' names and bytes), so that
    # `verify` finds any byte changed since, also where loading cannot (metadata, padding, text).
    digest: str | None = None
    reference_digest: str | None = None  # the same of the training reference beside it
    # A failed save, typed (ErrorInfo JSON): `verify` under the producer's torch judges it as the
    # cell `run` makes of it, so an exporter a pin broke fails the gate instead of writing nothing.
    error: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """As written: fields left at their defaults are left out, as early manifests had none."""
        defaults = Entry("", "", "", None, "")
        return {
            k: v
            for k, v in self.__dict__.items()
            if k in ("spec", "spec_id", "format", "file", "outcome") or v != getattr(defaults, k)
        }


@dataclass
class Manifest:
    torch: str
    device: str
    versions: dict[str, str]
    formats: dict[str, dict[str, Any]]
    specs: dict[str, dict[str, Any]]
    entries: list[Entry]
    tensors: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # spec -> key -> record

    @property
    def producer(self) -> Endpoint:
        return Endpoint(self.torch, self.device)

    def records(self, entry: Entry) -> dict[str, dict[str, Any]]:
        """Per-tensor dtype, shape and digest of what ``entry``'s file holds."""
        return entry.tensors or self.tensors.get(entry.spec, {})

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "torch": self.torch,
            "device": self.device,
            "versions": self.versions,
            "formats": self.formats,
            "specs": self.specs,
            "tensors": self.tensors,
            "entries": [e.to_json() for e in self.entries],
        }

    @classmethod
    def read(cls, corpus: Path) -> Manifest:
        path = corpus / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read it ({exc.strerror})") from exc
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ManifestError(f"{path}: not a valid manifest ({exc!s:.200}); {_REDO}") from exc
        if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
            raise ManifestError(f"{path}: not a {MANIFEST_SCHEMA} manifest; {_REDO}")
        try:
            manifest = _manifest(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{path}: malformed manifest ({_said(exc)}); {_REDO}") from exc
        for entry in manifest.entries:
            try:
                _check_entry(corpus, manifest, entry)
            except (OutsideCorpus, KeyError, TypeError, ValueError) as exc:
                raise ManifestError(f"{path}: entry {entry.spec}/{entry.format}: {_said(exc)}") from exc
        return manifest


def _said(exc: Exception) -> str:
    return f"missing field {exc}" if isinstance(exc, KeyError) else f"{exc!s:.300}"


def _mapping(what: str, value: Any, of: type | None = None) -> dict[str, Any]:
    """``value`` if it is a JSON object (whose values are all ``of``); else ValueError."""
    if not isinstance(value, dict) or (of is not None and not all(isinstance(v, of) for v in value.values())):
        kind = f"an object of {of.__name__} values" if of is not None else "an object"
        raise ValueError(f"{what} must be {kind}, got {type(value).__name__}")
    return value


def _manifest(data: dict[str, Any]) -> Manifest:
    producer = check_endpoint("the producer", {"torch": data["torch"], "device": data["device"]})
    specs = _mapping("specs", data["specs"], dict)
    for name, spec in specs.items():
        _check_spec(check_name("a spec's name", name), spec)
    entries = data["entries"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("entries must be a list of objects")
    if not entries:
        raise ValueError("entries is empty: it lists no file to verify")
    known = {f.name for f in fields(Entry)}
    for e in entries:
        if unknown := sorted(set(e) - known):
            raise ValueError(f"an entry has unknown field(s) {unknown}")
    return Manifest(
        torch=producer.torch,
        device=producer.device,
        versions=_mapping("versions", data["versions"], str),
        formats=_mapping("formats", data["formats"], dict),
        specs=specs,
        entries=[Entry(**e) for e in entries],
        tensors=_mapping("tensors", data.get("tensors", {}), dict),
    )


def _check_spec(name: str, spec: dict[str, Any]) -> None:
    """A spec as `ModelSpec.from_json` reads it, or a user's model named by MODULE:NAME (checked
    here as names only: importing it is for a trusted corpus, in `verify`)."""
    from ckpt_compat.specs import ModelSpec, SpecError
    from ckpt_compat.usermodel import is_user_model

    if is_user_model(spec):
        check_name(f"spec {name!r} model", spec.get("model"))
        if spec.get("inputs") is not None:
            check_name(f"spec {name!r} inputs", spec["inputs"])
        return
    try:
        ModelSpec.from_json(spec)
    except (SpecError, RecursionError) as exc:
        raise ValueError(f"spec {name!r}: {exc!s:.200}") from exc


def _check_entry(corpus: Path, manifest: Manifest, entry: Entry) -> None:
    check_name("spec", entry.spec)
    check_name("spec_id", entry.spec_id)
    check_name("format", entry.format)
    Outcome(entry.outcome)
    if entry.kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {entry.kind!r:.100}")
    if entry.kind == "model" and entry.spec not in manifest.specs:
        raise ValueError(f"names spec {entry.spec!r}, which the manifest's specs do not hold")
    if not isinstance(entry.detail, str):
        raise ValueError(f"detail must be text, got {type(entry.detail).__name__}")
    _mapping("tensors", entry.tensors, dict)
    check_options("options", entry.options)
    for name in ("file", "reference", "digest", "reference_digest"):
        value = getattr(entry, name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be text or null, got {type(value).__name__}")
    for relative in (entry.file, entry.reference):  # a foreign manifest must point a loader nowhere else
        if relative is not None:
            inside(corpus, relative)
    if entry.error is not None:  # a failed save is judged on its error: it must read
        ErrorInfo.from_json(entry.error)
