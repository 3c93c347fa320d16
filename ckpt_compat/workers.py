"""The worker side of `isolation.Pool`: one contained interpreter that serves the tasks of ``run``,
``produce`` and ``verify``, so one pool of workers can carry a mix of them.

A message names its task (``{"task": "run.spec", ...}``); the answer is what the task returns, or
``{"error": ...}`` when it raised (the task's work is lost, not the worker). Tasks are looked up
here, by name, never imported from a name a message carries.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

# name -> "module:function"; each function takes the message and returns JSON-able data.
TASKS = {
    "verify.entry": "ckpt_compat.verify:entry_task",
    "run.spec": "ckpt_compat.propcheck:run_task",
    "run.objects": "ckpt_compat.propcheck:run_task",
    "produce.spec": "ckpt_compat.corpus:produce_task",
    "produce.objects": "ckpt_compat.corpus:produce_task",
    "formats.availability": "ckpt_compat.formats:availability_task",
    "keymatch.file": "ckpt_compat.keymatch:match_task",
}
AVAILABILITY = {"task": "formats.availability"}  # asked first: the workers import every format's packages

ARGV = ["ckpt_compat.workers"]  # what `isolation.Child` runs


def handle(message: dict[str, Any]) -> Any:
    from ckpt_compat.errorinfo import ErrorInfo

    try:
        module, _, function = TASKS[message["task"]].partition(":")
        return getattr(importlib.import_module(module), function)(message)
    except Exception as exc:  # the task failed, not the worker: its caller decides what that costs
        return {"error": ErrorInfo.of(exc).to_json()}


def preload() -> None:
    """What a fork server for these workers imports once (`forkserver`): torch and every format's
    packages, which every worker imports anyway (`AVAILABILITY` is asked first), and dynamo, which
    torch.export's load and export and the ONNX exporter import on first use (~0.7 s a worker).
    Not ONNX Runtime: it starts a thread at import, and a thread does not survive a fork."""
    handle(AVAILABILITY)
    with contextlib.suppress(ImportError):  # a torch without it has no torch.export either
        import torch._dynamo  # noqa: F401


if __name__ == "__main__":
    import torch  # noqa: F401 - now, while the parent prepares the work, not on the first task

    from ckpt_compat.isolation import serve

    serve(handle)
