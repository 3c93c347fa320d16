from __future__ import annotations

import pytest

from ckpt_compat import versions


def test_releases_drop_the_build_and_order_numerically() -> None:
    assert versions.release("2.13.0+cu130") == "2.13.0"
    assert sorted(["2.10.0", "2.2.2+cpu", "2.9.1"], key=versions.key) == ["2.2.2+cpu", "2.9.1", "2.10.0"]
    assert versions.parse("2.6.0+cu124") == versions.parse("2.6.0")
    with pytest.raises(ValueError, match="'banana' is not a torch version"):
        versions.parse("banana")


def test_bounds_are_a_specifier_or_any_said_outright() -> None:
    assert "2.15.0" in versions.Bounds.parse("any") and "2.0.1" in versions.Bounds.parse("any")
    below = versions.Bounds.parse("<2.6")
    assert "2.5.1+cpu" in below and "2.6.0" not in below
    assert "2.16.0.dev20261101" in versions.Bounds.parse(">=2.16")  # a nightly counts as its release
    for bad in ("", "  ", "soon"):
        with pytest.raises(ValueError):
            versions.Bounds.parse(bad)
