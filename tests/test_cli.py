"""The CLI as a user runs it: a subprocess, real files, exit codes and what is printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.samples import SPECS

# Runs the CLI with a planted-fault format registered, to see the failure path end to end.
WITH_FAULT = """
import sys
from ckpt_compat import formats
from ckpt_compat.cli import main
from tests.faults import Faulty, retype
import torch
fault = Faulty("torch_zip", after_load=retype("fc.bias", torch.float64))
formats.all_formats()[fault.name] = fault
sys.exit(main(sys.argv[1:]))
"""


def cli(
    *args: str, cwd: Path | None = None, script: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "ckpt_compat.cli", *args]
    root = Path(__file__).parents[1]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=cwd or root,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(root), **(env or {})},
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ckpt-compat: error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_format(tmp_path: Path) -> None:
    assert_usage_error(
        cli("run", "--formats", "torch_zip,pickle9", "--out", str(tmp_path)),
        "--formats: unknown format 'pickle9'",
        "known: torch_zip",
    )


def test_unwritable_out(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_usage_error(cli("run", "--out", str(blocker / "sub")), f"--out {blocker / 'sub'}: cannot write there")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
        ('{"root": {"kind": "dict", "children": {"x": {"kind": "Nope", "args": {}}}}}', "unknown kind 'Nope'"),
    ],
)
def test_bad_spec_file(tmp_path: Path, content: str, fragment: str) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(content)
    assert_usage_error(cli("check", "--spec", str(spec), "--out", str(tmp_path)), f"--spec {spec}: ", fragment)


def test_missing_spec_file_and_bad_examples(tmp_path: Path) -> None:
    assert_usage_error(cli("check", "--spec", str(tmp_path / "no.json")), "cannot read it")
    assert_usage_error(cli("run", "--examples", "0"), "expected a positive integer, got 0")


def test_run_writes_the_report_and_exits_0(tmp_path: Path) -> None:
    result = cli("run", "--examples", "6", "--heavy-examples", "3", "--out", str(tmp_path / "r"), "--verbose")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[   9/9] " in result.stderr and " training: " in result.stderr  # progress: 6 specs, 3 object checks
    assert "| torch_zip[weights_only] |" in result.stdout
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["summary"]["passed"] is True and data["run"]["examples_run"] == 6
    assert set(data["run"]["phases"]) == {"draw", "check"} and data["run"]["jobs"] >= 1
    assert data["run"]["heavy_examples"] == 3  # every 6 // 3 = 2nd spec through the heavy formats
    drawn = [c for c in data["cells"] if "check" not in c["options"]]  # not the training check's
    assert len({c["spec_id"] for c in drawn if c["format"] == "torchscript_script"}) == 3
    ok_variants = {
        (c["format"], json.dumps({k: v for k, v in c["options"].items() if k != "map_location"}, sort_keys=True))
        for c in data["cells"]
        if c["outcome"] == "ok"
    }
    assert len(ok_variants) >= 6, ok_variants
    assert (tmp_path / "r" / "report.md").exists()


def test_two_jobs_write_the_report_one_job_writes(tmp_path: Path) -> None:
    reports = []
    for jobs in ("1", "2"):
        args = ("run", "--examples", "10", "--seed", "5", "--jobs", jobs, "--out", str(tmp_path / jobs))
        result = cli(*args, "--formats", "torch_zip,torch_module,safetensors_file")  # each its own hash seed
        assert result.returncode == 0, result.stdout + result.stderr
        # A log, not a terminal: no line per step unless --verbose.
        assert not any(line.startswith("[") for line in result.stderr.splitlines()), result.stderr
        report = json.loads((tmp_path / jobs / "report.json").read_text())
        assert report["run"].pop("jobs") == int(jobs)
        for timing in ("seconds", "phases", "out"):
            report["run"].pop(timing)
        reports.append(report)
    assert len(reports[0]["cells"]) > 500 and reports[1] == reports[0]


def test_a_failure_is_shrunk_reported_and_reproducible(tmp_path: Path) -> None:
    out = tmp_path / "r"
    plain = str(SPECS / "plain.json")
    result = cli("check", "--spec", plain, "--formats", "faulty_torch_zip", "--out", str(out), script=WITH_FAULT)
    assert result.returncode == 1, result.stderr
    assert "state_dict['fc.bias']: dtype: dtype differs (expected float32, got float64)" in result.stdout
    reproduce = json.loads((out / "report.json").read_text())["failure"]["reproduce"]
    assert reproduce == f"ckpt-compat check --spec {out / 'failing-spec.json'}"
    again = cli(
        *reproduce.split()[1:], "--formats", "faulty_torch_zip", "--out", str(tmp_path / "again"), script=WITH_FAULT
    )
    assert again.returncode == 1 and "fc.bias" in again.stdout


def test_check_runs_the_round_trip_in_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A loader that dies natively in ``check --spec`` costs crash cells, not the command."""
    from ckpt_compat import workers
    from ckpt_compat.cli import main
    from tests.samples import load

    monkeypatch.setattr(workers, "ARGV", ["tests.dying_worker"])  # SIGKILLs itself on this spec
    monkeypatch.setenv("CKPT_COMPAT_TEST_DIE_ON", load("plain").id)
    monkeypatch.chdir(Path(__file__).parents[1])
    args = ["check", "--spec", str(SPECS / "plain.json"), "--formats", "torch_zip,safetensors_file"]
    assert main([*args, "--out", str(tmp_path)]) == 1
    cells = json.loads((tmp_path / "report.json").read_text())["cells"]
    assert [(c["format"], c["outcome"]) for c in cells] == [("torch_zip", "crash"), ("safetensors_file", "crash")]
    assert "signal SIGKILL" in cells[0]["error"]["message"]
    assert "crash" in capsys.readouterr().err


