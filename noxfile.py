"""nox sessions. Per-torch-version sessions come from one table: adding a version is one line.

nox -s tests            # the test suite on the default torch
nox -s lint             # ruff + mypy
nox -s "run(torch='2.6')"   # `ckpt-compat run` under torch 2.6 (uv installs it)
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["tests", "lint"]

# torch release -> (Python it runs on, extra pins it needs). The one place versions live.
# numpy < 2 for torch < 2.3 (built against numpy 1.x); safetensors >= 0.6 cannot import with
# torch < 2.3 (safetensors#641), so those pin safetensors below 0.6.
TORCH: dict[str, tuple[str, tuple[str, ...]]] = {
    "2.0": ("3.10", ("numpy<2", "safetensors<0.6")),
    "2.2": ("3.10", ("numpy<2", "safetensors<0.6")),
    "2.4": ("3.11", ()),
    "2.6": ("3.11", ()),
    "2.8": ("3.11", ()),
    "2.10": ("3.11", ()),
    "2.13": ("3.11", ()),
}
DEFAULT_TORCH = "2.13"


def install(session: nox.Session, torch: str, *extras: str) -> None:
    _, pins = TORCH[torch]
    spec = ".[" + ",".join(("safetensors", *extras)) + "]"
    session.install(f"torch=={torch}.*", *pins, "-e", spec)


@nox.session(python=TORCH[DEFAULT_TORCH][0])
def tests(session: nox.Session) -> None:
    """The README's test command, on the default torch."""
    install(session, DEFAULT_TORCH, "test")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=TORCH[DEFAULT_TORCH][0])
def lint(session: nox.Session) -> None:
    install(session, DEFAULT_TORCH, "dev")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
@nox.parametrize("python,torch", [(py, v) for v, (py, _) in TORCH.items()], ids=list(TORCH))
def run(session: nox.Session, torch: str) -> None:
    """`ckpt-compat run` under one torch version; the report goes to reports/torch-<version>/."""
    install(session, torch)
    session.run("ckpt-compat", "run", "--out", f"reports/torch-{torch}", *session.posargs)
