"""bench-report and bench-gate on the JSON of a real benchmark run (committed in docs/benchmarks/)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ckpt_compat.bench.report import percent
from ckpt_compat.bench.runs import read_run
from ckpt_compat.cli import main

ROOT = Path(__file__).resolve().parents[1]
# Real runs of the whole suite at the published settings (256 MiB, 5 / 9 / 3 rounds): the report and
# the gate are tested on what the harness wrote, with the limit taken in each round's child (schema 3,
# the published 2.13 run) and in the same pass (schema 2). The harness that writes such a file is
# tested in test_bench.py, and CI runs the pipeline end to end (benchmarks -> bench-report -> bench-gate).
RUN = ROOT / "docs" / "benchmarks" / "2026-12" / "results" / "torch-2.13.json"
SAME_PASS_RUN = ROOT / "docs" / "benchmarks" / "results" / "repeatability" / "ratio-a-2.13cpu.json"


@pytest.fixture(params=[RUN, SAME_PASS_RUN], ids=["schema-3", "schema-2"])
def run_json(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


def test_the_published_run_took_a_limit_in_every_round() -> None:
    """Schema 3: every load and save round carries its own limit round, taken in its child."""
    from ckpt_compat.bench.result import LIMIT_TAKEN, SCHEMA

    timed = [r for r in read_run(RUN).results if r["kind"] in ("load", "save")]
    assert timed and all(r["schema"] == SCHEMA and r["limit_taken"] == LIMIT_TAKEN for r in timed)
    assert all(len(r["limit_rounds"]) == len(r["child_seconds"]) == len(r["pass_ratios"]) for r in timed)
    # Distinct limit rounds: one per result round, not one per pass shared by the pass's results.
    limits = [(lim["seconds"], lim["bytes"]) for r in timed for lim in r["limit_rounds"]]
    assert len(set(limits)) == len(limits)


def _edit(source: Path, target: Path, change: Any) -> Path:
    data = json.loads(source.read_text())
    for b in data["benchmarks"]:
        change(b["extra_info"], data)
    target.write_text(json.dumps(data))
    return target


def test_report_has_the_tables_and_plots(run_json: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench-report", str(run_json), "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "benchmarks.md").read_text()
    run = read_run(run_json)
    mmap = next(r for r in run.results if r.get("op") == "mmap_touch" and r["workload"] == "transformer")
    row = next(line for line in text.splitlines() if line.startswith("| torch_zip:mmap_touch | float32 | warm |"))
    # GB/s, then the median per-pass ratio to the same-pass limit, each pass's ratio from its rounds.
    half = (mmap["ratio_q3"] - mmap["ratio_q1"]) / 2
    assert f"({percent(mmap['ratio_median'])} ±{percent(half)})" in row
    assert row.split(" | ")[3].startswith(f"{mmap['gbps']:.2f}")
    for r in run.results:
        if r.get("kind") in ("load", "save"):
            assert len(r["pass_ratios"]) == len(r["child_seconds"]) == len(r["limit_rounds"])
            limit = r["limit_rounds"][0]
            first = (r["bytes"] / r["child_seconds"][0]) / (limit["bytes"] / limit["seconds"])
            assert r["pass_ratios"][0] == pytest.approx(first)
    # Loads took their rounds interleaved, from the page cache state they claim, and the report says so.
    loads = [r for r in run.results if r.get("kind") == "load"]
    assert all(len(r["child_seconds"]) >= 3 and r["schedule"]["interleaved_rounds"] >= 2 for r in loads)
    warm = [f for r in loads if r["cache"] == "warm" for f in r["resident_before"]]
    cold = [f for r in loads if r["cache"] == "cold" for f in r["resident_before"]]
    assert min(warm) >= 0.98 and max(cold) == 0.0
    assert f"warm rounds from >= {min(warm):.1%} resident, cold from <= 0.0%" in text
    honest = next(line for line in text.splitlines() if line.startswith("| transformer | float32 | warm | 4 |"))
    assert f"({percent(mmap['ratio_median'])} ±{percent(half)})" in honest
    for heading in (
        "## The machine's limits",
        "The limits the results are judged against: a raw read or write",
        "| torch | raw:read cold | raw:read warm | raw:read_into warm | raw:write |",
        "## The honest comparison",
        "## Load, transformer-like",
        "## Load, lora-like",
    ):
        assert heading in text
    assert "## Save" in text and "torch_zip:load | a=" in text and "verify's load + manifest check" in text
    for png in ("throughput.png", "memory.png"):
        assert (tmp_path / "r" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{png[:-4]}]({png})" in text
    assert "wrote" in capsys.readouterr().out


def test_gate_passes_a_run_against_itself(run_json: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench-gate", str(run_json), str(run_json), "--max-slowdown", "10%"]) == 0
    assert "bench-gate passed" in capsys.readouterr().out


def test_gate_by_absolute_times_fails_a_slowdown_and_names_it(
    run_json: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def slower(info: dict[str, Any], _: Any) -> None:
        if info.get("op") == "mmap_touch" and info.get("workload") == "lora" and info.get("cache") == "cold":
            # Three times slower: beyond any noise band of this machine's rounds.
            info["child_seconds"] = [s * 3 for s in info["child_seconds"]]

    current = _edit(run_json, tmp_path / "slow.json", slower)
    assert main(["bench-gate", str(run_json), str(current), "--absolute", "--max-slowdown", "10%"]) == 1
    out = capsys.readouterr().out
    assert "SLOWER +200.0%" in out and "load torch_zip:mmap_touch [lora float32 cold, 256 MiB]" in out
    assert "1 slower than 10% beyond noise" in out and "compared on times" in out
    assert main(["bench-gate", str(run_json), str(current), "--absolute", "--max-slowdown", "250%"]) == 0
    # By ratio (the default), times alone moving is no regression: the limits did not move with them...
    assert main(["bench-gate", str(run_json), str(current), "--max-slowdown", "10%"]) == 0
    assert "compared on ratios to each round's limit" in capsys.readouterr().out


def test_gate_says_machine_changed_when_the_limits_moved(
    run_json: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """...and when the limits moved too, the machine changed: reported, not judged (exit 4)."""

    def slower_machine(info: dict[str, Any], _: Any) -> None:
        if "child_seconds" not in info:
            return  # the harness's own figures
        info["child_seconds"] = [s * 2 for s in info["child_seconds"]]
        for limit in info.get("limit_rounds") or []:
            if info["limit_op"] == "raw:read" and info["limit_cache"] == "warm":
                limit["seconds"] *= 2

    current = _edit(run_json, tmp_path / "other-machine.json", slower_machine)
    assert main(["bench-gate", str(run_json), str(current)]) == 4
    out = capsys.readouterr().out
    assert "MOVED  raw:read warm:" in out and "(-50.0%)" in out and "bench-gate MACHINE CHANGED" in out
    assert "SLOWER" not in out  # no result judged
    assert main(["bench-gate", str(run_json), str(current), "--max-limit-change", "60%", "--absolute"]) == 1


def test_gate_does_not_fail_a_shift_inside_the_noise(run_json: Path, tmp_path: Path) -> None:
    def noisy(info: dict[str, Any], _: Any) -> None:
        if info.get("op") == "mmap_touch" and info.get("workload") == "lora":
            base = sorted(info["child_seconds"])[len(info["child_seconds"]) // 2]
            info["child_seconds"] = [base * 0.5, base * 1.2, base * 2.5]  # median +20%, IQR of the same order
            ratio = sorted(info["pass_ratios"])[len(info["pass_ratios"]) // 2]
            info["pass_ratios"] = [ratio / f for f in (0.5, 1.2, 2.5)]

    noisy_run = _edit(run_json, tmp_path / "noisy.json", noisy)
    assert main(["bench-gate", str(run_json), str(noisy_run)]) == 0
    assert main(["bench-gate", str(run_json), str(noisy_run), "--absolute"]) == 0


def test_gate_refuses_other_machines_and_bad_files(
    run_json: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def elsewhere(_: Any, data: dict[str, Any]) -> None:
        data["machine_info"].setdefault("cpu", {})["brand_raw"] = "Some Other CPU"

    other = _edit(run_json, tmp_path / "other.json", elsewhere)
    assert main(["bench-gate", str(run_json), str(other)]) == 2
    assert "not comparable (pass --any-machine" in capsys.readouterr().err
    assert main(["bench-gate", str(run_json), str(other), "--any-machine"]) == 0
    capsys.readouterr()
    (tmp_path / "empty.json").write_text(json.dumps({"benchmarks": []}))
    (tmp_path / "text.json").write_text("not json")
    for bad, message in (
        ("empty.json", "no ckpt-compat results in it"),
        ("text.json", "not JSON"),
        ("missing.json", "cannot read it"),
    ):
        assert main(["bench-gate", str(run_json), str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(tmp_path / bad) in err and message in err
    assert main(["bench-gate", str(run_json), str(run_json), "--max-slowdown", "ten"]) == 2
    assert main(["bench-report", str(tmp_path / "missing.json")]) == 2


def test_gate_needs_results_in_common(run_json: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def renamed(info: dict[str, Any], _: Any) -> None:
        info["workload"] = "other-" + str(info.get("workload"))

    assert main(["bench-gate", str(run_json), str(_edit(run_json, tmp_path / "r.json", renamed))]) == 2
    assert "no result in common" in capsys.readouterr().err


def test_runs_are_merged_in_version_order(run_json: Path, tmp_path: Path) -> None:
    def older(info: dict[str, Any], _: Any) -> None:
        info["torch"] = "2.4.1"

    from ckpt_compat.bench.report import markdown
    from ckpt_compat.bench.runs import read_runs

    runs = read_runs([run_json, _edit(run_json, tmp_path / "old.json", older)])
    assert runs[0].torch == "2.4.1"
    header = next(
        line for line in markdown(runs).splitlines() if line.startswith("| workload | dtype | cache | tensors")
    )
    assert header.index("2.4.1 mmap+touch") < header.index(f"{runs[1].torch.split('+')[0]} mmap+touch")
    mixed = copy.deepcopy(json.loads(run_json.read_text()))
    mixed["benchmarks"][0]["extra_info"]["torch"] = "1.0"
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    with pytest.raises(ValueError, match="several torch versions"):
        read_runs([tmp_path / "mixed.json"])


def test_schema_1_runs_are_read_in_todays_names_and_gated_on_times(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs stored before the same-pass limits (schema 1, committed in docs/) still read: their
    format names are the registry's now, and the gate compares them by time (no ratios to compare)."""
    old = ROOT / "docs" / "benchmarks" / "results" / "repeatability" / "adaptive-a-2.13cpu.json"
    run = read_run(old)
    assert {r["schema"] for r in run.results} == {"ckpt-compat/bench/1"}
    assert "safetensors_file" in {r["format"] for r in run.results}
    assert "safetensors" not in {r["format"] for r in run.results}
    assert main(["bench-gate", str(old), str(old)]) == 0
    out = capsys.readouterr().out
    assert "61 results compared on times (no limits in these runs)" in out