def test_formats_lists_availability() -> None:
    result = cli("formats")
    assert result.returncode == 0 and "torch_zip" in result.stdout and "available" in result.stdout


def test_a_reader_that_went_away_ends_the_command_quietly() -> None:
    """``ckpt-compat formats | head -1``: no internal error, the exit status of a tool SIGPIPE ended."""
    root = Path(__file__).parents[1]
    gone, stdout = os.pipe()
    os.close(gone)  # every write to stdout fails with EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "ckpt_compat.cli", "formats"],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            cwd=root,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
    finally:
        os.close(stdout)
    assert (result.returncode, result.stderr) == (128 + signal.SIGPIPE, "")


def test_cross_version_commands_end_to_end(tmp_path: Path) -> None:
    corpus, results, matrix = tmp_path / "corpus", tmp_path / "results.json", tmp_path / "matrix"
    produced = cli("produce", "--out", str(corpus), "--formats", "torch_zip,safetensors_file", "-q")
    assert produced.returncode == 0, produced.stderr
    assert (corpus / "manifest.json").is_file() and "wrote" in produced.stdout
    verified = cli("verify", str(corpus), "--no-fixtures", "--out", str(results), "-q")
    assert verified.returncode == 0, verified.stderr
    data = json.loads(results.read_text())
    assert data["cells"] and all(c["producer"]["torch"] for c in data["cells"])
    assert cli("report", str(results), "--out", str(matrix)).returncode == 0
    assert (matrix / "matrix.md").is_file() and (matrix / "junit.xml").is_file()
    gate = cli("gate", str(results))
    assert gate.returncode == 0 and "gate passed" in gate.stdout


def test_cross_version_commands_bad_input(tmp_path: Path) -> None:
    assert_usage_error(cli("verify", str(tmp_path / "nope"), "--out", str(tmp_path / "r.json")), "no such corpus")
    assert_usage_error(
        cli("verify", str(tmp_path), "--no-fixtures", "--out", str(tmp_path / "r.json")), "no corpus found"
    )
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert_usage_error(cli("gate", str(bad)), f"{bad}: not a results file")
    assert_usage_error(cli("report", str(tmp_path / "missing.json"), "--out", str(tmp_path)), "cannot read it")


