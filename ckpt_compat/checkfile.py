"""``ckpt-compat check FILE`` reads a file someone else wrote: torch's archive reader (miniz, C++),
onnx's protobuf parser and checker (C++) and safetensors' parser (Rust) take its bytes. They do so
in a contained child (`isolation.call_once`: its own session, a memory limit, dead with its
parent), never in the command's process: a file made to crash or exhaust one of them costs that
child, and the command says so. The child answers with `inspection.Inspection`'s JSON, which is
checked field by field (`Inspection.from_json`) before anything is rendered from it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

from ckpt_compat.inspection import Inspection

ARGV = ["ckpt_compat.checkfile"]  # what the child runs: this module, serving `handle`
# Seconds the child may read for: every CRC of a large file, read at no less than 64 MiB/s.
READ_TIMEOUT = 900.0
SLOWEST_READ = 64 * 2**20  # bytes per second


class NotRead(ValueError):
    """The child said the file cannot be read as asked (a FIFO, too large, a package missing):
    the caller's usage error, with the child's one line."""


def handle(message: dict[str, Any]) -> dict[str, Any]:
    """In the child: the inspection of ``message["path"]``, or why it cannot be read."""
    from ckpt_compat.identify import NotAFile
    from ckpt_compat.inspection import inspect_checkpoint

    path = Path(message["path"])
    try:
        return {"inspection": inspect_checkpoint(path, max_size=int(message["max_size"])).to_json()}
    except NotAFile as exc:
        return {"usage": str(exc)}
    except OSError as exc:
        return {"usage": f"{path}: cannot read it ({exc.strerror or exc})"}
    except MemoryError:  # the file's doing: a reader asked for more than the child's memory limit
        return {"exhausted": "a reader ran out of the memory the reading process may use"}
    except Exception as exc:  # ckpt-compat's own bug, not a verdict on the file
        from ckpt_compat.errorinfo import ErrorInfo

        return {"error": ErrorInfo.of(exc).to_json()}


def inspect_contained(path: Path, max_size: int) -> Inspection:
    """`inspection.inspect_checkpoint` of ``path``, run in a contained child. A child that dies on
    the file or exhausts its memory makes it broken (torch.load's reader would meet the same bytes);
    raises `NotRead` for what the child refused to read or did not finish reading (a slow disk is no
    verdict on the file), RuntimeError for an answer that is no inspection."""
    from ckpt_compat.isolation import MEMORY_LIMIT, Failure, call_once

    timeout = READ_TIMEOUT + _size(path) / SLOWEST_READ
    answer = call_once(ARGV, {"path": str(path), "max_size": max_size}, timeout=timeout, memory=MEMORY_LIMIT)
    if isinstance(answer, Failure) and answer.kind == "timeout":  # a hostile file, or only a slow disk
        raise NotRead(
            f"{path}: reading it did not finish in {timeout:.0f} s (a file made to hang a reader, or a disk "
            f"slower than {SLOWEST_READ // 2**20} MiB/s); do not load it unchecked"
        )
    died = f"{answer.kind}: {' '.join(answer.message.split())[:300]}" if isinstance(answer, Failure) else None
    if isinstance(answer, dict) and isinstance(answer.get("exhausted"), str):
        died = answer["exhausted"]
    if died is not None:  # a native crash or exhausted memory in torch's, onnx's or our reader
        return Inspection(
            path,
            "not read to the end: it stopped the process reading it",
            "unknown",
            [f"reading it stopped the contained reader ({died}); do not load it"],
        )
    if isinstance(answer, dict) and isinstance(answer.get("usage"), str):
        raise NotRead(answer["usage"])
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        error = answer["error"]
        raise RuntimeError(f"{path}: reading it raised {error.get('type')}: {str(error.get('message'))[:300]}")
    try:
        return Inspection.from_json(answer.get("inspection") if isinstance(answer, dict) else None)
    except ValueError as exc:
        raise RuntimeError(f"{path}: the reading process answered {str(answer)[:300]!r} ({exc})") from None


def _size(path: Path) -> int:
    """Bytes to read: a file's, or a folder's regular files' (a DCP or Hugging Face checkpoint),
    links neither followed nor counted (a link loop in a hostile folder must not hang this)."""
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for folder, _, names in os.walk(path):  # followlinks=False
        for name in names:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(folder, name))
                total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


if __name__ == "__main__":
    from ckpt_compat.isolation import serve

    serve(handle)
