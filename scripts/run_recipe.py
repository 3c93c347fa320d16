"""Run the README's downstream CI recipe, as written, on a copy of tests/downstream (`nox -s recipe`).

The recipe is the code block between ``<!-- recipe -->`` and ``<!-- /recipe -->`` in README.md,
written unchanged as the toy project's noxfile.py; nox makes each session's venv fresh. It must
pass on the clean toy model, and fail once the model's factory builds one whose outputs depend on
a tensor no checkpoint saves. ``CKPT_COMPAT`` is set to this checkout, as the README says to until
ckpt-compat is on PyPI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recipe() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- recipe -->\s*```python\n(.*?)```\s*<!-- /recipe -->", text, re.S)
    if found is None:
        raise SystemExit("README.md has no <!-- recipe --> python block")
    return found.group(1)


def nox(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CKPT_COMPAT": str(ROOT)}
    command = [sys.executable, "-m", "nox", "-f", str(project / "noxfile.py"), "--default-venv-backend", "uv", *args]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ckpt-compat-recipe-") as tmp:
        project = Path(tmp) / "mylib"
        shutil.copytree(ROOT / "tests" / "downstream", project, ignore=shutil.ignore_patterns("culprits"))
        (project / "noxfile.py").write_text(recipe(), encoding="utf-8")
        started = time.perf_counter()
        clean = nox(project)
        print(clean.stdout[-4000:] + clean.stderr[-6000:])
        print(f"clean toy project: exit {clean.returncode} in {time.perf_counter() - started:.0f}s")
        if clean.returncode != 0:
            return 1
        # Break the model: its factory now builds one with an unsaved tensor attribute.
        source = project / "mylib.py"
        source.write_text(
            source.read_text(encoding="utf-8").replace("    return TinyLM()\n", "    return ScaledLM()\n"),
            encoding="utf-8",
        )
        shutil.rmtree(project / "corpora")
        shutil.rmtree(project / "results")
        broken = nox(project, "-s", "checkpoints(torch='2.13.0')")
        tail = broken.stdout[-3000:] + broken.stderr[-3000:]
        print(tail)
        print(f"broken toy project: exit {broken.returncode}")
        if broken.returncode == 0 or "attributes['scale']: not_saved" not in tail:
            print("the recipe did not fail on the broken model, naming the culprit", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
