"""Process helpers for the tests that kill things: what /proc says about a pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


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


def start_parent(script: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """``python -c script`` in a session of its own, and the JSON line it prints once its children run."""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert parent.stdout is not None
    return parent, json.loads(parent.stdout.readline())


def sigkill(parent: subprocess.Popen[str]) -> None:
    time.sleep(0.5)  # its child is busy on "hang": it will not notice a closed stdin by itself
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()


def wait_gone(pids: list[int], seconds: float = 10) -> bool:
    """Whether every one of ``pids`` is gone within ``seconds``."""
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)
