"""The ``ckpt-compat`` command line: each command is a short pipeline of steps.

Bad input (an unknown format, an unwritable --out, a spec that is not JSON, ...) ends with one
line on stderr and exit code 2; a run that finds an unexpected outcome exits 1.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import importlib
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ckpt_compat.cli_common import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_MACHINE_CHANGED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    check_format_names,
)
from ckpt_compat.cli_common import expectations as _expectations
from ckpt_compat.cli_common import select_formats as _select_formats
from ckpt_compat.cli_common import writable_dir as _writable_dir

if TYPE_CHECKING:
    import concurrent.futures

    from ckpt_compat.expectations import Expectations, Verdict
    from ckpt_compat.formats import Format
    from ckpt_compat.isolation import Pool
    from ckpt_compat.progress import Progress
    from ckpt_compat.report import Report
    from ckpt_compat.results import CellResult
    from ckpt_compat.specs import ModelSpec


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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive, finite number of seconds, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a percentage like 10% or a fraction like 0.1, got {text!r}"
        ) from None
    if not 0 <= value < 10:
        raise argparse.ArgumentTypeError(f"expected a slowdown between 0% and 1000%, got {text!r}")
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

    def parallel(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--jobs",
            type=_positive,
            default=None,
            metavar="N",
            help="worker processes side by side (default: the usable cores); the results are the same for any N",
        )
        p.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="a progress line per finished step, also when not on a terminal",
        )

    run = commands.add_parser("run", help="property-check every format, device and load option on this torch")
    run.add_argument(
        "--examples",
        type=_positive,
        default=200,
        metavar="N",
        help="hypothesis examples (model specs) to draw (default: 200, about a minute on 2 cores)",
    )
    run.add_argument(
        "--heavy-examples",
        type=_positive,
        default=8,
        metavar="N",
        help="how many of the examples also go through the heavy formats (TorchScript, torch.export, "
        "DCP, ONNX: seconds per spec each); default: 8",
    )
    run.add_argument("--seed", type=int, default=0, help="hypothesis seed (default: 0, reproducible)")
    parallel(run)
    run.add_argument(
        "--shrink-seconds",
        type=_seconds,
        default=20.0,
        metavar="S",
        help="time budget for shrinking a failure (default: 20)",
    )
    common(run)

    check = commands.add_parser(
        "check",
        help="inspect a checkpoint file without running anything in it, or check one spec (e.g. a failing "
        "spec from a report)",
    )
    check.add_argument(
        "checkpoint",
        nargs="?",
        type=Path,
        metavar="CHECKPOINT",
        help="a checkpoint file, DCP directory or Hugging Face folder: its real format, structural damage, and what a "
        "weights_only=True load would refuse (nothing is unpickled or executed); exit 0 loadable, "
        "1 broken or unsafe",
    )
    what = check.add_mutually_exclusive_group()
    what.add_argument("--spec", type=Path, metavar="FILE", help="a ModelSpec JSON file: run every cell for it")
    what.add_argument("--file", type=Path, metavar="CHECKPOINT", help="the same as the CHECKPOINT argument")
    check.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="your model: a zero-argument factory (or nn.Module class) importable from the current directory; "
        "alone, round-trip it through every format, device and load option (exit 0 compatible, 1 an "
        "incompatibility); with CHECKPOINT, compare the file's keys, dtypes and shapes with the model's",
    )
    check.add_argument(
        "--inputs",
        metavar="MODULE:NAME",
        help="the model's example input (a tensor, a tuple of arguments or a dict of keyword arguments), or "
        "a zero-argument function returning it; without it the forward and the tracing formats are not checked",
    )
    check.add_argument(
        "--corpus",
        type=Path,
        metavar="DIR",
        help="with --model: also write the model in every format, with a manifest, to DIR (replaced "
        "atomically), for 'verify' and 'gate' under other torch versions",
    )
    check.add_argument(
        "--format",
        dest="output_format",
        choices=("text", "json", "markdown"),
        default="text",
        help="how CHECKPOINT's inspection or --model's result is printed (default: text)",
    )
    check.add_argument(
        "--max-size",
        type=_positive,
        default=None,
        metavar="BYTES",
        help="refuse checkpoint files larger than this (default: 256 GiB)",
    )
    check.add_argument(
        "--trust",
        action="store_true",
        help="with CHECKPOINT --model: the file comes from a source you trust; load a torch.save file with "
        "weights_only=False (in a contained process), as a training checkpoint holding your own classes needs",
    )
    common(check)

    produce = commands.add_parser("produce", help="write a corpus of every format for the running torch")
    produce.add_argument("--out", type=Path, required=True, metavar="DIR", help="the corpus directory")
    chosen = produce.add_mutually_exclusive_group()
    chosen.add_argument("--formats", default=None, metavar="A,B", help="comma-separated format names")
    chosen.add_argument(
        "--all-formats-except",
        default=None,
        metavar="A,B",
        help="every registered format but these, each of which must be writable here (a broken pin fails)",
    )
    produce.add_argument("--device", default="cpu", help="device to save from: cpu, or cuda where present")
    produce.add_argument(
        "--sample-heavy",
        action="store_true",
        help="write heavy formats (TorchScript, torch.export, DCP) for a fixed sample of specs only",
    )
    parallel(produce)
    produce.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    verify = commands.add_parser("verify", help="load every corpus under the running torch; write one results file")
    verify.add_argument(
        "corpora", nargs="*", type=Path, metavar="DIR", help="corpus directories (searched recursively)"
    )
    verify.add_argument("--out", type=Path, required=True, metavar="FILE", help="the results file (report schema)")
    verify.add_argument(
        "--fixtures",
        type=Path,
        default=None,
        metavar="DIR",
        help="more corpora to verify (default: the committed fixtures of the installed package, where it has "
        "them; only those are trusted without --trust)",
    )
    verify.add_argument("--no-fixtures", action="store_true", help="do not verify the committed fixtures")
    verify.add_argument(
        "--trust",
        action="store_true",
        help="the corpora come from a source you trust: allow weights_only=False on them",
    )
    verify.add_argument(
        "--timeout",
        type=_seconds,
        default=120.0,
        metavar="S",
        help="seconds one file may take before its load counts as hung (default: 120)",
    )
    verify.add_argument(
        "--expectations",
        type=Path,
        action="append",
        default=[],
        metavar="TOML",
        help="extra known-issue file(s), for the summary line",
    )
    parallel(verify)
    verify.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    security = commands.add_parser(
        "security",
        help="which hostile-checkpoint classes this torch's own loaders block (each payload only creates a "
        "marker file, and runs in a contained throwaway process)",
    )
    security.add_argument("--out", type=Path, required=True, metavar="FILE", help="the results file (report schema)")
    security.add_argument(
        "--timeout", type=_seconds, default=120.0, metavar="S", help="seconds one load may take (default: 120)"
    )

    report = commands.add_parser("report", help="merge results into the producer x consumer matrix")
    report.add_argument("results", nargs="+", type=Path, metavar="RESULTS")
    report.add_argument("--out", type=Path, required=True, metavar="DIR", help="matrix.md, matrix.json, junit.xml")
    report.add_argument("--expectations", type=Path, action="append", default=[], metavar="TOML")

    gate = commands.add_parser("gate", help="exit 0 only if every non-ok cell is a known, explained issue")
    gate.add_argument("results", nargs="+", type=Path, metavar="RESULTS")
    gate.add_argument(
        "--expectations",
        type=Path,
        action="append",
        default=[],
        metavar="TOML",
        help="known-issue file(s) on top of the shipped ones; entries of a file named here that explain "
        "nothing are reported stale (name ckpt_compat/fixtures/expectations.toml to check the shipped one)",
    )
    gate.add_argument(
        "--fail-on-unsafe",
        action="store_true",
        help="also fail on unsafe loads that a known issue explains (by default they are listed, in red)",
    )
    gate.add_argument(
        "--limitations-pass",
        action="store_true",
        help="pass a format's by-design refusal (unsupported) without a known issue for it: for corpora of your "
        "own models (check --model --corpus), as check --model itself judges",
    )

    commands.add_parser("formats", help="list the formats and whether they are available here")

    bench_report = commands.add_parser(
        "bench-report", help="merge benchmark JSON (one file per torch version) into a Markdown table and plots"
    )
    bench_report.add_argument("results", type=Path, nargs="+", metavar="JSON", help="pytest --benchmark-json files")
    bench_report.add_argument(
        "--out", type=Path, default=Path("bench-report"), metavar="DIR", help="where benchmarks.md and the PNGs go"
    )
    bench_gate = commands.add_parser(
        "bench-gate",
        help="exit 1 if CURRENT is slower than BASELINE beyond --max-slowdown and the measured noise "
        "(by the ratio to the limit measured with each round)",
    )
    bench_gate.add_argument("baseline", type=Path, metavar="BASELINE", help="pytest --benchmark-json file")
    bench_gate.add_argument("current", type=Path, metavar="CURRENT", help="pytest --benchmark-json file")
    bench_gate.add_argument(
        "--max-slowdown",
        type=_fraction,
        default=0.10,
        metavar="PCT",
        help="largest accepted slowdown of a median, e.g. 10%% or 0.1 (default: 10%%)",
    )
    bench_gate.add_argument(
        "--absolute",
        action="store_true",
        help="compare median times instead of the per-round ratios to the limits",
    )
    bench_gate.add_argument(
        "--max-limit-change",
        type=_fraction,
        default=0.20,
        metavar="PCT",
        help=f"largest accepted move of the machine's own limits between the runs; beyond it the gate "
        f"exits {EXIT_MACHINE_CHANGED} (machine changed) without judging results (default: 20%%)",
    )
    bench_gate.add_argument(
        "--any-machine",
        action="store_true",
        help="compare runs from different machine classes (CPU model, cores) anyway",
    )
    return parser


def _version() -> str:
    from ckpt_compat import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    from ckpt_compat.atomic import WriteFailed
    from ckpt_compat.isolation import start_janitor

    try:
        args = _parser().parse_args(argv)
        # Called as the program (no argv): nothing but the command line is in this process, so its
        # workers' fork server may be a fork of it. Called by other code, whose state it would copy
        # into every worker (replaced standard streams, warning filters, patches): never.
        args.server_template = SERVER_TEMPLATE if argv is None else ()
        if args.command in ("run", "produce", "verify", "check", "security"):
            start_janitor()  # before any child or temporary file: cleans up even after SIGKILL
        command = {
            "run": _run,
            "check": _check,
            "formats": _formats,
            "produce": _produce,
            "verify": _verify,
            "security": _security,
            "report": _report,
            "gate": _gate,
            "bench-report": _bench_report,
            "bench-gate": _bench_gate,
        }[args.command]
        try:
            return command(args)
        except SystemExit as exc:  # a user's module, factory or forward called sys.exit(): no verdict, never a pass
            raise UsageError(
                f"{args.command}: code it ran called sys.exit({exc.code!r}) (a model's module, factory, inputs or "
                "forward?); nothing was checked"
            ) from None
    except UsageError as exc:
        from ckpt_compat.errorinfo import shown

        print(f"ckpt-compat: error: {shown(str(exc))}", file=sys.stderr)  # one line, whatever a path holds
        return EXIT_USAGE
    except WriteFailed as exc:  # the disk, not a format and not a bug
        print(f"ckpt-compat: error: {exc.strerror}; free space or write elsewhere", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("ckpt-compat: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`ckpt-compat formats | head -1`): as SIGPIPE ends a tool
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush there
        return 128 + signal.SIGPIPE
    except Exception as exc:  # a bug in ckpt-compat: one line, and the way to see more
        if os.environ.get("CKPT_COMPAT_DEBUG"):
            raise
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        place = f" at {where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where else ""
        print(
            f"ckpt-compat: internal error: {type(exc).__name__}: {exc}{place} "
            "(set CKPT_COMPAT_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def entry() -> NoReturn:
    """The ``ckpt-compat`` command: `main`, then out without tearing the interpreter down.
    Finalizing what torch and the formats' packages loaded takes ~0.6 s and writes nothing: every
    output is written and closed by then, and the exit handlers (the janitor's, logging's) run."""
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a reader that went away: nothing left to tell it
            stream.flush()
    os._exit(code)


# --------------------------------------------------------------------------- steps


def _every_format_but(args: argparse.Namespace) -> list[Format]:
    from ckpt_compat.formats import BUILTIN, all_formats, why_not_usable

    excluded = {n.strip() for n in args.all_formats_except.split(",") if n.strip()}
    unknown = sorted(excluded - set(all_formats()))
    if unknown:
        raise UsageError(
            f"--all-formats-except: unknown format(s) {', '.join(unknown)}; known: {', '.join(all_formats())}"
        )
    # Every built-in format must be writable (a broken pin fails); a plugin's format (an optional
    # extra, as MLflow is) joins only where it is usable.
    builtin = {cls.name for cls in BUILTIN}
    names = [n for n, f in all_formats().items() if n not in excluded and (n in builtin or why_not_usable(f) is None)]
    try:
        return _select_formats(",".join(names))
    except UsageError as exc:
        raise UsageError(f"--all-formats-except {args.all_formats_except!r}: {exc}") from None


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
    except RecursionError:  # JSON, or a spec's tree of blocks, nested past Python's recursion limit
        raise UsageError(f"--spec {path}: nested too deeply to be a ModelSpec") from None


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
    from ckpt_compat.progress import Progress

    progress = Progress(quiet=args.quiet, verbose=args.verbose)
    drawn: list[ModelSpec] = []

    def draw() -> None:  # the specs depend on neither the workers nor the formats they can use
        from ckpt_compat.propcheck import draw_specs

        importlib.import_module("ckpt_compat.report")
        with progress.phase("draw"):
            drawn.extend(draw_specs(args.examples, args.seed))

    return _in_pool(
        args, RUN_TIMEOUT, functools.partial(_run_in, progress=progress, drawn=drawn), names=True, meanwhile=draw
    )


def _in_pool(
    args: argparse.Namespace,
    timeout: float,
    then: Callable[[Pool, argparse.Namespace, float], int],
    *,
    names: bool,
    meanwhile: Callable[[], object],
) -> int:
    """``then(pool, args, started)`` with ``args.jobs`` workers, under their answer on which
    formats are usable here; ``args.out`` is proved writable first. ``meanwhile``: what this
    process does while the workers import (seconds, on a core that would otherwise wait)."""
    from ckpt_compat.isolation import Pool
    from ckpt_compat.workers import ARGV, AVAILABILITY

    started = time.perf_counter()
    _writable_dir(args.out)
    with Pool(ARGV, jobs=args.jobs, timeout=timeout, fork_here=args.server_template).start() as pool:
        found = pool.submit(AVAILABILITY)  # and then every format's packages, to say which are usable
        # Meanwhile: this process imports the registry and the command's modules, and a bad
        # --formats fails now, not after the workers' answer.
        if names:
            check_format_names(args.formats)
        meanwhile()
        from ckpt_compat.formats import availability_from

        with availability_from(found.result()):
            return then(pool, args, started)


def _run_in(pool: Pool, args: argparse.Namespace, started: float, *, progress: Progress, drawn: list[ModelSpec]) -> int:
    formats = _select_formats(args.formats)
    out: Path = args.out  # proved writable before the workers started
    expectations = _expectations(args.expectations)

    import torch

    from ckpt_compat.distributed import RESHARD_SPEC
    from ckpt_compat.propcheck import OBJECT_CHECKS, run_property
    from ckpt_compat.report import Report
    from ckpt_compat.training import TRAINING_SPEC

    progress.say(
        f"ckpt-compat run: torch {torch.__version__}, formats {', '.join(f.name for f in formats)}, "
        f"{args.examples} examples, seed {args.seed}, {pool.jobs} worker(s); training checkpoints, "
        "multi-object files and DCP resharding alongside"
    )
    result = run_property(
        formats,
        examples=args.examples,
        seed_value=args.seed,
        expectations=expectations,
        pool=pool,
        progress=progress,
        shrink_seconds=args.shrink_seconds,
        heavy_examples=args.heavy_examples,
        objects=OBJECT_CHECKS,
        specs=drawn,
    )
    if any(f.name == "dcp" for f in formats):
        result.specs[RESHARD_SPEC.id] = RESHARD_SPEC
    result.specs[f"training-{TRAINING_SPEC.id}"] = TRAINING_SPEC
    report = Report(
        result.results,
        result.specs,
        expectations,
        run={
            "command": "run",
            "seed": args.seed,
            "examples": args.examples,
            "heavy_examples": min(args.heavy_examples, args.examples),
            "examples_run": result.examples_run,
            "shrink_steps": result.shrink_steps,
            "seconds": round(time.perf_counter() - started, 2),
            "phases": progress.phases,
            "jobs": pool.jobs,
            "out": str(out),
        },
        failure=result.failure,
        failure_detail=result.failure_detail,
    )
    return _finish(report, out)


def _check(args: argparse.Namespace) -> int:
    given = [a for a in (args.checkpoint, args.file, args.spec) if a is not None]
    if args.inputs is not None and args.model is None:
        raise UsageError("--inputs: names the example input of --model MODULE:FACTORY; give --model too")
    if args.corpus is not None and (args.model is None or given):
        raise UsageError("--corpus: writes the files of --model MODULE:FACTORY; give --model alone with it")
    if args.trust and (args.model is None or not (args.checkpoint or args.file)):
        raise UsageError(
            "--trust: vouches for the CHECKPOINT that --model is compared with; check FILE alone reads nothing "
            "that runs code, and --model alone checks files it writes itself"
        )
    if args.model is not None and not given:
        from ckpt_compat.cli_model import run_check_model

        return run_check_model(args)
    if len(given) != 1:
        raise UsageError(
            "check takes one of CHECKPOINT, --file CHECKPOINT, --spec FILE or --model MODULE:FACTORY "
            "(see 'ckpt-compat check --help')"
        )
    if args.model is not None and args.spec is not None:
        raise UsageError("--model: give it alone (a round trip) or with CHECKPOINT (a key comparison), not with --spec")
    if args.model is not None:
        from ckpt_compat.cli_model import run_match_model

        return run_match_model(args.checkpoint or args.file, args)
    if args.spec is None:
        return _inspect(args.checkpoint or args.file, args.max_size, args.output_format)
    return _check_spec(args)


def _check_spec(args: argparse.Namespace) -> int:
    """``check --spec``: one spec's round trip, in a worker as `run`'s are: a loader that dies
    natively (ONNX Runtime has) gives `crash` cells, not a lost command."""
    from ckpt_compat.dtypes import UnknownDType
    from ckpt_compat.isolation import Pool
    from ckpt_compat.specs import SpecError
    from ckpt_compat.workers import ARGV, AVAILABILITY

    started = time.perf_counter()
    out = _writable_dir(args.out)
    with Pool(ARGV, jobs=1, timeout=RUN_TIMEOUT, fork_here=args.server_template).start() as pool:
        found = pool.submit(AVAILABILITY)  # and the formats' packages, which this process need not
        spec = _read_spec(args.spec)
        check_format_names(args.formats)
        expectations = _expectations(args.expectations)
        try:
            spec.model()  # here, so that a spec this torch cannot build is a usage error
        except (SpecError, UnknownDType) as exc:
            raise UsageError(f"--spec {args.spec}: this torch cannot build it: {exc}") from None
        from ckpt_compat.formats import availability_from
        from ckpt_compat.propcheck import Checker, Task, failure_of
        from ckpt_compat.report import Report

        known = found.result()
        with availability_from(known):
            formats = _select_formats(args.formats)
            # A format registered in this process only (a library caller's, a planted fault) is
            # checked here: the worker knows the formats by name, and it did not name this one.
            in_worker = isinstance(known, dict) and "error" not in known and all(f.name in known for f in formats)
            checked = Checker(pool if in_worker else None).one(Task(tuple(formats), spec))
            if checked.harness_error:
                raise RuntimeError(f"--spec {args.spec}: {checked.harness_error}")  # ours: main says so
            failure = failure_of(checked.results, expectations)
            for r in checked.results:
                if r.outcome.value != "ok" and not args.quiet:
                    print(
                        f"{r.cell.variant} → {r.cell.consumer.device} ({r.cell.options.get('map_location', '-')}): "
                        f"{r.outcome.value}: {r.detail}",
                        file=sys.stderr,
                    )
            report = Report(
                checked.results,
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
            return _finish(report, out)  # the report says which formats are usable: the worker's answer


# What this process, run as the program, imports before its workers' fork server is forked from it:
# the server then imports only the formats' packages (torch is 1-1.5 s of a core of its ~5 s, per
# command). Only torch and the command line's modules: nothing of the command's work reaches the workers.
SERVER_TEMPLATE = ("torch",)
PRODUCE_TIMEOUT = 900.0  # seconds to write one spec in every format
RUN_TIMEOUT = 900.0  # seconds to check one spec in every format (a heavy one takes a few)


def _produce(args: argparse.Namespace) -> int:
    names = args.all_formats_except is None
    return _in_pool(
        args, PRODUCE_TIMEOUT, _produce_in, names=names, meanwhile=lambda: importlib.import_module("ckpt_compat.corpus")
    )


def _produce_in(pool: Pool, args: argparse.Namespace, started: float) -> int:
    formats = _select_formats(args.formats) if args.all_formats_except is None else _every_format_but(args)
    out: Path = args.out  # proved writable before the workers started

    from ckpt_compat.corpus import produce
    from ckpt_compat.devices import producer_devices
    from ckpt_compat.manifest import MANIFEST, ManifestError

    if args.device not in producer_devices():
        raise UsageError(f"--device: {args.device!r} is not available here; choose one of {producer_devices()}")
    from ckpt_compat.progress import Progress

    progress = Progress(quiet=args.quiet, verbose=args.verbose)
    try:
        manifest = produce(
            out, formats, device=args.device, progress=progress.step, sample_heavy=args.sample_heavy, pool=pool
        )
    except ManifestError as exc:
        raise UsageError(f"--out {exc}") from None
    written = sum(e.file is not None for e in manifest.entries)
    print(
        f"wrote {written} file(s) for {len(manifest.specs)} spec(s) in {time.perf_counter() - started:.1f}s "
        f"under torch {manifest.torch} ({manifest.device}); manifest: {out / MANIFEST}"
    )
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    if args.out.is_dir():
        raise UsageError(
            f"--out {args.out}: a directory; --out names the results file to write, e.g. {args.out}/results.json"
        )
    for path in args.corpora:
        if not path.is_dir():
            raise UsageError(f"{path}: no such corpus directory; run `ckpt-compat produce --out {path}` first")
    if args.fixtures is not None and not args.fixtures.is_dir():
        raise UsageError(f"--fixtures {args.fixtures}: no such directory")
    from ckpt_compat.isolation import MEMORY_LIMIT, Pool
    from ckpt_compat.workers import ARGV, AVAILABILITY

    # The workers' fork server imports (seconds) while this process imports and reads the manifests.
    pool = Pool(ARGV, jobs=args.jobs, timeout=args.timeout, memory=MEMORY_LIMIT, fork_here=args.server_template)
    with pool.start():
        found = pool.submit(AVAILABILITY)  # for the report: the workers import the formats' packages anyway
        return _verify_in(pool, args, found)


def _verify_in(pool: Pool, args: argparse.Namespace, found: concurrent.futures.Future[Any]) -> int:
    from ckpt_compat.corpus import find_corpora
    from ckpt_compat.manifest import ManifestError
    from ckpt_compat.trust import is_package_fixture, package_fixtures

    chosen = args.fixtures if args.fixtures is not None else package_fixtures()
    fixtures = [] if args.no_fixtures or chosen is None else [chosen.resolve()]
    unfinished: list[Path] = []
    corpora = find_corpora([*args.corpora, *fixtures], skipped=unfinished)
    for path in unfinished:
        print(f"ckpt-compat: {path}: skipped, the unfinished output of a produce that was killed", file=sys.stderr)
    if not corpora:
        raise UsageError("no corpus found (no manifest.json below the given directories or the package's fixtures)")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=args.out.parent, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"--out {args.out}: cannot write there ({exc.strerror})") from None
    expectations = _expectations(args.expectations)

    import torch

    from ckpt_compat.devices import available_devices
    from ckpt_compat.formats import availability_from
    from ckpt_compat.manifest import Manifest
    from ckpt_compat.verify import verify

    def trusted(corpus: Path) -> bool:  # never from a path relative to where the user stands
        return bool(args.trust) or is_package_fixture(corpus)

    from ckpt_compat.progress import Progress

    progress = Progress(quiet=args.quiet).say  # a line per corpus: worth keeping in a log too
    progress(f"ckpt-compat verify: torch {torch.__version__}, {len(corpora)} corpus/corpora")
    started = time.perf_counter()
    try:
        manifests = {c: Manifest.read(c) for c in corpora}
        specs = {s.id: s for m in manifests.values() for s in _manifest_specs(m)}
        results = verify(
            corpora,
            trusted=trusted,
            consumers=available_devices(),
            progress=progress,
            pool=pool,
            read_manifests=manifests,
        )
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    learned = found.result()
    pool.stop()
    with availability_from(learned):
        return _write_verified(args, corpora, results, specs, expectations, started)


def _write_verified(
    args: argparse.Namespace,
    corpora: list[Path],
    results: list[CellResult],
    specs: dict[str, ModelSpec],
    expectations: Expectations,
    started: float,
) -> int:
    from ckpt_compat.report import Report

    report = Report(
        results,
        specs,
        expectations,
        run={
            "command": "verify",
            "corpora": [str(c) for c in corpora],
            "seconds": round(time.perf_counter() - started, 2),
            "out": str(args.out),
        },
    )
    report.write_results(args.out)
    s = report.summary()
    print(
        f"{s['cells']} cells from {len(corpora)} corpus/corpora: {s['outcomes']}; "
        f"{s['known_issues']} known issue(s), {s['unexpected']} unexplained; wrote {args.out}"
    )
    return EXIT_OK


def _security(args: argparse.Namespace) -> int:
    if args.out.is_dir():
        raise UsageError(f"--out {args.out}: a directory; --out names the results file to write")
    _writable_dir(args.out.parent)
    from ckpt_compat.security import attack_server, check_payloads

    with attack_server(args.server_template) as server:
        server.start()  # it imports while this process does
        expectations = _expectations([])

        import torch

        from ckpt_compat.report import Report

        started = time.perf_counter()
        results = check_payloads(timeout=args.timeout, server=server)
    report = Report(
        results,
        {},
        expectations,
        run={"command": "security", "seconds": round(time.perf_counter() - started, 2), "out": str(args.out)},
    )
    report.write_results(args.out)
    for r in results:
        print(f"{r.cell.format:22} {r.outcome.value:8} {r.detail[:110]}")
    ran = sum(r.outcome.value == "unsafe" for r in results)
    print(f"torch {torch.__version__}: {len(results)} payload classes, {ran} ran code; wrote {args.out}")
    return EXIT_OK


def _manifest_specs(manifest: Any) -> list[ModelSpec]:
    from ckpt_compat.specs import ModelSpec
    from ckpt_compat.usermodel import is_user_model

    # A user's model is named by its MODULE:FACTORY in the cells; it has no spec to list.
    return [ModelSpec.from_json(raw) for raw in manifest.specs.values() if not is_user_model(raw)]


def _load_results(paths: list[Path]) -> list[CellResult]:
    from ckpt_compat.results import ResultsError, load_results

    try:
        return load_results(paths)
    except ResultsError as exc:
        raise UsageError(str(exc)) from None


def _verdict(args: argparse.Namespace) -> Verdict:
    results = _load_results(args.results)
    expectations = _expectations(args.expectations)

    from ckpt_compat.expectations import gate

    # The shipped lists cover more than any one set of results (same-release `run` cells, releases
    # not verified here): staleness is judged only for the files named on the command line, by
    # content (a named copy of a shipped list was loaded once, under the shipped path).
    def content(path: str | Path) -> bytes:
        return Path(path).read_bytes()

    given = {content(p) for p in args.expectations}
    sources = {source: content(source) for source in {e.source for e in expectations.entries}}
    return gate(
        results,
        expectations,
        stale_if=lambda e: sources[e.source] in given,
        limitations_pass=getattr(args, "limitations_pass", False),
    )


def _report(args: argparse.Namespace) -> int:
    out = _writable_dir(args.out)
    verdict = _verdict(args)

    from ckpt_compat.matrixreport import write_matrix

    paths = write_matrix(verdict, out)
    print(
        f"{len(verdict.judgements)} cells from {len(args.results)} file(s); wrote " + ", ".join(str(p) for p in paths)
    )
    return EXIT_OK


def _gate(args: argparse.Namespace) -> int:
    verdict = _verdict(args)
    from ckpt_compat.matrixreport import gate_lines

    for line in gate_lines(verdict):
        print(line)
    return EXIT_OK if verdict.passed(fail_on_unsafe=args.fail_on_unsafe) else EXIT_FAILED


def _bench_runs(paths: list[Path]) -> list[Any]:
    from ckpt_compat.bench.runs import BenchResultError, read_runs

    try:
        return read_runs(paths)
    except BenchResultError as exc:
        raise UsageError(str(exc)) from None


def _bench_report(args: argparse.Namespace) -> int:
    runs = _bench_runs(args.results)
    out = _writable_dir(args.out)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError('bench-report draws its plots with matplotlib: pip install "ckpt-compat[bench]"') from None
    from ckpt_compat.bench.report import write_report

    paths = write_report(runs, out)
    versions = ", ".join(r.torch for r in runs)
    print(f"{sum(len(r.results) for r in runs)} results from torch {versions}; wrote " + ", ".join(map(str, paths)))
    return EXIT_OK


def _bench_gate(args: argparse.Namespace) -> int:
    from ckpt_compat.bench.gate import compare, limit_shifts

    baseline, current = (_bench_runs([p])[0] for p in (args.baseline, args.current))
    if baseline.machine != current.machine and not args.any_machine:
        raise UsageError(
            f"{args.current} ran on {current.machine!r}, {args.baseline} on {baseline.machine!r}: "
            "not comparable (pass --any-machine to compare anyway)"
        )
    changes, unmatched = compare(baseline, current, absolute=args.absolute)
    if not changes:
        raise UsageError(f"{args.baseline} and {args.current} have no result in common (same suite, same sizes?)")
    shifts = limit_shifts(baseline, current)
    moved = [s for s in shifts if abs(s.change) > args.max_limit_change]
    for s in shifts:
        print(f"{'MOVED' if s in moved else 'limit':6} {s.line()}")
    if moved:
        print(
            f"bench-gate MACHINE CHANGED: {len(moved)} of the machine's limits moved more than "
            f"{args.max_limit_change:.0%} between the runs ({'; '.join(s.line() for s in moved)}): the runs do "
            "not measure the same machine; results not judged (rerun both on one quiet machine)"
        )
        return EXIT_MACHINE_CHANGED
    regressed = [c for c in changes if c.regressed(args.max_slowdown)]
    for c in sorted(changes, key=lambda c: -c.slowdown):
        mark = "SLOWER" if c in regressed else "ok"
        print(f"{mark:6} {c.slowdown:+7.1%} (noise {c.noise:5.1%}) {c.label()}: {c.figures()}")
    if unmatched:
        print(f"{len(unmatched)} result(s) in only one of the two runs, not compared")
    by_time = sum(c.measure == "time" for c in changes)
    worst = max(abs(c.slowdown) for c in changes)
    within = sum(abs(c.slowdown) < 0.05 for c in changes)
    # A shift shared by every result is the machine (or a change that slows everything): say so.
    shift = statistics.median(c.slowdown for c in changes)
    verdict = "FAILED" if regressed else "passed"
    basis = "ratios to each round's limit" + (f" ({by_time} without limits: times)" if by_time else "")
    if args.absolute or by_time == len(changes):
        basis = "times" + ("" if args.absolute else " (no limits in these runs)")
    print(
        f"bench-gate {verdict}: {len(changes)} results compared on {basis} (torch {baseline.torch} -> "
        f"{current.torch}), {len(regressed)} slower than {args.max_slowdown:.0%} beyond noise; largest change "
        f"{worst:.1%}, median change {shift:+.1%}, {within} within 5%"
    )
    return EXIT_FAILED if regressed else EXIT_OK


def _inspect(path: Path, max_size: int | None, output_format: str = "text") -> int:
    from ckpt_compat.checkfile import NotRead, inspect_contained
    from ckpt_compat.identify import MAX_SIZE, NotAFile, refuse_special

    try:
        refuse_special(path, max_size or MAX_SIZE)  # here first: a FIFO or a missing file needs no child
        inspection = inspect_contained(path, max_size or MAX_SIZE)
    except (NotAFile, NotRead) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if output_format == "json":
        print(json.dumps(inspection.to_json(), indent=2))
    else:
        print("\n".join(inspection.markdown() if output_format == "markdown" else inspection.lines()))
    return EXIT_OK if inspection.verdict == "ok" else EXIT_FAILED


def _formats(args: argparse.Namespace) -> int:
    from ckpt_compat.formats import all_formats

    for name, f in all_formats().items():
        why, why_not_write = f.why_unavailable(), f.why_unable_to_save()
        status = "available" if why is None else f"unavailable: {why}"
        if why is None and why_not_write:
            status = f"reads only: {why_not_write}"
        note = f" (deprecated: {f.deprecated})" if f.deprecated else ""
        print(f"{name:20} {status}{note}\n{'':20} {f.description}")
    return EXIT_OK


if __name__ == "__main__":
    entry()
