"""The harness catches what it claims to catch: each planted fault gets the right outcome and key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ckpt_compat.expectations import Expectations
from ckpt_compat.formats import available_formats, get_format
from ckpt_compat.results import Outcome
from ckpt_compat.roundtrip import Expected, SavedFile, check_file, check_spec
from tests.faults import Faulty, drop, flip_bit_of, nudge, retype, untie
from tests.samples import bag, load


def _primary(results: list) -> object:
    """The cell that loads onto the CPU with map_location='cpu' (it runs every loading check)."""
    [cell] = [r for r in results if r.cell.consumer.device == "cpu" and r.cell.options["map_location"] == "str:cpu"]
    return cell


def test_clean_rich_spec_is_ok_or_explained(tmp_path: Path) -> None:
    from ckpt_compat.dtypes import why_unsupported

    if why_unsupported("uint32"):  # the rich spec holds every dtype of torch >= 2.3
        pytest.skip(str(why_unsupported("uint32")))
    expectations = Expectations.load()
    results = check_spec(load("rich"), available_formats(), tmp_path)
    assert results
    assert [r for r in results if not expectations.judge_one(r).explained] == []
    ok = {r.cell.variant for r in results if r.outcome is Outcome.OK}
    assert {"torch_zip[weights_only]", "torch_zip[mmap,weights_only]"} <= ok or not get_format(
        "torch_zip"
    ).load_variants()[1:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("inner", ["torch_zip", "torch_legacy", "safetensors_file"])
def test_one_bit_flipped_in_the_file_is_a_mismatch_at_that_key(inner: str, tmp_path: Path) -> None:
    # The sign bit of element 0 (float32, little-endian): the forward output must change too.
    fmt = Faulty(inner, after_save=flip_bit_of("fc.weight", byte=3, bit=7))
    if fmt.inner.why_not_usable():
        pytest.skip(fmt.inner.why_not_usable() or "")
    cells = check_spec(load("plain"), [fmt], tmp_path, consumers=["cpu"])
    assert cells and all(r.outcome is Outcome.MISMATCH for r in cells)
    for r in cells:
        found = {(d.kind, d.path): d for d in r.differences}
        assert (
            found["bytes", ("state_dict", "fc.weight")].elements,
            found["bytes", ("state_dict", "fc.weight")].total,
        ) == (1, 48)
        assert found["bytes", ("state_dict", "fc.weight")].block == "Linear"  # whose tensor it is
    forward = [d for d in _primary(cells).differences if d.root == "forward"]
    assert forward and {d.path[1] for d in forward} == {"fc"} and {d.block for d in forward} == {"Linear"}


def test_a_dropped_key_is_keys_with_its_path_and_block_once(tmp_path: Path) -> None:
    """The key is missing, once: the loading checks, which cannot load a partial state dict strictly,
    do not report it again (a strict load raising, a non-strict one reporting it missing)."""
    cell = _primary(
        check_spec(load("plain"), [Faulty("torch_zip", after_load=drop("bn.running_var"))], tmp_path, consumers=["cpu"])
    )
    assert cell.outcome is Outcome.KEYS
    assert [(d.kind, d.path, d.block) for d in cell.differences] == [
        ("missing", ("state_dict", "bn.running_var"), type(load("plain").model().bn).__name__)
    ]
    assert "strict_load" not in cell.checks and any("loading checks not run" in n for n in cell.notes)


def test_a_lost_tie_is_aliasing(tmp_path: Path) -> None:
    cell = _primary(
        check_spec(load("tied"), [Faulty("torch_zip", after_load=untie("lm.head.weight"))], tmp_path, consumers=["cpu"])
    )
    assert cell.outcome is Outcome.ALIASING
    [d] = [d for d in cell.differences if d.root == "state_dict"]
    assert (d.kind, d.path) == ("aliasing", ("state_dict", "lm.embed.weight"))
    assert d.detail == "keys ['lm.embed.weight', 'lm.head.weight'] no longer share one storage"


def test_a_wrong_dtype_is_a_mismatch(tmp_path: Path) -> None:
    cell = _primary(
        check_spec(
            load("plain"),
            [Faulty("torch_zip", after_load=retype("fc.bias", torch.float64))],
            tmp_path,
            consumers=["cpu"],
        )
    )
    assert cell.outcome is Outcome.MISMATCH
    dtype = {(d.kind, d.path): (d.expected, d.actual) for d in cell.differences}
    assert dtype["dtype", ("state_dict", "fc.bias")] == ("float32", "float64")


# Where the loading checks (strict load, assign=True onto meta, the forward pass) report.
LOADING_ROOTS = {"loaded_model.state_dict", "assigned.state_dict", "forward"}
LOAD_FAULTS = {
    "a value one ulp off": ("plain", nudge("fc.weight")),
    "a dtype": ("plain", retype("fc.bias", torch.float64)),
    "a lost tie": ("tied", untie("lm.head.weight")),
}


@pytest.mark.parametrize("fault", LOAD_FAULTS, ids=list(LOAD_FAULTS))
def test_one_load_variant_with_a_fault_gets_loading_checks_of_its_own(fault: str, tmp_path: Path) -> None:
    """The loading checks' results are reused between loads whose states have one fingerprint
    (torch_zip's variants usually load the same state): a variant whose state differs in one
    property gets its own, whether it loads before the clean variants or after them."""
    variants = get_format("torch_zip").load_variants()
    if len(variants) < 2:
        pytest.skip(f"torch {torch.__version__} has one load variant of torch_zip")
    name, corrupt = LOAD_FAULTS[fault]
    found = []
    for only in (variants[0], variants[-1]):
        fmt = Faulty("torch_zip", after_load=corrupt, only=only)
        checked = [r for r in check_spec(load(name), [fmt], tmp_path, consumers=["cpu"]) if "strict_load" in r.checks]
        assert len(checked) == len(variants)
        faulty = [r for r in checked if {k: v for k, v in r.cell.options.items() if k != "map_location"} == only]
        assert len(faulty) == 1
        found.append([d for d in faulty[0].differences if d.root in LOADING_ROOTS])
        assert found[-1], f"the fault in {only} is not seen by the loading checks"
        assert [d for r in checked if r is not faulty[0] for d in r.differences] == []
    assert found[0] == found[1]


def test_loads_that_give_one_state_run_the_loading_checks_once(tmp_path: Path) -> None:
    from ckpt_compat.results import Endpoint

    fmt = get_format("torch_zip")
    if len(fmt.load_variants()) < 2:
        pytest.skip(f"torch {torch.__version__} has one load variant of torch_zip")
    spec = load("tied")
    expected = Expected.build(spec)
    path = tmp_path / "tied.pt"
    fmt.save(spec.model(), path)
    cells = check_file(SavedFile(spec, fmt, path, Endpoint(torch.__version__, "cpu"), expected), ["cpu"])
    checked = [r for r in cells if "strict_load" in r.checks]
    assert len(checked) == len(fmt.load_variants())
    assert all(r.outcome is Outcome.OK for r in cells)
    assert len(expected.loading_checks) == 1


def test_every_device_and_map_location_spelling_is_a_cell(tmp_path: Path) -> None:
    results = check_spec(load("plain"), [get_format("torch_zip")], tmp_path)
    locations = {r.cell.options["map_location"] for r in results}
    assert {"str:cpu", "device:cpu", "dict:cpu", "callable:cpu", "str:meta", "device:meta", "dict:meta"} <= locations
    assert all(r.outcome is Outcome.OK for r in results)


def test_a_save_refusal_is_unsupported_not_a_crash(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    [cell] = check_spec(load("tied"), [get_format("safetensors_file")], tmp_path, consumers=["cpu"])
    assert cell.outcome is Outcome.UNSUPPORTED and cell.error is not None and cell.error.type == "Unsupported"
    assert "share memory" in cell.error.message


@pytest.mark.cuda
def test_saved_on_cuda_loaded_everywhere(tmp_path: Path) -> None:
    results = check_spec(load("rich"), available_formats(), tmp_path, producers=["cuda"])
    expectations = Expectations.load()
    assert {r.cell.consumer.device for r in results} >= {"cpu", "cuda", "meta"}
    assert [r for r in results if not expectations.judge_one(r).explained] == []


def test_non_persistent_buffers_survive_a_whole_model_pickle(tmp_path: Path) -> None:
    spec = bag({"name": "hidden", "role": "buffer", "dtype": "float32", "shape": [8], "persistent": False})

    def zero_hidden(model: torch.nn.Module, path: Path) -> None:
        module = torch.load(path, weights_only=False)
        module.bag.hidden.zero_()
        torch.save(module, path)

    fmt = Faulty("torch_module", after_save=zero_hidden)
    cells = check_spec(spec, [fmt], tmp_path, consumers=["cpu"])
    assert cells and all(c.outcome is Outcome.MISMATCH for c in cells)
    assert all(("bytes", ("buffers", "bag.hidden")) in {(d.kind, d.path) for d in c.differences} for c in cells)


def test_a_buffer_left_out_stays_missing_and_one_in_the_state_dict_is_persisted() -> None:
    # torch.export before 2.8 leaves out an unread non-persistent buffer: that is not a persisted one.
    from ckpt_compat.differences import Difference
    from ckpt_compat.roundtrip import _name_persisted_buffers

    absent = Difference("missing", ("buffers", "b"), "key absent")
    assert _name_persisted_buffers([absent], {"b": 0}, {})[0].kind == "missing"
    assert _name_persisted_buffers([absent], {"b": 0}, {"b": 0})[0].kind == "persisted"


def test_a_program_raising_what_eager_raised_for_a_block_is_not_a_difference() -> None:
    """torch 2.2 has no float16 LayerNorm kernel on the CPU: eager cannot run that block, and a
    loaded torch.export program, which runs every block at once, raises the same error. Another
    error from the program is still a difference."""
    from ckpt_compat import loading
    from ckpt_compat.errorinfo import ErrorInfo
    from ckpt_compat.roundtrip import Expected, _compare_whole_call

    missing = RuntimeError("\"LayerNormKernelImpl\" not implemented for 'Half'")
    x = torch.ones(2)
    expected = Expected({}, {}, {"a": loading.NoForward(ErrorInfo.of(missing)), "b": x}, {"a": x, "b": x}, {})

    def raising(error: Exception) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise error

        return call

    assert _compare_whole_call(expected, raising(RuntimeError(str(missing)))) == []
    [found] = _compare_whole_call(expected, raising(RuntimeError("index out of range")))
    assert found.kind == "raised" and found.path == ("program",)


def test_a_key_that_names_no_module_has_no_holder() -> None:
    """A user's state-dict hook may rename keys: the key's block is then unknown, not an error."""
    from torch import nn

    from ckpt_compat.roundtrip import holders_of

    class Renamed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(2, 2)
            self._register_state_dict_hook(
                lambda module, state, prefix, local: {"gone." + k: v for k, v in state.items()}
            )

    model = Renamed()
    keys = list(model.state_dict())
    assert keys == ["gone.inner.weight", "gone.inner.bias"]
    assert holders_of(model, [*keys, "inner.weight", "top"]) == {"inner.weight": "Linear", "top": "Renamed"}
