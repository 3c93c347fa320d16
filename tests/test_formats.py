from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ckpt_compat.compare import compare_state_dicts
from ckpt_compat.devices import MapLocation
from ckpt_compat.differences import Difference
from ckpt_compat.expectations import Expectations
from ckpt_compat.formats import (
    UnknownFormat,
    Unsupported,
    Untrusted,
    all_formats,
    available_formats,
    get_format,
    parse_format_list,
    why_not_usable,
)
from ckpt_compat.isolation import Pool
from ckpt_compat.results import Cell, CellResult, Endpoint, Outcome
from ckpt_compat.specs import ModelSpec, build, example_inputs
from tests.samples import bag, load

CPU = MapLocation("str", "cpu", "cpu")


def _bag(dtype: str, **extra: object) -> ModelSpec:
    tensor = {"name": "t", "role": "buffer", "dtype": dtype, "shape": [2, 3], **extra}
    return bag(tensor)


# Every registered format by name: asking which are usable imports every format's packages (~3 s),
# which each test process would then pay while collecting, whichever tests it runs.
@pytest.mark.parametrize("name", list(all_formats()))
def test_every_available_format_round_trips_a_plain_model(name: str, tmp_path: Path) -> None:
    fmt, spec = get_format(name), load("plain")
    if (why := why_not_usable(fmt)) is not None:
        pytest.skip(f"{name} is not usable here: {why}")
    model = build(spec)
    path = tmp_path / f"m{fmt.suffix}"
    try:
        fmt.save(model, path, example_inputs(spec))
    except Unsupported as exc:  # a by-design refusal (MLflow's pt2 of a per-block input tree) ...
        here = Endpoint(torch.__version__, "cpu")
        refused = CellResult.failed(Cell(spec.id, name, here, here, {}), Outcome.UNSUPPORTED, exc, prefix="save: ")
        assert Expectations.load().judge_one(refused).explained  # ... that a shipped known issue names
        return
    loaded = fmt.load(path, fmt.load_variants()[0], CPU, lambda: build(spec, perturb=True), trusted=True)
    kept = {k: v for k, v in model.state_dict().items() if k not in (loaded.absent or {})}  # ONNX folds some
    assert kept and compare_state_dicts(kept, loaded.state_dict, strides=fmt.preserves_strides) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # the atomic write left no temp file


def test_registry_errors_name_the_culprit() -> None:
    with pytest.raises(UnknownFormat, match="unknown format 'nope'; known: torch_zip, "):
        get_format("nope")
    with pytest.raises(UnknownFormat, match="no format named"):
        parse_format_list(" , ")
    assert [f.name for f in parse_format_list("torch_zip, torch_legacy")] == ["torch_zip", "torch_legacy"]
    assert {"torch_zip", "torch_legacy", "torch_module", "safetensors_file", "safetensors_model"} <= set(all_formats())


