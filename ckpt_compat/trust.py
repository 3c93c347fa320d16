"""Who vouches for a file: the rules that decide whether a loader that can run code may see it.

A file is trusted when this run wrote it, when it is a committed fixture of the *installed*
package (found from the package's own location, never from the current directory), or when the
user passed ``--trust``. An untrusted file is still checked wherever a loader that cannot run code
exists: the checks here say, without unpickling anything, whether a loader that can would only
meet what the weights_only unpickler allows.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

import ckpt_compat
from ckpt_compat.identify import ZIP_ERRORS


class OutsideCorpus(ValueError):
    """A manifest names what no loader may be pointed at: a path outside its corpus (absolute,
    ``..``, or a link leading out), or what is not a checkpoint's kind of file (a FIFO, a device or
    a socket, which a read blocks on or never ends; a link inside a checkpoint folder)."""


def package_fixtures() -> Path | None:
    """The committed corpora inside the installed package (``ckpt_compat/fixtures/corpora``),
    found from the package's own location, or None when it was installed without them."""
    root = Path(ckpt_compat.__file__).resolve().parent / "fixtures" / "corpora"
    return root if root.is_dir() else None


def is_package_fixture(corpus: Path) -> bool:
    root = package_fixtures()
    return root is not None and corpus.resolve().is_relative_to(root)


def inside(corpus: Path, name: str) -> Path:
    """``corpus / name`` for a manifest's relative POSIX path that stays inside ``corpus``."""
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts or "\\" in name:
        raise OutsideCorpus(f"{name!r} is not a path inside the corpus")
    path = corpus / relative
    if not path.resolve().is_relative_to(corpus.resolve()):
        raise OutsideCorpus(f"{name!r} leads outside the corpus (a symbolic link)")
    _regular_files(path, name)
    return path


_PRODUCED = "a corpus holds only what `ckpt-compat produce` writes"


def _regular_files(path: Path, name: str) -> None:
    """``path`` is a regular file, or a folder (DCP, MLflow) of regular files and folders only: a
    produced checkpoint never holds a FIFO, a device, a socket or a link, and a loader reading one
    would block, never end, or read what the corpus does not hold. A path that is not there passes:
    its cells say that loading it failed."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if stat.S_ISDIR(mode):
        for root, folders, files in os.walk(path):  # links are not followed: each is a member seen
            for member in (*folders, *files):
                inner = Path(root) / member
                shown = f"{name}/{inner.relative_to(path).as_posix()}"
                kind = _not_regular(inner.lstat().st_mode, allow_folder=True)
                if kind:
                    raise OutsideCorpus(f"{shown!r} is {kind}: {_PRODUCED} (a folder of regular files)")
    elif kind := _not_regular(mode, allow_folder=False):
        raise OutsideCorpus(f"{name!r} is {kind}, not a checkpoint file: {_PRODUCED}")


def _not_regular(mode: int, *, allow_folder: bool) -> str | None:
    if stat.S_ISREG(mode) or (allow_folder and stat.S_ISDIR(mode)):
        return None
    kinds = [
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ]
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def pickled_refusals(path: Path) -> list[str]:
    """What the pickles inside the zip archive ``path`` name that the weights_only unpickler
    refuses (every global, when this torch does not publish its allowlist), by member; a broken
    archive or pickle is a refusal too."""
    from ckpt_compat.picklescan import UNRESOLVED, allowed_globals, scan_archive

    try:
        scans = scan_archive(path)
    except ZIP_ERRORS as exc:
        return [f"the archive cannot be read ({exc})"]
    allowed = allowed_globals() or set()
    refused: list[str] = []
    for member, s in scans.items():
        if s.error:
            refused.append(f"{member}: {s.error}")
        names = [g for g in s.globals if g not in allowed]
        if names:
            shown = ["a global it computes at load time" if g == UNRESOLVED else g for g in names]
            refused.append(f"{member}: {', '.join(shown)}")
    return refused


def is_torchscript_archive(path: Path) -> bool:
    """A zip whose members are laid out as torch.jit.save writes them (code/ or constants.pkl)."""
    from ckpt_compat.identify import zip_kind

    try:
        names = zipfile.ZipFile(path).namelist()
    except ZIP_ERRORS:
        return False
    return zip_kind(names) == "torchscript"