FIXTURE_EXPECTATIONS = str(Path(__file__).parents[1] / "ckpt_compat" / "fixtures" / "expectations.toml")


def _evidence(known: str) -> dict[str, object]:
    cells = json.loads((Path(__file__).with_name("evidence.json")).read_text())["cells"]
    return next(c for c in cells if c["evidence_for"] == known)


def _gate(
    tmp_path: Path, name: str, *cells: dict[str, object], schema: str = "ckpt-compat/report/2"
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"schema": schema, "cells": list(cells)}))
    return cli("gate", str(path), "--expectations", FIXTURE_EXPECTATIONS)


def _failed(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert any(line.startswith("UNEXPLAINED") and fragment in line for line in result.stdout.splitlines()), (
        result.stdout
    )


def test_the_gate_fails_every_corruption_a_known_issue_does_not_describe(tmp_path: Path) -> None:
    import copy

    mha = _evidence("torchscript-mha-math-2.4-old-to-new")
    assert _gate(tmp_path, "evidence", mha).returncode == 0  # the real evidence passes ...
    every = copy.deepcopy(mha)  # ... the MultiheadAttention output wrong in every element does not
    for d in every["differences"]:  # type: ignore[union-attr]
        d.update(elements=d["total"], max_abs=0.5, max_ulp=2**20)
    _failed(_gate(tmp_path, "every", every), "[MultiheadAttention]")

    ninth = copy.deepcopy(mha)  # eight explained differences, then a ninth no known issue explains
    first = ninth["differences"][0]  # type: ignore[index]
    linear = {**first, "path": ["forward", "fc", 0], "block": "Linear", "elements": 1, "total": 6}
    ninth["differences"] = [{**first, "path": ["forward", "mha", i]} for i in range(8)] + [linear]
    _failed(_gate(tmp_path, "ninth", ninth), "forward['fc'][0]: bytes: [Linear]")

    wrong = copy.deepcopy(_evidence("torch-export-transformer-fast-path"))  # wholly wrong, same release
    wrong["consumer"] = dict(wrong["producer"])  # type: ignore[call-overload]
    for d in wrong["differences"]:  # type: ignore[union-attr]
        d.update(elements=d["total"], max_abs=3.0, max_ulp=2**30)
    _failed(_gate(tmp_path, "export", wrong), "[TransformerEncoderLayer]")

    dcp = copy.deepcopy(_evidence("dcp-2.15-unreadable-by-older"))  # old -> new: not what the issue says
    dcp["producer"], dcp["consumer"] = {"torch": "2.6.0+cu124", "device": "cpu"}, {"torch": "2.15.0", "device": "cpu"}
    _failed(_gate(tmp_path, "dcp", dcp), "2.6.0→2.15.0 load_error")

    export = copy.deepcopy(_evidence("torch-export-new-dtype-enum"))  # a bare KeyError 2.13 -> 2.15
    export["consumer"] = {"torch": "2.15.0", "device": "cpu"}
    _failed(_gate(tmp_path, "keyerror", export), "KeyError")


def test_schema_1_results_are_judged_as_strictly(tmp_path: Path) -> None:
    mha = _evidence("torchscript-mha-math-2.4-old-to-new")
    v1 = {k: mha[k] for k in ("spec_id", "format", "producer", "consumer", "options", "outcome")}
    cell = {**v1, "known_issue": None, "detail": mha["detail"]}
    # Schema 1 never wrote distances, so a known issue that bounds them cannot explain it.
    _failed(_gate(tmp_path, "v1", cell, schema="ckpt-compat/report/1"), "[MultiheadAttention]")
    cut = {**cell, "detail": mha["detail"] + "; ... and 3 more"}
    result = _gate(tmp_path, "v1cut", cut, schema="ckpt-compat/report/1")
    assert result.returncode == 1 and "cut short in a schema-1 file" in result.stdout
    refusal = {
        **v1,
        "format": "safetensors_file",
        "outcome": "unsupported",
        "known_issue": None,
        "detail": "safetensors cannot load onto the meta device",
        "consumer": {**mha["consumer"], "device": "meta"},
    }  # type: ignore[dict-item]
    assert _gate(tmp_path, "v1ok", refusal, schema="ckpt-compat/report/1").returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "--timeout", "-1", "--out", "{tmp}/r.json"],
        ["verify", "--timeout", "nan", "--out", "{tmp}/r.json"],
        ["verify", "--timeout", "inf", "--out", "{tmp}/r.json"],
        ["verify", "--out", "{tmp}"],
        ["run", "--shrink-seconds", "nan", "--out", "{tmp}/o"],
        ["gate", "{tmp}/bad-types.json"],
        ["gate", "{tmp}/deep.json"],
        ["gate", "{tmp}/r.json", "--expectations", "{tmp}/top.toml"],
        ["check", "--max-size", "0", "x.pt"],
    ],
)
def test_every_bad_value_exits_2_with_one_line(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "bad-types.json").write_text('{"schema": "ckpt-compat/report/2", "cells": [{"detail": 5}]}')
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "r.json").write_text('{"schema": "ckpt-compat/report/2", "cells": []}')
    (tmp_path / "top.toml").write_text("[[issue]]\nformats = 5\n")
    done = cli(*(a.format(tmp=tmp_path) for a in args))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "internal error" not in done.stderr, done.stderr