def test_safetensors_refuses_ties_by_design(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    with pytest.raises(Unsupported, match="share memory") as refused:
        get_format("safetensors_file").save(build(load("tied")), tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    # The keys in a stable order (safetensors prints a set, whose order follows the hash seed).
    assert str(refused.value).endswith("— tensors sharing a storage: (lm.embed.weight, lm.head.weight)")
    base = {"name": "base", "role": "buffer", "dtype": "float32", "shape": [2, 3], "persistent": False}
    view = {"name": "tail", "role": "buffer", "view_of": "base", "view": "offset"}
    with pytest.raises(Unsupported, match="share memory") as refused:
        get_format("safetensors_model").save(build(bag(base, view)), tmp_path / "x.safetensors")
    assert str(refused.value).endswith("— no tensor covers the whole of its storage: (bag.tail)")


def test_safetensors_has_no_complex128(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    with pytest.raises(Unsupported, match=r"no code for dtype torch\.complex128"):
        get_format("safetensors_file").save(build(_bag("complex128")), tmp_path / "x.safetensors")


def test_whole_model_pickle_refuses_untrusted_files(tmp_path: Path) -> None:
    fmt, spec = get_format("torch_module"), load("plain")
    fmt.save(build(spec), tmp_path / "m.pt")
    with pytest.raises(Untrusted, match="pass --trust"):
        fmt.load(tmp_path / "m.pt", {"weights_only": False}, CPU, lambda: build(spec), trusted=False)


def test_legacy_format_cannot_mmap(tmp_path: Path) -> None:
    fmt = get_format("torch_legacy")
    if not any(v.get("mmap") for v in fmt.load_variants()):
        pytest.skip(f"torch {torch.__version__} has no torch.load(mmap=)")
    fmt.save(build(load("plain")), tmp_path / "m.pt")
    with pytest.raises(Unsupported, match="legacy format"):
        fmt.load(
            tmp_path / "m.pt", {"weights_only": True, "mmap": True}, CPU, lambda: build(load("plain")), trusted=True
        )


def test_failed_save_leaves_no_file(tmp_path: Path) -> None:
    class Broken(torch.nn.Module):
        def __reduce_ex__(self, protocol: object) -> object:
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        get_format("torch_module").save(Broken(), tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_weights_only_default_follows_the_running_torch(tmp_path: Path) -> None:
    from ckpt_compat.formats.torch_save import default_weights_only

    fmt, spec = get_format("torch_module"), load("plain")
    fmt.save(build(spec), tmp_path / "m.pt")
    options = {"weights_only": "default"}
    if default_weights_only():  # torch >= 2.6: the safe loader refuses the pickled module
        with pytest.raises(Unsupported) as refused:
            fmt.load(tmp_path / "m.pt", options, CPU, lambda: build(spec), trusted=True)
        # Every class the file needs, in one call: the first refusal alone would not load it.
        call = str(refused.value).split("add_safe_globals([", 1)[1].split("])", 1)[0].split(", ")
        assert call[0] == "ckpt_compat.specs.Bundle"
        needed = {f"{type(m).__module__}.{type(m).__qualname__}" for m in build(spec).modules()}
        assert needed <= set(call), needed - set(call)
    else:  # older torch unpickles anything by default, so a foreign file needs trust
        with pytest.raises(Untrusted):
            fmt.load(tmp_path / "m.pt", options, CPU, lambda: build(spec), trusted=False)


def test_torchscript_round_trips_block_by_block(tmp_path: Path) -> None:
    from ckpt_compat.roundtrip import check_spec

    results = check_spec(
        load("plain"), [get_format("torchscript_script"), get_format("torchscript_trace")], tmp_path, consumers=["cpu"]
    )
    ok = {r.cell.variant for r in results if r.outcome.value == "ok"}
    assert {
        "torchscript_script[loader=jit.load]",
        "torchscript_trace[loader=jit.load]",
        "torchscript_trace[loader=torch.load,weights_only=False]",
    } <= ok
    refused = [r for r in results if r.cell.options.get("weights_only") is True]
    from ckpt_compat.formats.torchscript import torch_load_refuses_torchscript

    if torch_load_refuses_torchscript():
        assert refused and all(r.outcome.value == "unsupported" and "torch.jit.load" in r.detail for r in refused)
    else:  # torch <= 2.5: torch.load ran the archive's code under weights_only=True (CVE-2025-32434)
        assert refused and all(r.outcome.value == "unsafe" for r in refused)
    assert get_format("torchscript_script").deprecated


def test_torchscript_keeps_non_persistent_buffers_and_says_so(tmp_path: Path) -> None:
    from ckpt_compat.roundtrip import check_spec

    spec = bag({"name": "hidden", "role": "buffer", "dtype": "float32", "shape": [3], "persistent": False})
    [cell] = check_spec(spec, [get_format("torchscript_script")], tmp_path, consumers=["cpu"])[:1]
    assert cell.outcome.value == "keys"
    assert ("persisted", ("state_dict", "bag.hidden")) in {(d.kind, d.path) for d in cell.differences}


def test_torch_export_round_trips_state_and_program(tmp_path: Path) -> None:
    from ckpt_compat.roundtrip import check_spec

    fmt = get_format("torch_export")
    if fmt.why_not_usable():
        pytest.skip(fmt.why_not_usable() or "")
    results = check_spec(load("tied"), [fmt], tmp_path, consumers=["cpu", "meta"])
    by_device = {r.cell.consumer.device: r for r in results}
    assert by_device["cpu"].outcome.value == "ok", by_device["cpu"].detail
    meta = by_device["meta"]
    assert meta.outcome.value == "unsupported" and meta.error is not None and "map_location" in meta.error.message
    assert fmt.heavy


def test_dcp_round_trips_both_directions_and_writes_a_directory(tmp_path: Path) -> None:
    from ckpt_compat.roundtrip import check_spec

    fmt = get_format("dcp")
    if fmt.why_not_usable():
        pytest.skip(fmt.why_not_usable() or "")
    # torch 2.0-2.2 have DCP save/load but no format_utils: no conversions there, in either direction.
    converts = get_format("dcp_from_torch_save").why_not_usable() is None
    formats = [fmt, get_format("dcp_from_torch_save")] if converts else [fmt]
    results = check_spec(load("tied"), formats, tmp_path, consumers=["cpu"])
    assert {r.cell.variant for r in results if r.outcome.value == "ok"} == {
        "dcp[loader=dcp.load]",
        *(["dcp[loader=dcp_to_torch_save]", "dcp_from_torch_save[loader=dcp.load]"] if converts else []),
    }
    assert fmt.caveat and "cross" not in fmt.name
    spec = load("plain")
    fmt.save(build(spec), tmp_path / "x.dcp")
    assert (tmp_path / "x.dcp" / ".metadata").is_file() and not [
        p for p in tmp_path.iterdir() if p.name.startswith(".")
    ]


def test_onnx_initializers_bitwise_and_runtime_outputs_within_tolerance(tmp_path: Path) -> None:
    from ckpt_compat.roundtrip import check_spec
    from tests.faults import Faulty, flip_bit_of

    fmt = get_format("onnx")
    if fmt.why_not_usable():
        pytest.skip(fmt.why_not_usable() or "")
    pytest.importorskip("onnxruntime")
    [cell] = check_spec(load("tied"), [fmt], tmp_path, consumers=["cpu"])
    assert cell.outcome.value == "ok", cell.detail
    faulty = Faulty("onnx", after_save=flip_bit_of("lm.head.bias", byte=3, bit=6))
    [bad] = check_spec(load("tied"), [faulty], tmp_path, consumers=["cpu"])
    assert bad.outcome.value == "mismatch"
    assert ("bytes", ("state_dict", "lm.head.bias")) in {(d.kind, d.path) for d in bad.differences}


def _onnx_round_trip(name: str, tmp_path: Path) -> CellResult:
    """The CPU cell of spec ``name`` through ONNX and ONNX Runtime (skipped where they are missing)."""
    from ckpt_compat.roundtrip import check_spec

    fmt = get_format("onnx")
    if fmt.why_not_usable():
        pytest.skip(fmt.why_not_usable() or "")
    pytest.importorskip("onnxruntime")
    [cell] = check_spec(load(name), [fmt], tmp_path, consumers=["cpu"])
    return cell


def test_onnx_runtime_output_as_accurate_as_eager_is_ok(tmp_path: Path) -> None:
    """A float16 ConvTranspose2d whose sums cancel: eager (torch 2.13) is 3 ulps from the float64
    result, ONNX Runtime (1.32, float32 inside) 1 ulp the other way, 3 of 50 elements beyond the
    elementwise tolerance. Judged against the float64 result, it is the same output."""
    cell = _onnx_round_trip("float16-convtranspose", tmp_path)
    assert cell.outcome.value == "ok" and "program" in cell.checks, cell.detail


def test_onnx_runtime_takes_and_gives_bfloat16(tmp_path: Path) -> None:
    """numpy has no bfloat16: a bfloat16 block's input and output cross to ONNX Runtime as bits."""
    cell = _onnx_round_trip("bfloat16-layernorm", tmp_path)
    assert cell.outcome.value == "ok" and "program" in cell.checks, cell.detail


def _refused_program(
    name: str, tmp_path: Path, ends: str, known: str = "onnxruntime-rejects-exported-model"
) -> tuple[CellResult, Difference, str]:
    """The ONNX round trip of tests/specs/``name``.json, which ONNX Runtime refuses: the cell (that
    the known issue ``known`` explains), its difference at ``program`` and that difference's
    message, which ends with what the regex ``ends`` matches."""
    import re

    cell = _onnx_round_trip(name, tmp_path)
    [raised] = [d for d in cell.differences if d.path == ("program",)]
    assert raised.error is not None and re.search(f"{ends}$", raised.error.message), raised.error
    assert known in Expectations.load().judge_one(cell).causes
    return cell, raised, raised.error.message


def _explained_with(cell: CellResult, raised: Difference, message: str) -> bool:
    """Whether the known issues explain ``cell`` with its refusal's message made ``message``."""
    from dataclasses import replace

    assert raised.error is not None
    refused = replace(raised, error=replace(raised.error, message=message))
    return Expectations.load().judge_one(replace(cell, differences=(refused,))).explained


def test_onnx_runtime_without_a_kernel_says_which_precision(tmp_path: Path) -> None:
    """ONNX Runtime's CPU provider has no float64 PRelu; its refusal names the node only, and the
    cell says the node's input type, so that a float32 node without a kernel is no known issue."""
    ends = r"for PRelu\(16\) node with name 'node_prelu' \(its floating-point inputs: tensor\(double\)\)"
    cell, raised, message = _refused_program("float64-prelu", tmp_path, ends)
    assert not _explained_with(cell, raised, message.replace("double", "float"))


def test_onnx_runtime_without_a_kernel_in_an_expanded_function_names_the_function(tmp_path: Path) -> None:
    """ONNX Runtime has no float64 Gelu: it expands the function into its body, then has no float64
    Erf either, and names that node '' (it is in no graph). The cell names the Gelu node whose body
    holds it, with its input type, and is explained; the same refusal in float32 is not."""
    ends = (
        r"for Erf\(\d+\) node with name '' \(expanded from Gelu '[^']*', whose floating-point inputs are: "
        r"tensor\(double\)\)"
    )
    cell, raised, message = _refused_program("float64-gelu", tmp_path, ends)
    assert not _explained_with(cell, raised, message.replace("double", "float"))


def test_onnx_runtime_refusing_a_type_the_op_schema_lacks_is_known_and_another_is_not(tmp_path: Path) -> None:
    """ONNX's Conv schema takes no bfloat16 at the opset the exporter writes: ONNX Runtime refuses
    the model as it loads it, and the cell says what the schema (onnx.defs) lists. The known issue
    explains that refusal only: the same refusal without the schema's word (a bfloat16 input where
    the schema lists bfloat16, an exporter declaring a wrong type) is not explained."""
    ends = (
        r"of operator \(Conv\) in node .*\(ONNX's Conv schema at opset \d+ takes no tensor\(bfloat16\) for that input\)"
    )
    cell, raised, message = _refused_program("bfloat16-conv", tmp_path, ends)
    assert not _explained_with(cell, raised, message[: message.rindex(" (ONNX's")])


def test_onnx_lstm_with_a_projection_is_known_by_its_state_sizes(tmp_path: Path) -> None:
    """The exporter gives an nn.LSTM(proj_size=1) node hidden_size 1 and ONNX Runtime refuses its
    2-wide cell state. The cell says the graph's hidden and cell state shapes, which differ only
    with a projection; the same refusal without them (an LSTM without a projection whose cell
    state is wrong: another bug) is not explained."""
    ends = (
        r"Input initial_c must have shape \{1,\d+,1\}\. Actual:\{1,\d+,2\} \(its initial_h has shape \[1, \d+, 1\] "
        r"and initial_c \[1, \d+, 2\]: hidden and cell states of different sizes, which only an LSTM with a "
        r"projection has\)"
    )
    cell, raised, message = _refused_program(
        "lstm-projection", tmp_path, ends, "onnxscript-lstm-projection-hidden-size"
    )
    assert not _explained_with(cell, raised, message[: message.rindex(" (its initial_h")])


def test_onnx_runtime_runs_the_graph_as_the_file_holds_it(tmp_path: Path) -> None:
    """ONNX Runtime 1.32's constant folding dies with SIGSEGV on the unoptimized graph of
    EmbeddingBag(mode="mean"): the program check runs the graph unoptimized. Checked through the
    CLI: its worker would turn a crash into a `crash` cell, not kill this test process."""
    import json
    import subprocess
    import sys

    fmt = get_format("onnx")
    if fmt.why_not_usable():
        pytest.skip(fmt.why_not_usable() or "")
    pytest.importorskip("onnxruntime")
    spec = Path(__file__).parent / "specs" / "embeddingbag-mean.json"
    command = [sys.executable, "-m", "ckpt_compat.cli", "check", "--spec", str(spec), "--formats", "onnx"]
    done = subprocess.run([*command, "--out", str(tmp_path), "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    cells = json.loads((tmp_path / "report.json").read_text())["cells"]
    assert [(c["outcome"], "program" in c["checks"]) for c in cells if c["outcome"] != "unsupported"] == [("ok", True)]


def test_onnx_builds_the_torchlib_registry_once_and_exports_the_same_bytes(tmp_path: Path) -> None:
    import hashlib
    import unittest.mock

    from ckpt_compat.formats import onnx

    fmt = get_format("onnx")
    if fmt.why_unable_to_save():
        pytest.skip(fmt.why_unable_to_save() or "")
    # Exports on every torch with the dynamo exporter (torch 2.6 with onnxscript >= 0.3 cannot convert BatchNorm).
    spec = load("tied")

    def digest(name: str) -> str:
        fmt.save(build(spec), tmp_path / name, example_inputs(spec))
        return hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()

    onnx._REGISTRIES.clear()
    first, second = digest("a.onnx"), digest("b.onnx")
    built = len(onnx._REGISTRIES)
    with unittest.mock.patch.object(onnx, "registry_built_once", contextlib.nullcontext):
        plain = digest("c.onnx")  # torch's own registry build
    assert first == second == plain
    # Where torch has the registry (2.5+), one was built for both exports.
    assert built == (0 if onnx._torch_registry() is None else 1)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_onnx_names_what_the_exporter_could_not_convert(tmp_path: Path) -> None:
    """A known issue can name the op and the cause it explains only where the message does: the
    exporter's ConversionError names its graph node in prose, and its own first line nothing."""
    from torch import nn

    from ckpt_compat.loading import Call

    fmt = get_format("onnx")
    if fmt.why_unable_to_save():
        pytest.skip(fmt.why_unable_to_save() or "")

    class Complex32Buffer(nn.Module):  # no ONNX type for complex32 in any exporter's dtype table
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("w", torch.zeros(3, dtype=torch.complex32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.w.view(torch.float16).float().sum()

    expected = r"^torch\.onnx\.export cannot convert the program input b_w — KeyError: torch\.complex32$"
    with pytest.raises(Unsupported, match=expected):
        fmt.save(Complex32Buffer(), tmp_path / "c.onnx", Call((torch.ones(3),), {}))
    assert list(tmp_path.iterdir()) == []


def test_a_commands_workers_say_which_formats_are_usable_as_this_process_finds_them(workers: Pool) -> None:
    """Commands with workers take availability from them (the parent then imports no mlflow, onnx
    or DCP); the workers run this interpreter with these packages, so their answer is ours."""
    from ckpt_compat.formats import availability, availability_from, why_not_usable
    from ckpt_compat.workers import AVAILABILITY

    here = {name: list(availability(f)) for name, f in all_formats().items()}
    assert workers.request(AVAILABILITY) == here
    onnx = get_format("onnx")
    with availability_from({**here, "onnx": ["a worker could not import onnx", None]}):
        assert availability(onnx) == ("a worker could not import onnx", None)
        assert "onnx" not in {f.name for f in available_formats()}
        with pytest.raises(Unsupported, match="'onnx' is unavailable here: a worker could not import onnx"):
            parse_format_list("torch_zip,onnx")
    assert why_not_usable(onnx) == onnx.why_not_usable()  # found here again after the block
    with availability_from({"error": {"type": "ImportError"}}):  # a failed task teaches nothing
        assert availability(onnx) == (onnx.why_unavailable(), onnx.why_unable_to_save())


def test_onnx_is_read_only_where_the_exporter_takes_no_keyword_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.4's torch.onnx.export has dynamo= but not kwargs= (measured: `ckpt-compat run` there
    failed every ONNX save); the adapter says so instead of failing each save."""
    from ckpt_compat.formats import onnx

    pytest.importorskip("onnxscript")

    def export_of_2_4(model: object, args: object, f: object = None, dynamo: bool = False) -> None: ...

    monkeypatch.setattr(torch.onnx, "export", export_of_2_4)
    assert "takes no kwargs=" in (onnx._why_unable_to_save() or "")
    assert onnx._why_unavailable() is None  # files are still read


@pytest.fixture
def broken_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> contextlib.AbstractContextManager[None]:
    """An installed distribution (a real .dist-info on sys.path) whose entry points do not load:
    a format naming a module that is not there, one naming what is no Format, a known-issue list
    whose module is not there."""
    from ckpt_compat.formats import all_formats

    info = tmp_path / "broken_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[ckpt_compat.formats]\nbroken_fmt = no_such_module_for_ckpt_compat:Fmt\nnot_a_fmt = os.path:join\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    @contextlib.contextmanager
    def installed() -> Iterator[None]:
        all_formats.cache_clear()
        try:
            yield
        finally:
            all_formats.cache_clear()

    return installed()


def test_a_plugin_that_does_not_load_is_unavailable_saying_why(
    broken_plugins: contextlib.AbstractContextManager[None], capsys: pytest.CaptureFixture[str]
) -> None:
    from ckpt_compat.cli import main
    from ckpt_compat.formats import Unloadable, all_formats, available_formats

    with broken_plugins:
        formats = all_formats()
        broken, wrong = formats["broken_fmt"], formats["not_a_fmt"]
        assert isinstance(broken, Unloadable) and isinstance(wrong, Unloadable)
        why = broken.why_unavailable() or ""
        assert "entry point 'broken_fmt' = 'no_such_module_for_ckpt_compat:Fmt' of broken-plugin does not load" in why
        assert "ModuleNotFoundError" in why and "fix or uninstall the package" in why
        assert "not a ckpt_compat Format subclass" in (wrong.why_unavailable() or "")
        usable = {f.name for f in available_formats()}
        assert "torch_zip" in usable and not usable & {"broken_fmt", "not_a_fmt"}
        with pytest.raises(Unsupported, match="does not load"):
            broken.save(torch.nn.Linear(1, 1), Path("never-written.pt"))
        assert main(["formats"]) == 0
    out = capsys.readouterr().out
    assert "broken_fmt" in out and "unavailable: entry point 'broken_fmt'" in out


def test_a_known_issue_plugin_that_does_not_load_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckpt_compat.expectations import ExpectationsError, shipped

    info = tmp_path / "broken_issues-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-issues\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ckpt_compat.expectations]\nbroken = no_such_module_for_ckpt_compat:f\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ExpectationsError, match=r"entry point 'broken' = .* of broken-issues does not load"):
        shipped()