def _one(kind: str, field: str, value: object) -> Any:
    def change(info: dict[str, Any], _: Any) -> None:
        if info["kind"] == kind:
            info[field] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_one("load", "median_s", None), "load result's median_s must be a number > 0, got None"),
        (_one("load", "gbps", "x|\n# y <!--"), "load result's gbps must be a number > 0"),
        (_one("load", "child_seconds", -1), "load result's child_seconds must be a non-empty list of seconds > 0"),
        (_one("load", "format", []), "load result's format must be a name"),
        (_one("load", "tensors", None), "load result's tensors must be a whole number >= 0"),
        (_one("load", "limit_rounds", [{"seconds": 0}]), r"limit_rounds must be a list of \{seconds > 0, bytes\}"),
        (_one("load", "kind", "weird"), "kind must be one of harness, fresh_check, sweep, load, save"),
        (_one("harness", "kind", []), r"kind must be one of harness, fresh_check, sweep, load, save, got \[\]"),
        (_one("harness", "gbps_by_step", None), "harness result's gbps_by_step must be an object of numbers"),
        (_one("fresh_check", "fresh_gbps", float("nan")), "fresh_check result's fresh_gbps must be a number > 0"),
        (lambda info, _: info.__setitem__("torch", "banana"), "'banana' is not a torch version"),
    ],
)
def test_a_stored_run_holds_the_types_the_report_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any, message: str
) -> None:
    """A run from another machine with a field of another type is a usage error naming the file,
    the benchmark and the field (each was an internal error in bench-report or bench-gate)."""
    edited = _edit(RUN, tmp_path / "edited.json", change)
    with pytest.raises(ValueError, match=message):
        read_run(edited)
    for command in (["bench-report", str(edited), "--out", str(tmp_path / "r")], ["bench-gate", str(RUN), str(edited)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"ckpt-compat: error: {edited}: benchmark "), err
        assert message.split()[0] in err[0]


def test_a_run_without_a_complete_load_is_reported_without_plots(tmp_path: Path) -> None:
    """``pytest benchmarks -k save`` (or formats this release does not register) measures no
    complete load warm: the tables are written, and no plot of nothing (it was an internal error)."""
    data = json.loads(RUN.read_text())
    data["benchmarks"] = [b for b in data["benchmarks"] if b["extra_info"]["kind"] == "save"]
    saves = tmp_path / "saves.json"
    saves.write_text(json.dumps(data))
    assert main(["bench-report", str(saves), "--out", str(tmp_path / "r")]) == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["benchmarks.md"]
    assert "## Plots" not in (tmp_path / "r" / "benchmarks.md").read_text()
