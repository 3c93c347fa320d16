"""Training checkpoints resume bit for bit, and leaving state out is caught and named."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt_compat.formats import get_format
from ckpt_compat.results import Outcome
from ckpt_compat.training import OPTIMIZERS, check_training, divergence, reference


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> list:
    return check_training([get_format("torch_zip")], tmp_path_factory.mktemp("train"))


def test_every_optimizer_resumes_bit_for_bit(full: list) -> None:
    resumed = [r for r in full if r.cell.options.get("weights_only") is False]
    assert {r.cell.options["optimizer"] for r in resumed} == set(OPTIMIZERS)
    assert all(r.outcome is Outcome.OK for r in resumed), [r.detail for r in resumed]


def test_safe_loading_names_the_refused_numpy_global(full: list) -> None:
    safe = [r for r in full if r.cell.options.get("weights_only") is True]
    assert safe and all(r.outcome is Outcome.UNSUPPORTED for r in safe)
    assert all(r.error is not None and (r.error.refused_global or "").startswith("numpy.") for r in safe)
    assert all("add_safe_globals" in r.error.message for r in safe if r.error is not None)


@pytest.mark.parametrize(
    ("omit", "optimizer"), [("optimizer", "sgd_momentum"), ("optimizer", "adam"), ("rng", "adamw")]
)
def test_leaving_state_out_is_caught_with_step_and_tensor(omit: str, optimizer: str, tmp_path: Path) -> None:
    results = check_training([get_format("torch_zip")], tmp_path, omit=[omit], optimizers=[optimizer])
    [cell] = [r for r in results if r.cell.options.get("weights_only") is False]
    assert cell.outcome is Outcome.MISMATCH and cell.cell.options["omitted"] == omit
    assert cell.notes[0].startswith("diverged at step 4: first tensor '")
    assert cell.differences and {d.root for d in cell.differences} == {"resume"}
    assert all(d.kind == "bytes" and d.elements and d.max_abs for d in cell.differences)


def test_divergence_names_first_step_and_tensor() -> None:
    want, _ = reference("adam", 4)
    assert divergence(want[2:], want[2:], 2) == ""
    got = [dict(want[2]), {**want[3], "rnn.weight_hh_l0": "x"}]
    assert (
        divergence(want[2:], got, 2)
        == f"diverged at step 4: first tensor 'rnn.weight_hh_l0' (1 of {len(want[3])} differ)"
    )


def test_tensor_only_formats_say_they_cannot_hold_training_state(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    [cell] = check_training([get_format("safetensors_file")], tmp_path)
    assert cell.outcome is Outcome.UNSUPPORTED and cell.error is not None
    assert "cannot hold a training checkpoint" in cell.error.message


def test_another_machines_run_is_held_to_a_few_ulp_only_where_this_one_trains_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from ckpt_compat import training
    from ckpt_compat.objects import object_records
    from ckpt_compat.results import Cell, Endpoint

    fmt = get_format("torch_zip")
    checkpoint, written = training.write_checkpoints(tmp_path / "c", [fmt], "sgd_momentum", 3)
    records = object_records(checkpoint)
    producers_run = torch.load(written["reference"], weights_only=True)
    key = next(k for k, v in producers_run.items() if v.dtype == torch.float32 and v.numel())
    producers_run[key].view(torch.int32).view(-1)[0] += 2  # the producer's CPU rounded twice the other way
    here = Endpoint(torch.__version__, "cpu")
    cell = Cell(
        training.SPEC_ID, fmt.name, here, here, {"weights_only": False, "check": "resume", "optimizer": "sgd_momentum"}
    )

    def check() -> object:
        return training.check_saved(cell, fmt, written[fmt.name], records, producers_run, 3, trusted=True)

    same_machine = check()  # this machine repeats the producer's first steps: held to every bit
    assert same_machine.outcome is Outcome.MISMATCH and f"resume['{key}']" in same_machine.detail
    trains_otherwise = dict(training._trained_here("sgd_momentum", 3))
    some = next(k for k in trains_otherwise if '"model"' in k and "digest" in trains_otherwise[k])
    trains_otherwise[some] = {**trains_otherwise[some], "digest": "0" * 32}
    monkeypatch.setattr(training, "_trained_here", lambda *_: trains_otherwise)
    other_machine = check()
    assert other_machine.outcome is Outcome.OK and "at most 2 ulp in 1 tensor(s)" in other_machine.detail
    producers_run[key].view(torch.int32).view(-1)[1] += 1000  # beyond a machine's rounding: still a mismatch
    assert check().outcome is Outcome.MISMATCH
