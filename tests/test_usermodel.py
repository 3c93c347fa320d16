"""UserModel: a user's factory or module as a round-trip subject."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ckpt_compat.loading import Call, invoke, leaf_blocks
from ckpt_compat.usermodel import UserModel, UserModelError, from_references, import_object


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)
        self.register_buffer("steps", torch.tensor(7))

    def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
        return self.norm(self.a(x)) * scale


def test_inputs_become_one_call() -> None:
    x = torch.ones(2, 3)
    assert Call.of(x) == Call((x,))
    assert Call.of((x, x)).args == (x, x)
    assert Call.of({"x": x}).kwargs == {"x": x}
    call = Call((x,), {"scale": torch.tensor(2.0)})
    assert [p for p, _ in leaf_blocks(call)] == [""]  # the whole model is the one block
    assert len(call.tensors()) == 2
    model = TwoInputs().eval()
    torch.testing.assert_close(invoke(model, call), model(x, scale=torch.tensor(2.0)))


def test_a_fresh_model_differs_in_every_state_entry_and_builds_are_repeatable() -> None:
    user = UserModel(TwoInputs, lambda: Call((torch.ones(2, 3),), {"scale": torch.tensor(2.0)}))
    user.check_deterministic()
    a, b, fresh = user.model(), user.model(), user.model(perturb=True)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
        assert not torch.equal(value, fresh.state_dict()[key]), key
    assert not a.training  # checked in eval mode, as inference loads run
    meta = user.model("meta")
    assert all(t.is_meta for t in meta.state_dict().values())


def test_a_module_instance_is_copied_not_shared() -> None:
    module = TwoInputs()
    user = UserModel(module)
    assert user.model() is not module
    assert user.inputs() == {}  # no inputs: nothing runs, tracing formats say so


def test_a_nondeterministic_factory_is_refused_with_the_key() -> None:
    def noisy() -> nn.Module:
        layer = nn.Linear(2, 2)
        with torch.no_grad():
            layer.bias.fill_(random.random())
        return layer

    with pytest.raises(UserModelError, match=r"differ at 'bias'"):
        UserModel(noisy, name="noisy").check_deterministic()


def test_references_name_the_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "userpkg_models.py").write_text(
        "import torch\nfrom torch import nn\nLAYER = nn.Linear(2, 2)\nNUMBER = 3\n"
        "def build():\n    return nn.Linear(2, 2)\ndef ids():\n    return torch.ones(1, 2)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("userpkg_models", None)
    assert from_references("userpkg_models:build", "userpkg_models:ids").call is not None
    assert isinstance(from_references("userpkg_models:LAYER").model(), nn.Linear)
    with pytest.raises(UserModelError, match=r"--model 'userpkg_models:NUMBER': int is neither"):
        from_references("userpkg_models:NUMBER")
    with pytest.raises(UserModelError, match=r"--model 'nosuchpkg:x': cannot import nosuchpkg"):
        import_object("nosuchpkg:x", "--model")
    with pytest.raises(UserModelError, match="expected MODULE:NAME"):
        import_object("userpkg_models", "--model")
    assert import_object(str(tmp_path / "userpkg_models.py") + ":NUMBER", "--model") == 3


def test_the_forward_must_run_on_the_inputs_before_any_save() -> None:
    good = UserModel(TwoInputs, lambda: Call((torch.ones(2, 3),), {"scale": torch.tensor(2.0)}), inputs_name="good")
    good.check_forward()
    UserModel(TwoInputs).check_forward()  # no inputs: no forward to check
    bad = UserModel(TwoInputs, lambda: Call((torch.ones(2, 5),), {"scale": torch.tensor(2.0)}), inputs_name="m:bad")
    with pytest.raises(UserModelError, match=r"inputs=m:bad: the model's forward raises on them .*RuntimeError: mat1"):
        bad.check_forward()
    missing = UserModel(TwoInputs, torch.ones(2, 3))  # the keyword argument left out
    with pytest.raises(UserModelError, match=r"TypeError: .*scale"):
        missing.check_forward()
