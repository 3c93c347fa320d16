"""Atomic writes flush what they put in place and the entry naming it, and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ckpt_compat.atomic import atomic_dir, write_text


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths this process fsyncs, by the descriptor's link (the name at fsync time)."""
    seen: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return seen


def _neighbours(directory: Path) -> list[Path]:
    """Someone else's files beside the destination: a repository, /tmp."""
    (directory / "repo" / "src").mkdir(parents=True)
    made = [directory / "repo" / "src" / f"m{i}.py" for i in range(20)] + [directory / "notes.txt"]
    for path in made:
        path.write_text("x")
    return made


def test_a_file_written_beside_others_flushes_itself_and_the_directory_only(tmp_path: Path, fsynced: list[str]) -> None:
    neighbours = _neighbours(tmp_path)
    write_text(tmp_path / "results.json", "{}")
    assert (tmp_path / "results.json").read_text() == "{}"
    assert len(fsynced) == 2 and fsynced[0].endswith("/results.json") and fsynced[1] == str(tmp_path)
    assert not {str(p) for p in neighbours} & set(fsynced)


def test_a_directory_swapped_in_flushes_its_whole_tree_and_the_parent_only(tmp_path: Path, fsynced: list[str]) -> None:
    neighbours = _neighbours(tmp_path)
    with atomic_dir(tmp_path / "corpus") as work:
        (work / "sub").mkdir()
        for name in ("manifest.json", "sub/a.pt", "sub/b.pt"):
            (work / name).write_text(name)
    assert (tmp_path / "corpus" / "sub" / "b.pt").read_text() == "sub/b.pt"
    names = [Path(p).relative_to(tmp_path).as_posix() if p.startswith(str(tmp_path)) else p for p in fsynced]
    staged = {n.split("/", 1)[1] if "/" in n else "" for n in names[:-1]}  # under the temporary directory's name
    assert staged == {"", "sub", "manifest.json", "sub/a.pt", "sub/b.pt"}, names
    assert names[-1] == "."  # then the parent's entries, once
    assert not {str(p) for p in neighbours} & set(fsynced)
