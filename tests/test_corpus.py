from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import pytest

from ckpt_compat.corpus import corpus_specs, file_digest, find_corpora, produce
from ckpt_compat.formats import available_formats, get_format
from ckpt_compat.isolation import Pool
from ckpt_compat.manifest import MANIFEST, Manifest, ManifestError
from ckpt_compat.specs import build


def test_fixed_spec_set_builds_and_covers_the_edge_cases() -> None:
    specs = corpus_specs()
    assert {"tied", "layouts", "bits", "weight-norm", "spectral-norm", "dtype-float8_e4m3fn", "drawn-00"} <= set(specs)
    for name in ("layers-float32", "tied", "layouts", "nested"):
        build(specs[name])


def test_produce_writes_files_and_a_manifest_last(tmp_path: Path) -> None:
    specs = {k: v for k, v in corpus_specs().items() if k in ("tied", "layouts", "dtype-complex128")}
    manifest = produce(tmp_path, available_formats(), specs=specs)
    again = Manifest.read(tmp_path)
    assert again.to_json() == manifest.to_json()
    files = {e.file for e in manifest.entries if e.file}
    assert files and all((tmp_path / f).exists() for f in files)  # DCP checkpoints are directories
    tied = next(e for e in manifest.entries if e.spec == "tied" and e.format == "torch_zip")
    assert set(manifest.records(tied)) == set(build(specs["tied"]).state_dict())
    assert all(len(r["digest"]) == 32 for r in manifest.records(tied).values())
    refused = next(e for e in manifest.entries if e.spec == "tied" and e.format == "safetensors_file")
    assert refused.file is None and refused.outcome == "unsupported" and "share memory" in refused.detail
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [MANIFEST]  # no temp files left


def test_a_corpus_without_manifest_is_not_a_corpus(tmp_path: Path) -> None:
    (tmp_path / "half" / "x").mkdir(parents=True)
    produce(tmp_path / "whole", available_formats()[:1], specs={"tied": corpus_specs()["tied"]})
    assert find_corpora([tmp_path]) == [(tmp_path / "whole").resolve()]


@pytest.mark.parametrize(
    ("content", "message"), [("{", "not a valid manifest"), ('{"schema": "x"}', "not a ckpt-compat")]
)
def test_bad_manifests_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(ManifestError, match=f"{tmp_path / MANIFEST}: {message}"):
        Manifest.read(tmp_path)


def test_manifest_records_versions(tmp_path: Path) -> None:
    produce(tmp_path, available_formats()[:1], specs={"tied": corpus_specs()["tied"]})
    data = json.loads((tmp_path / MANIFEST).read_text())
    assert {"ckpt_compat", "python", "platform", "numpy", "safetensors", "cpu"} <= set(data["versions"])
    assert data["versions"]["cpu"].split()[0] == platform.machine()  # and the kernels torch picks here
    assert data["device"] == "cpu" and data["formats"]["torch_zip"]["available"] is True


def test_sample_heavy_writes_heavy_formats_for_the_sample_only(tmp_path: Path) -> None:
    from ckpt_compat.corpus import HEAVY_SAMPLE

    specs = {k: v for k, v in corpus_specs().items() if k in ("tied", "bits")}
    heavy = [f for f in available_formats() if f.heavy]
    manifest = produce(tmp_path, available_formats(), specs=specs, sample_heavy=True)
    written = {(e.spec, e.format) for e in manifest.entries}
    assert "tied" in HEAVY_SAMPLE and "bits" not in HEAVY_SAMPLE
    assert heavy and all(("tied", f.name) in written and ("bits", f.name) not in written for f in heavy)
    assert ("bits", "torch_zip") in written


def test_the_temporary_directory_of_a_killed_produce_is_no_corpus(tmp_path: Path) -> None:
    done = tmp_path / "torch-x"
    produce(done, [get_format("torch_zip")], specs={"tied": corpus_specs()["tied"]}, objects=False)
    left = tmp_path / ".torch-y.4242.abcd.tmp"
    shutil.copytree(done, left)  # killed after its manifest was written, before the swap
    skipped: list[Path] = []
    assert find_corpora([tmp_path], skipped=skipped) == [done.resolve()]
    assert skipped == [left.resolve()]


def _without_digests(manifest: Manifest) -> dict[str, object]:
    data = manifest.to_json()
    data["entries"] = [{k: v for k, v in e.items() if k not in ("digest", "reference_digest")} for e in data["entries"]]
    return data


def test_workers_side_by_side_write_the_corpus_this_process_writes(tmp_path: Path, workers: Pool) -> None:
    specs = {k: v for k, v in corpus_specs().items() if k in ("tied", "layouts", "nested", "dtype-complex128")}
    formats = [get_format(n) for n in ("torch_zip", "torch_legacy", "torchscript_trace")]
    here = produce(tmp_path / "here", formats, specs=specs)
    lines: list[str] = []
    pooled = produce(tmp_path / "pooled", formats, specs=specs, pool=workers, progress=lines.append)
    # The same manifest, but for the file digests: each is of its own file's bytes, and legacy
    # pickles (storage keys from object ids) and TorchScript archives differ between two saves.
    assert _without_digests(pooled) == _without_digests(here)
    for root, manifest in ((tmp_path / "here", here), (tmp_path / "pooled", pooled)):
        assert all(e.digest == file_digest(root / e.file) for e in manifest.entries if e.file)
    assert sorted(line for line in lines if not line.startswith("objects: ")) == sorted(
        f"{name}: 3 file(s)" for name in specs
    )
    assert sum(line.startswith("objects: ") for line in lines) == 1
    for entry in (e for e in here.entries if e.file and e.kind == "model" and e.format == "torch_zip"):
        assert (tmp_path / "pooled" / entry.file).read_bytes() == (tmp_path / "here" / entry.file).read_bytes()
