"""The committed fixtures: corpora written by real torch releases (older and newer than the installed
one), verified under the installed torch on every test run, so old -> current is checked without
installing old torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt_compat.corpus import find_corpora
from ckpt_compat.devices import available_devices
from ckpt_compat.expectations import BUILTIN, Expectations
from ckpt_compat.isolation import Pool
from ckpt_compat.manifest import Manifest
from ckpt_compat.results import CellResult
from ckpt_compat.verify import verify
from ckpt_compat.versions import release

FIXTURES = Path(__file__).parents[1] / "ckpt_compat" / "fixtures"
CORPORA = find_corpora([FIXTURES / "corpora"])


@pytest.fixture(scope="module")
def verified(workers: Pool) -> list[CellResult]:
    # Committed fixtures are trusted (reviewed in this repository), so whole-model pickles load too.
    return verify(CORPORA, trusted=lambda _: True, consumers=available_devices(), pool=workers)


def test_fixtures_cover_five_releases_including_2_0_and_stay_small() -> None:
    releases = {release(Manifest.read(c).torch) for c in CORPORA}
    assert len(releases) >= 5 and any(r.startswith("2.0.") for r in releases), releases
    size = sum(p.stat().st_size for p in (FIXTURES / "corpora").rglob("*") if p.is_file())
    assert size <= 20 * 2**20, f"fixtures are {size / 2**20:.1f} MiB"


@pytest.mark.parametrize("corpus", CORPORA, ids=[c.name for c in CORPORA])
def test_fixture_corpus_verifies_under_the_installed_torch(corpus: Path, verified: list[CellResult]) -> None:
    producer = Manifest.read(corpus).torch
    results = [r for r in verified if r.cell.producer.torch == producer]
    expectations = Expectations.load([BUILTIN, FIXTURES / "expectations.toml"])
    unexplained = [r for r in results if not expectations.judge_one(r).explained]
    assert results
    assert unexplained == [], "\n".join(
        f"{r.cell.variant} {r.outcome.value}: {r.detail[:300]}" for r in unexplained[:10]
    )
    assert sum(r.outcome.value == "ok" for r in results) > len(results) / 3


@pytest.mark.parametrize("corpus", CORPORA, ids=[c.name for c in CORPORA])
def test_each_fixture_was_written_with_working_pins_and_whole_objects(corpus: Path) -> None:
    """The pins of noxfile.py's TORCH table worked when the fixture was written: safetensors imported
    and wrote both formats (0.6.0/0.6.1 would not have, on torch < 2.3), and the objects that only
    the formats holding arbitrary objects keep are there, complex32 included."""
    manifest = Manifest.read(corpus)
    assert manifest.formats["safetensors_file"]["available"] and manifest.formats["safetensors_model"]["available"]
    assert manifest.versions["safetensors"] not in ("0.6.0", "0.6.1", "")
    kinds = {(e.kind, e.format) for e in manifest.entries if e.file is not None}
    for kind in ("training", "bundle", "stream"):
        assert {(kind, "torch_zip"), (kind, "torch_legacy")} <= kinds, kind
    assert "dtype-complex32" in manifest.specs


def test_every_training_fixture_resumes_or_is_a_known_cross_release_change(verified: list[CellResult]) -> None:
    expectations = Expectations.load([BUILTIN, FIXTURES / "expectations.toml"])
    resumed = [
        r for r in verified if r.cell.options.get("check") == "resume" and r.cell.options.get("weights_only") is False
    ]
    assert {release(r.cell.producer.torch) for r in resumed} == {release(Manifest.read(c).torch) for c in CORPORA}
    for r in resumed:
        judged = expectations.judge_one(r)
        assert judged.explained, r.detail
        # The checkpoint itself always loads exactly; only training on from it may drift.
        assert not [d for d in r.differences if d.root == "checkpoint"], r.detail
