"""A manifest from another machine is read only as what `produce` writes: every other shape is a
`ManifestError` naming the file, the entry and the field, before anything is loaded or judged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ckpt_compat.manifest import MANIFEST, Manifest, ManifestError

FIXTURE = Path(__file__).parents[1] / "ckpt_compat" / "fixtures" / "corpora" / "torch-2.13" / MANIFEST
Change = Callable[[dict[str, Any]], object]


def _entry(field: str, value: object) -> Change:
    return lambda m: m["entries"][0].__setitem__(field, value)


def _top(field: str, value: object) -> Change:
    return lambda m: m.__setitem__(field, value)


def _spec(name: str, value: object) -> Change:
    return lambda m: m["specs"].__setitem__(name, value)


DEEP = '{"kind": "dict", "children": {"a": ' * 5000 + "{}" + "}}" * 5000  # JSON text: spliced in as is
HOSTILE: dict[str, tuple[Change, str]] = {
    "torch not text": (_top("torch", 123), "the producer torch must be a name"),
    "torch not a version": (_top("torch", "banana"), "'banana' is not a torch version"),
    "torch with a line of its own": (_top("torch", "2.13.0\n# Gate passed"), "the producer torch must be a name"),
    "device not text": (_top("device", 5), "the producer device must be a name"),
    "specs not an object": (_top("specs", []), "specs must be an object of dict values, got list"),
    "versions not text": (_top("versions", {"numpy": 2}), "versions must be an object of str values"),
    "formats not an object": (_top("formats", []), "formats must be an object of dict values"),
    "tensors not an object": (_top("tensors", []), "tensors must be an object of dict values"),
    "entries an object": (_top("entries", {}), "entries must be a list of objects"),
    "no entries": (_top("entries", []), "entries is empty: it lists no file to verify"),
    "a spec that is none": (_spec("bits", {"root": 5}), "spec 'bits': spec.root: expected a node of kind 'dict'"),
    "a spec nested past recursion": (_spec("bits", {"root": "DEEP"}), "not a valid manifest (maximum recursion"),
    "a user model not named": (_spec("bits", {"format": "ckpt-compat/user-model/1", "model": 5}), "model must be"),
    "an unknown field": (_entry("bogus", 1), "an entry has unknown field(s) ['bogus']"),
    "a spec id that makes a table row": (_entry("spec_id", "x |\n\n# Gate passed <!--"), "spec_id must be a name"),
    "a spec name with a backtick": (_entry("spec", "bits`"), "spec must be a name"),
    "a format not text": (_entry("format", 5), "format must be a name"),
    "an unknown outcome": (_entry("outcome", "weird"), "'weird' is not a valid Outcome"),
    "an unknown kind": (_entry("kind", "weird"), "kind must be one of model, training, bundle, stream"),
    "a spec the manifest lacks": (_entry("spec", "nosuchspec"), "names spec 'nosuchspec', which the manifest's"),
    "options not an object": (_entry("options", "x"), "options must be a mapping"),
    "an option value with a line": (_entry("options", {"optimizer": "a\nb"}), "options['optimizer'] must be a name"),
    "a digest not text": (_entry("digest", 5), "digest must be text or null, got int"),
    "a detail not text": (_entry("detail", 5), "detail must be text, got int"),
    "a file outside": (_entry("file", "../x.pt"), "'../x.pt' is not a path inside the corpus"),
}


def _corpus(tmp_path: Path, change: Change | None = None) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    data = json.loads(FIXTURE.read_text())
    if change is not None:
        change(data)
    (corpus / MANIFEST).write_text(json.dumps(data).replace('"DEEP"', DEEP))
    return corpus


def test_a_produced_manifest_reads_and_writes_back_the_same(tmp_path: Path) -> None:
    manifest = Manifest.read(_corpus(tmp_path))
    assert len(manifest.entries) > 100 and manifest.torch.startswith("2.13.0")
    assert manifest.to_json() == json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", HOSTILE)
def test_every_other_shape_is_refused_naming_the_field(tmp_path: Path, name: str) -> None:
    change, fragment = HOSTILE[name]
    with pytest.raises(ManifestError) as caught:
        Manifest.read(_corpus(tmp_path, change))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'corpus' / MANIFEST}: ") and fragment in message, message


def test_verify_refuses_a_hostile_manifest_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, _entry("spec_id", "x |\n\n# Gate passed <!--"))
    shutil.copytree(FIXTURE.parent / "bits", corpus / "bits")
    out = tmp_path / "results.json"
    root = Path(__file__).parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "ckpt_compat.cli", "verify", str(corpus), "--no-fixtures", "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "spec_id must be a name" in lines[0] and "\\n\\n# Gate passed" in lines[0]
    assert not out.exists()
