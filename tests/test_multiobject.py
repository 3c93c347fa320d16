from __future__ import annotations

from pathlib import Path

from ckpt_compat.expectations import Expectations
from ckpt_compat.formats import get_format
from ckpt_compat.multiobject import bundle, check_multi_object
from ckpt_compat.results import Outcome


def test_a_dict_of_state_dicts_and_plain_values_survives(tmp_path: Path) -> None:
    results = check_multi_object([get_format("torch_zip"), get_format("torch_legacy")], tmp_path)
    bundles = [r for r in results if r.cell.options["check"] == "bundle" and not r.cell.options.get("mmap")]
    assert len(bundles) == 6 and all(r.outcome is Outcome.OK for r in bundles), [r.detail for r in bundles]
    assert {"step", "lr", "name", "tags", "none", "nested"} <= set(bundle())


def test_one_stream_of_several_saves(tmp_path: Path) -> None:
    results = {
        r.cell.format: r
        for r in check_multi_object([get_format("torch_zip"), get_format("torch_legacy")], tmp_path)
        if r.cell.options["check"] == "stream"
    }
    assert results["torch_legacy"].outcome is Outcome.OK
    zipped = results["torch_zip"]
    assert zipped.outcome is Outcome.LOAD_ERROR and zipped.error is not None and zipped.error.type == "RuntimeError"
    assert zipped.error.message.startswith("torch.load of object 1 of 3 from one stream: ")
    assert Expectations.load().judge_one(zipped).explained


def test_a_changed_value_is_found(tmp_path: Path) -> None:
    from ckpt_compat.multiobject import _compare
    from ckpt_compat.results import Cell, Endpoint

    here = Endpoint("x", "cpu")
    changed = {**bundle(), "lr": 0.25, "tags": ["a", "b", 3]}
    result = _compare(Cell("bundle", "f", here, here, {}), bundle(), lambda: changed)
    assert result.outcome is Outcome.MISMATCH
    found = {d.path: (d.kind, d.expected, d.actual) for d in result.differences}
    assert found[("bundle", "lr")] == ("type", "float 0.125", "float 0.25")
    assert found[("bundle", "tags")] == ("type", "list of 4", "list of 3")


def test_refused_objects_name_the_global_and_the_hint_works(tmp_path: Path) -> None:
    import re

    import torch

    results = [
        r
        for r in check_multi_object([get_format("torch_zip")], tmp_path)
        if r.cell.options["check"] == "safe_unpickler"
    ]
    safe = {r.cell.spec_id: r for r in results if r.cell.options["weights_only"] is True}
    assert {r.outcome for r in safe.values()} == {Outcome.UNSUPPORTED}
    refused = {k: r.error.refused_global for k, r in safe.items() if r.error is not None}
    assert refused["refused-argparse_namespace"] == "argparse.Namespace"
    assert refused["refused-numpy_scalar"] in ("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar")
    assert refused["refused-user_class"] == "ckpt_compat.multiobject.UserConfig"
    assert all(r.outcome is Outcome.OK for r in results if r.cell.options["weights_only"] is False)
    if not hasattr(torch.serialization, "add_safe_globals"):  # torch < 2.4: no allow-list to suggest
        assert "load it with weights_only=False" in safe["refused-argparse_namespace"].detail
        return
    # The suggested call is the right one: with it, the safe loader accepts the file.
    hint = re.search(r"add_safe_globals\(\[([\w.]+)\]\)", safe["refused-argparse_namespace"].detail)
    assert hint is not None and hint.group(1) == "argparse.Namespace"
    import argparse

    path = tmp_path / "refused-argparse_namespace-torch_zip.pt"
    if hasattr(torch.serialization, "safe_globals"):  # the scoped form arrived in 2.5
        with torch.serialization.safe_globals([argparse.Namespace]):
            assert torch.load(path, weights_only=True)["obj"] == argparse.Namespace(lr=0.1, epochs=3)
    assert all(Expectations.load().judge_one(r).explained for r in safe.values())
