"""A torch.export archive's raw weights against its payload config: `check FILE` says broken exactly
where torch.export.load cannot build the weights (a differential over record edits)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ckpt_compat.inspection import inspect_checkpoint
from tests.samples import rewrite_zip

FIXTURE = Path(__file__).resolve().parent.parent / "ckpt_compat/fixtures/corpora/torch-2.13/tied/torch_export.pt2"


def _edit(change: Callable[[dict[str, bytes], str], None]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        rewrite_zip(path, lambda records: change(records, next(n for n in records if n.endswith("weights/weight_0"))))

    return write


def _config(records: dict[str, bytes]) -> str:
    return next(n for n in records if n.endswith("model_weights_config.json"))


@pytest.mark.parametrize(
    "change",
    [
        _edit(lambda r, w: None),
        _edit(lambda r, w: r.update({w: r[w][:100]})),
        _edit(lambda r, w: r.update({w: r[w][:-2]})),
        _edit(lambda r, w: r.update({w: r[w] + bytes(64)})),
        _edit(lambda r, w: r.pop(w)),
        _edit(lambda r, w: r.update({_config(r): b"{not json"})),
    ],
)
def test_a_pt2_verdict_is_what_torch_export_load_does(
    tmp_path: Path, change: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    if importlib.util.find_spec("torch.export.pt2_archive") is None:
        pytest.skip(f"torch {torch.__version__} writes no payload configs (the archive format of torch 2.8+)")
    path = tmp_path / "model.pt2"
    path.write_bytes(FIXTURE.read_bytes())
    change(path)
    caplog.set_level(logging.CRITICAL)  # torch.export.load logs each failure's traceback as a warning
    try:
        torch.export.load(str(path)).state_dict  # noqa: B018 - the weights are built here
        loads = True
    except Exception:
        loads = False
    inspection = inspect_checkpoint(path)
    assert (inspection.verdict in ("ok", "unsafe")) is loads, (loads, inspection.lines())
