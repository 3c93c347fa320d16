"""The one torch-version parser: releases, their order, and the bounds known issues are stated in.

The matrix axes are releases, not builds: ``2.13.0+cpu`` and ``2.13.0+cu130`` behave alike for
serialization, so the local part is dropped everywhere a version is compared.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

ANY = "any"


def release(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``."""
    return version.split("+", 1)[0]


def parse(version: str) -> Version:
    """``2.13.0+cpu`` -> ``Version("2.13.0")``; a nightly ``2.16.0.dev20261101`` is its release,
    2.16.0. Raises ValueError naming a version that is not one."""
    try:
        return Version(Version(release(version)).base_version)
    except InvalidVersion:
        raise ValueError(f"{version!r} is not a torch version") from None


def key(version: str) -> tuple[int, ...]:
    """A sort key that orders releases numerically (2.10 after 2.9), never raising."""
    return tuple(int(p) if p.isdigit() else 0 for p in release(version).split("."))


@dataclass(frozen=True)
class Bounds:
    """A version range as written in a known issue: a PEP 440 specifier, or ``any`` said outright."""

    text: str
    specifier: SpecifierSet | None  # None: any release

    @classmethod
    def parse(cls, text: str) -> Bounds:
        text = text.strip()
        if text == ANY:
            return cls(ANY, None)
        if not text:
            raise ValueError(f"empty version bound; write {ANY!r} for an unbounded side")
        try:
            return cls(text, SpecifierSet(text))
        except InvalidSpecifier:
            raise ValueError(f"{text!r} is not a version bound (e.g. '>=2.4,<2.6' or {ANY!r})") from None

    def __contains__(self, version: str) -> bool:
        return self.specifier is None or self.specifier.contains(parse(version))

    def __str__(self) -> str:
        return self.text
