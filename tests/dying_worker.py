"""A `ckpt_compat.workers` process that SIGKILLs itself on the one spec named by
``CKPT_COMPAT_TEST_DIE_ON``: a worker killed in the middle of a real run, for tests/test_propcheck.py."""

from __future__ import annotations

import os
import signal
from typing import Any

from ckpt_compat.isolation import serve
from ckpt_compat.specs import ModelSpec
from ckpt_compat.workers import handle


def _handle(message: dict[str, Any]) -> Any:
    if "spec" in message and ModelSpec.from_json(message["spec"]).id == os.environ["CKPT_COMPAT_TEST_DIE_ON"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return handle(message)


if __name__ == "__main__":
    serve(_handle)
