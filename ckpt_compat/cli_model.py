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


def run_match_model(path: Path, args: argparse.Namespace) -> int:
    from ckpt_compat.identify import MAX_SIZE, NotAFile
    from ckpt_compat.keymatch import match
    from ckpt_compat.stored import StoredError, read_stored
    from ckpt_compat.usermodel import UserModelError

    model = user_model(args)
    try:
        stored = read_stored(path, args.max_size or MAX_SIZE)
    except (StoredError, NotAFile) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        built = model.model("meta")
    except UserModelError as exc:
        raise UsageError(str(exc)) from None
    found = match(stored, built, model.id)
    if args.output_format == "json":
        print(json.dumps(found.to_json(), indent=2))
    else:
        print(found.render(markdown=args.output_format == "markdown"), end="")
    return EXIT_OK if found.loads_strictly else EXIT_FAILED
