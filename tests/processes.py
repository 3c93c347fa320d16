"""Process helpers for the tests that kill things: what /proc says about a pid."""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Live processes below ``pid``: its children and theirs (a fork server's workers), and the
    processes of any session one of them leads."""
    links: list[tuple[int, int, int]] = []  # (pid, parent, session)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        links.append((int(entry.name), int(stat[1]), int(stat[3])))
    found: list[int] = []
    above = {pid}
    while True:
        new = [p for p, parent, session in links if (parent in above or session in above) and p not in above]
        if not new:
            return found
        found += new
        above.update(new)
