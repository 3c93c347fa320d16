"""The MLflow adapter: a third-party format through the entry points, on real MLflow model folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("mlflow.pytorch", reason='MLflow is an optional extra: pip install "ckpt-compat[mlflow]"')

from ckpt_compat import versions
from ckpt_compat.devices import MapLocation
from ckpt_compat.expectations import Expectations, judge, shipped
from ckpt_compat.formats import Unsupported, Untrusted, all_formats, available_formats
from ckpt_compat.loading import Call
from ckpt_compat.roundtrip import check_spec
from ckpt_compat.usermodel import UserModel

CPU = MapLocation("str", "cpu", "cpu")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)).mean((2, 3)))


def _image() -> torch.Tensor:
    return torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)


def test_registered_through_the_entry_points() -> None:
    formats = all_formats()
    assert {"mlflow_pickle", "mlflow_pt2"} <= set(formats)
    assert {"mlflow_pickle", "mlflow_pt2"} <= {f.name for f in available_formats()}  # so `run` picks them
    assert any(p.name == "mlflow_expectations.toml" for p in shipped())


def test_a_model_round_trips_through_both_serializations(tmp_path: Path) -> None:
    formats = [all_formats()["mlflow_pickle"], all_formats()["mlflow_pt2"]]
    results = check_spec(UserModel(Net, _image), formats, tmp_path)
    judged = judge(results, Expectations.load())
    ran = {(j.result.cell.variant, j.result.outcome.value) for j in judged}
    assert ("mlflow_pickle[allow_code_execution]", "ok") in ran
    pt2 = [j for j in judged if j.result.cell.variant == "mlflow_pt2"]
    # MLflow proves a pt2 archive pickle-free with torch >= 2.10 only, and refuses it before.
    refused_pt2 = ("mlflow-pt2-refused-before-torch-2.10",)
    assert ("mlflow_pt2", "ok") in ran or (
        versions.key(torch.__version__) < (2, 10)
        and any(j.causes == refused_pt2 for j in pt2)
        and all(j.explained for j in pt2)
    )
    # The refusal of the default load is MLflow's own, named by the plugin's known issue.
    refused = [j for j in judged if j.result.cell.variant == "mlflow_pickle[allow_code_execution=False]"]
    assert refused and all(j.explained and j.causes == ("mlflow-pickle-refused-by-default",) for j in refused)
    forward = [j for j in judged if "forward" in j.result.checks]
    assert forward and all(j.result.outcome.value == "ok" for j in forward)


def test_a_foreign_pickled_model_is_never_unpickled(tmp_path: Path) -> None:
    fmt = all_formats()["mlflow_pickle"]
    fmt.save(Net(), tmp_path / "m.mlflow")
    assert (tmp_path / "m.mlflow" / "MLmodel").is_file()
    with pytest.raises(Untrusted, match="MLFLOW_ALLOW_MODEL_CODE_EXECUTION=true"):
        fmt.load(tmp_path / "m.mlflow", {"allow_code_execution": True}, CPU, Net, trusted=False)
    with pytest.raises(Unsupported, match="MLflow refuses to unpickle"):
        fmt.load(tmp_path / "m.mlflow", {"allow_code_execution": False}, CPU, Net, trusted=False)


def test_pt2_takes_positional_tensors_only(tmp_path: Path) -> None:
    fmt = all_formats()["mlflow_pt2"]
    with pytest.raises(Unsupported, match="positional tensor inputs only"):
        fmt.save(Net(), tmp_path / "kw.mlflow", Call((), {"x": _image()}))
    assert not (tmp_path / "kw.mlflow").exists()  # nothing half-written
