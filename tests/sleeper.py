"""A child for tests/test_isolation.py: answers, hangs, dies, allocates or spawns on request."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from ckpt_compat.isolation import serve


def handle(message: dict[str, Any]) -> Any:
    action = message["do"]
    if action == "echo":
        return {"pid": os.getpid(), "tmp": os.environ.get("TMPDIR")}
    if action == "hang":
        time.sleep(3600)
    if action == "die":
        print("dying on purpose", file=sys.stderr, flush=True)
        os._exit(7)
    if action == "allocate":
        return len(bytearray(message["bytes"]))
    if action == "spawn":  # a grandchild, as torch.multiprocessing starts them
        grandchild = subprocess.Popen(["sleep", "3600"])
        return {"pid": os.getpid(), "grandchild": grandchild.pid}
    raise ValueError(action)


if __name__ == "__main__":
    serve(handle)
