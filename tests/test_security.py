"""`ckpt-compat security`: each payload is live, and the verdicts follow what this torch does."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt_compat import payloads
from ckpt_compat.formats.torchscript import torch_load_refuses_torchscript
from ckpt_compat.results import Outcome
from ckpt_compat.security import check_payloads


@pytest.mark.parametrize("name", [n for n, p in payloads.PAYLOADS.items() if p.executes and p.loader == "torch.load"])
def test_every_pickle_payload_fires_under_plain_pickle(name: str, tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "canary"
    path = payloads.write(name, tmp_path / "p.pt", marker)
    assert not marker.exists()
    with contextlib.suppress(Exception):  # the rest of the load may fail; what matters is the canary
        torch.load(str(path), weights_only=False)
    assert marker.exists(), f"{name} is not a live payload"


def test_verdicts_follow_this_torch() -> None:
    results = {r.cell.format: r for r in check_payloads(["reduce_protocol_2", "torchscript_dispatch", "pickle_laughs"])}
    blocked = results["reduce_protocol_2"]
    assert blocked.outcome is Outcome.OK and blocked.notes[0].startswith("blocked: ")
    dispatch = results["torchscript_dispatch"].outcome
    assert dispatch is (Outcome.OK if torch_load_refuses_torchscript() else Outcome.UNSAFE)
    assert results["pickle_laughs"].outcome is Outcome.OK


def test_the_command_writes_results_the_gate_reads(tmp_path: Path) -> None:
    out = tmp_path / "security.json"
    done = subprocess.run(
        [sys.executable, "-m", "ckpt_compat.cli", "security", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    cells = json.loads(out.read_text())["cells"]
    assert {c["format"] for c in cells} == set(payloads.PAYLOADS)
    gate = subprocess.run(
        [sys.executable, "-m", "ckpt_compat.cli", "gate", str(out)], capture_output=True, text=True, timeout=300
    )
    assert gate.returncode == 0, gate.stdout  # every payload that runs is a known, cited issue
    strict = subprocess.run(
        [sys.executable, "-m", "ckpt_compat.cli", "gate", str(out), "--fail-on-unsafe"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    ran = [c for c in cells if c["outcome"] == "unsafe"]
    assert strict.returncode == (1 if ran else 0)
