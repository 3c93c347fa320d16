"""The committed fixtures: corpora written by real torch releases (older and newer than the installed
one), verified under the installed torch on every test run, so old -> current is checked without
installing old torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt_compat.corpus import Manifest, find_corpora
from ckpt_compat.devices import available_devices
from ckpt_compat.expectations import BUILTIN, Expectations
from ckpt_compat.matrix import CellResult, release
from ckpt_compat.verify import verify

FIXTURES = Path(__file__).parents[1] / "fixtures"
CORPORA = find_corpora([FIXTURES / "corpora"])


@pytest.fixture(scope="module")
def verified() -> list[CellResult]:
    # Committed fixtures are trusted (reviewed in this repository), so whole-model pickles load too.
    return verify(CORPORA, trusted=lambda _: True, consumers=available_devices())


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
    unexplained = [r for r in results if r.not_ok and expectations.explain(r) is None]
    assert results
    assert unexplained == [], "\n".join(
        f"{r.cell.variant} {r.outcome.value}: {r.detail[:300]}" for r in unexplained[:10]
    )
    assert sum(r.outcome.value == "ok" for r in results) > len(results) / 3