def test_all_formats_except_requires_every_builtin_but_only_usable_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from ckpt_compat import cli
    from ckpt_compat.formats import BUILTIN, all_formats

    plugin = next((f for n, f in all_formats().items() if n not in {c.name for c in BUILTIN}), None)
    if plugin is None:
        pytest.skip("no plugin format registered here")
    monkeypatch.setattr(type(plugin), "why_unavailable", lambda self: "its extra is not installed")
    chosen = cli._every_format_but(argparse.Namespace(all_formats_except="onnx"))
    assert plugin.name not in {f.name for f in chosen}  # an optional plugin left out, not an error
    builtin = next(c() for c in BUILTIN if c.name == "torch_zip")
    monkeypatch.setattr(type(builtin), "why_unavailable", lambda self: "a broken pin")
    with pytest.raises(cli.UsageError, match=r"torch_zip.*a broken pin"):
        cli._every_format_but(argparse.Namespace(all_formats_except="onnx"))


def test_the_commands_that_read_results_import_no_torch(tmp_path: Path) -> None:
    """gate and report read JSON and known issues (every plugin's too): a CI job that only gates
    need not pay torch's import (1-3 s, more with a CUDA build)."""
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps({"schema": "ckpt-compat/report/2", "cells": [_evidence("dcp-2.15-unreadable-by-older")]})
    )
    script = (
        "import sys\nfrom ckpt_compat.cli import main\n"
        f"codes = [main(['gate', {str(results)!r}]), main(['report', {str(results)!r}, '--out', {str(tmp_path)!r}])]\n"
        "assert codes == [0, 0], codes\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gate passed: 1 cells, 1 non-ok explained" in done.stdout


def test_inputs_nested_past_the_recursion_limit_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON nested deeper than Python's recursion limit raises RecursionError, not a decode error:
    every reader of a file from elsewhere says what is wrong with it, in one line."""
    import struct

    from ckpt_compat.cli import main

    deep = '{"a": ' * 50_000 + "1" + "}" * 50_000
    (tmp_path / "deep.json").write_text(deep)
    header = deep.encode()
    (tmp_path / "deep.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    assert main(["check", "--spec", str(tmp_path / "deep.json"), "--out", str(tmp_path / "out")]) == 2
    assert main(["bench-report", str(tmp_path / "deep.json"), "--out", str(tmp_path / "bench")]) == 2
    assert main(["gate", str(tmp_path / "deep.json")]) == 2
    assert main(["check", str(tmp_path / "deep.safetensors")]) == 1  # broken, not an internal error
    captured = capsys.readouterr()
    assert "internal error" not in captured.err
    assert len(captured.err.strip().splitlines()) == 3, captured.err
    assert "the header is not valid JSON" in captured.out
