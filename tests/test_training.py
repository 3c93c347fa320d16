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
