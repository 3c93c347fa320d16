"""``ckpt-compat check --model``: a user's model round-tripped (and written as a corpus with
``--corpus``), or a checkpoint file's keys compared with it (``check FILE --model``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_compat.cli_common import EXIT_FAILED, EXIT_OK, UsageError, select_formats, writable_dir
from ckpt_compat.cli_common import expectations as load_expectations

if TYPE_CHECKING:
    from ckpt_compat.forkserver import Forkserver
    from ckpt_compat.formats import Format


def user_model(args: argparse.Namespace) -> Any:
    from ckpt_compat.usermodel import UserModelError, from_references

    try:
        return from_references(args.model, args.inputs)
    except UserModelError as exc:
        raise UsageError(str(exc)) from None


def run_check_model(args: argparse.Namespace) -> int:
    from ckpt_compat.isolation import scratch_dir
    from ckpt_compat.modelcheck import check_model
    from ckpt_compat.usermodel import UserModelError

    model = user_model(args)
    formats = select_formats(args.formats)
    expectations = load_expectations(args.expectations)
    out = writable_dir(args.out)
    if model.call is None and not args.quiet:
        print(
            f"--model {args.model}: no --inputs, so the forward and the tracing formats are not checked",
            file=sys.stderr,
        )
    with scratch_dir() as workdir:
        try:
            checked = check_model(model, formats, expectations, Path(workdir))
        except UserModelError as exc:
            raise UsageError(str(exc)) from None
    if args.output_format == "json":
        print(json.dumps(checked.to_json(), indent=2))
    else:
        print(checked.render(markdown=args.output_format == "markdown"), end="")
    if args.corpus is not None:
        model_corpus(model, formats, args)
    from ckpt_compat.report import Report

    # The cells as a results file in the report schema, which `report` and `gate` read: a
    # user's model is gated across torch versions like the corpora are.
    Report(
        [j.result for j in checked.judgements],
        {},
        expectations,
        run={
            "command": "check",
            "model": model.id,
            "limitations_pass": True,
            "seconds": round(checked.seconds, 2),
            "out": str(out),
        },
        limitations_pass=True,
    ).write(out)
    return EXIT_OK if checked.passed else EXIT_FAILED


def model_corpus(model: Any, formats: list[Format], args: argparse.Namespace) -> None:
    from ckpt_compat.corpus import produce
    from ckpt_compat.manifest import MANIFEST, ManifestError
    from ckpt_compat.roundtrip import file_stem

    name = file_stem(model.id)
    try:
        manifest = produce(args.corpus, formats, specs={name: model}, objects=False)
    except ManifestError as exc:
        raise UsageError(f"--corpus {exc}") from None
    written = sum(e.file is not None for e in manifest.entries)
    print(
        f"wrote {written} file(s) of {model.id} under torch {manifest.torch}; manifest: {args.corpus / MANIFEST}",
        file=sys.stderr,
    )


# The checkpoint is read in a contained child: seconds for the largest file (a torch.save file is
# unpickled whole), and its memory limit, as verify's workers have.
READ_TIMEOUT = 900.0


def run_match_model(path: Path, args: argparse.Namespace) -> int:
    """``check FILE --model``. The file is someone else's: torch.load (weights_only=True, whose
    unpickler ran code before torch 2.6: CVE-2025-32434) and safetensors read it in a contained,
    memory-limited child (`keymatch.match_task`); this process builds the user's model, on meta,
    and renders the child's typed answer."""
    from ckpt_compat.forkserver import Forkserver

    # The reader is a fork of a server forked from this process now, before the user's code runs
    # (where this process may be forked: `Forkserver`): it imports neither torch again nor any of
    # the user's code, and the server readies while the model is built.
    server = Forkserver("ckpt_compat.keymatch", fork_here=args.server_template) if args.server_template else None
    if server is None:
        return _match_model(path, args, None)
    with server:
        server.start()
        return _match_model(path, args, server)


def _match_model(path: Path, args: argparse.Namespace, server: Forkserver | None) -> int:
    from ckpt_compat.identify import MAX_SIZE
    from ckpt_compat.isolation import MEMORY_LIMIT, Failure, call_once
    from ckpt_compat.keymatch import KeyMatch, Layout
    from ckpt_compat.usermodel import UserModelError
    from ckpt_compat.workers import ARGV

    model = user_model(args)
    try:
        layout = Layout.of(model.model("meta"))
    except UserModelError as exc:
        raise UsageError(str(exc)) from None
    request = {
        "task": "keymatch.file",
        "path": str(path),
        "max_size": args.max_size or MAX_SIZE,
        "layout": layout.to_json(),
        "model": model.id,
        "trusted": bool(args.trust),
    }
    answer = call_once(ARGV, request, timeout=READ_TIMEOUT, memory=MEMORY_LIMIT, forkserver=server)
    if isinstance(answer, Failure):
        raise UsageError(
            f"{path}: the process reading it failed ({answer.kind}: {' '.join(answer.message.split())[:300]}); "
            "run 'ckpt-compat check FILE' to see what is wrong with it"
        )
    if isinstance(answer, dict) and isinstance(answer.get("refused"), str):
        raise UsageError(answer["refused"])
    try:
        found = KeyMatch.from_json(answer.get("match") if isinstance(answer, dict) else None)
    except (TypeError, KeyError, ValueError) as exc:
        raise RuntimeError(f"{path}: the reading process answered {str(answer)[:300]!r} ({exc})") from None
    if args.output_format == "json":
        print(json.dumps(found.to_json(), indent=2))
    else:
        print(found.render(markdown=args.output_format == "markdown"), end="")
    return EXIT_OK if found.loads_strictly else EXIT_FAILED
