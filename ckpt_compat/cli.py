"""The ``ckpt-compat`` command line: each command is a short pipeline of steps.

Bad input (an unknown format, an unwritable --out, a spec that is not JSON, ...) ends with one
line on stderr and exit code 2; a run that finds an unexpected outcome exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from ckpt_compat.expectations import Expectations
    from ckpt_compat.formats import Format
    from ckpt_compat.report import Report
    from ckpt_compat.specs import ModelSpec

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ckpt-compat", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--formats",
            default=None,
            metavar="A,B",
            help="comma-separated format names (default: every available format)",
        )
        p.add_argument(
            "--out",
            type=Path,
            default=Path("ckpt-compat-report"),
            metavar="DIR",
            help="where report.json and report.md go (default: ckpt-compat-report/)",
        )
        p.add_argument(
            "--expectations",
            type=Path,
            action="append",
            default=[],
            metavar="TOML",
            help="extra known-issue file(s), on top of the built-in one",
        )
        p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    run = commands.add_parser("run", help="property-check every format, device and load option on this torch")
    run.add_argument(
        "--examples",
        type=_positive,
        default=200,
        metavar="N",
        help="hypothesis examples (model specs) to draw (default: 200, about 15 s on 2 cores)",
    )
    run.add_argument("--seed", type=int, default=0, help="hypothesis seed (default: 0, reproducible)")
    run.add_argument(
        "--shrink-seconds",
        type=float,
        default=20.0,
        metavar="S",
        help="time budget for shrinking a failure (default: 20)",
    )
    common(run)

    check = commands.add_parser("check", help="check one spec file (e.g. a failing spec from a report)")
    check.add_argument("--spec", type=Path, required=True, metavar="FILE", help="a ModelSpec JSON file")
    common(check)

    commands.add_parser("formats", help="list the formats and whether they are available here")
    return parser


def _version() -> str:
    from ckpt_compat import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        command = {"run": _run, "check": _check, "formats": _formats}[args.command]
        return command(args)
    except UsageError as exc:
        print(f"ckpt-compat: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ckpt-compat: interrupted", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------- steps


def _select_formats(text: str | None) -> list[Format]:
    from ckpt_compat.formats import UnknownFormat, Unsupported, available_formats, parse_format_list

    if text is None:
        return available_formats()
    try:
        return parse_format_list(text)
    except (UnknownFormat, Unsupported) as exc:
        raise UsageError(f"--formats: {exc}") from None


def _writable_dir(out: Path) -> Path:
    """Create ``out`` and prove it is writable before spending minutes on a run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror}); choose a writable directory") from None
    return out


def _expectations(paths: list[Path]) -> Expectations:
    from ckpt_compat.expectations import BUILTIN, Expectations, ExpectationsError

    try:
        return Expectations.load([BUILTIN, *paths])
    except ExpectationsError as exc:
        raise UsageError(f"--expectations: {exc}") from None


def _read_spec(path: Path) -> ModelSpec:
    from ckpt_compat.specs import ModelSpec, SpecError

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--spec {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--spec {path}: not a text file; expected ModelSpec JSON") from None
    try:
        return ModelSpec.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--spec {path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except SpecError as exc:
        raise UsageError(f"--spec {path}: {exc}") from None


def _finish(report: Report, out: Path) -> int:
    from ckpt_compat.report import table

    written = report.write(out)
    summary = report.summary()
    print(table(report.results))
    print()
    print(
        f"{summary['cells']} cells over {summary['specs']} spec(s): {summary['outcomes']}; "
        f"{summary['known_issues']} known issue(s), {summary['unexpected']} unexpected"
    )
    if report.failure is not None:
        print(f"FAILED on spec {report.failure.id}: {report.failure_detail[:500]}")
        print(f"minimal failing spec: {out / 'failing-spec.json'}")
        print(f"reproduce with: ckpt-compat check --spec {out / 'failing-spec.json'}")
    elif summary["unexpected"]:
        print("FAILED: unexpected outcomes, see the report")
    print("wrote " + ", ".join(str(p) for p in written))
    return EXIT_OK if report.passed else EXIT_FAILED


def _run(args: argparse.Namespace) -> int:
    formats = _select_formats(args.formats)
    out = _writable_dir(args.out)
    expectations = _expectations(args.expectations)

    import torch

    from ckpt_compat.propcheck import run_property
    from ckpt_compat.report import Report

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    progress(
        f"ckpt-compat run: torch {torch.__version__}, formats {', '.join(f.name for f in formats)}, "
        f"{args.examples} examples, seed {args.seed}"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ckpt-compat-") as workdir:
        result = run_property(
            formats,
            Path(workdir),
            examples=args.examples,
            seed_value=args.seed,
            expectations=expectations,
            progress=progress,
            shrink_seconds=args.shrink_seconds,
        )
    report = Report(
        result.results,
        result.specs,
        expectations,
        run={
            "command": "run",
            "seed": args.seed,
            "examples": args.examples,
            "examples_run": result.examples_run,
            "shrink_steps": result.shrink_steps,
            "seconds": round(time.perf_counter() - started, 2),
            "out": str(out),
        },
        failure=result.failure,
        failure_detail=result.failure_detail,
    )
    return _finish(report, out)


def _check(args: argparse.Namespace) -> int:
    spec = _read_spec(args.spec)
    formats = _select_formats(args.formats)
    out = _writable_dir(args.out)
    expectations = _expectations(args.expectations)

    from ckpt_compat.propcheck import failure_of
    from ckpt_compat.report import Report
    from ckpt_compat.roundtrip import check_spec
    from ckpt_compat.specs import SpecError

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ckpt-compat-") as workdir:
        try:
            results = check_spec(spec, formats, Path(workdir))
        except SpecError as exc:
            raise UsageError(f"--spec {args.spec}: {exc}") from None
    failure = failure_of(results, expectations)
    for r in results:
        if r.outcome.value != "ok" and not args.quiet:
            print(
                f"{r.cell.variant} → {r.cell.consumer.device} ({r.cell.options.get('map_location', '-')}): "
                f"{r.outcome.value}: {r.detail}",
                file=sys.stderr,
            )
    report = Report(
        results,
        {spec.id: spec},
        expectations,
        run={
            "command": "check",
            "spec": str(args.spec),
            "seed": None,
            "examples": 1,
            "examples_run": 1,
            "seconds": round(time.perf_counter() - started, 2),
            "out": str(out),
        },
        failure=spec if failure else None,
        failure_detail=failure,
    )
    return _finish(report, out)


def _formats(args: argparse.Namespace) -> int:
    from ckpt_compat.formats import all_formats

    for name, f in all_formats().items():
        why = f.why_unavailable()
        status = "available" if why is None else f"unavailable: {why}"
        note = f" (deprecated: {f.deprecated})" if f.deprecated else ""
        print(f"{name:20} {status}{note}\n{'':20} {f.description}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
