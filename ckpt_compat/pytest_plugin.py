"""pytest plugin (entry point ``pytest11``): the ``checkpoint_roundtrip`` fixture and the ``cuda``
marker (skipped cleanly without a GPU).

A downstream test checks its own model in one call::

    def test_my_model_checkpoints(checkpoint_roundtrip):
        checkpoint_roundtrip(build_my_model, example_inputs)

It saves the model in every available format, loads each file with every load option onto every
device, and fails listing every incompatibility with its culprit (a tensor outside the state dict,
a tie that came apart, a key a format renames); by-design refusals of a format are limitations,
not failures. The torch version, device and counts go to the JUnit XML as properties.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ckpt_compat.modelcheck import ModelCheck

MARKERS = (
    "cuda: needs a CUDA device; skipped cleanly when none is present",
    "checkpoint_formats(*names): the formats checkpoint_roundtrip uses in this test (default: every available one)",
)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    for item in marked:
        item.add_marker(skip)


RoundTrip = Callable[..., "ModelCheck"]
_RECORDED = pytest.StashKey[bool]()


@pytest.fixture
def checkpoint_roundtrip(request: pytest.FixtureRequest, tmp_path: Path) -> RoundTrip:
    """``checkpoint_roundtrip(model, inputs=None, *, formats=None, expectations=())``: ``model`` is a
    zero-argument factory (best: a fresh build then really differs) or an ``nn.Module``;
    ``inputs`` a tensor, a tuple of arguments, a dict of keyword arguments or a function returning
    one. Fails the test on an incompatibility; returns the `modelcheck.ModelCheck` otherwise."""
    marker = request.node.get_closest_marker("checkpoint_formats")
    marked = tuple(marker.args) if marker else None

    def check(
        model: Any,
        inputs: Any = None,
        *,
        formats: Sequence[str] | None = None,
        expectations: Iterable[str | Path] = (),
    ) -> ModelCheck:
        import torch

        from ckpt_compat import __version__
        from ckpt_compat.expectations import Expectations, shipped
        from ckpt_compat.formats import UnknownFormat, Unsupported, available_formats, parse_format_list
        from ckpt_compat.modelcheck import Verdict, check_model
        from ckpt_compat.usermodel import UserModel, UserModelError

        names = formats or marked
        try:
            chosen = available_formats() if names is None else parse_format_list(",".join(names))
        except (UnknownFormat, Unsupported) as exc:
            raise pytest.UsageError(f"checkpoint_roundtrip(formats={list(names or [])!r}): {exc}") from None
        subject = UserModel(model, inputs)
        workdir = tmp_path / f"checkpoint-roundtrip-{len(list(tmp_path.iterdir()))}"
        workdir.mkdir()
        known = Expectations.load([*shipped(), *map(Path, expectations)])
        # torch's tracers log every step at DEBUG on their own loggers; a failing test's captured
        # log would bury the culprit under them.
        logging.disable(logging.INFO)
        try:
            checked = check_model(subject, chosen, known, workdir)
        except UserModelError as exc:  # the test's model or inputs: its failure, in its words
            pytest.fail(f"checkpoint_roundtrip: {exc}", pytrace=False)
        finally:
            logging.disable(logging.NOTSET)
        devices = ",".join(sorted({j.result.cell.consumer.device for j in checked.judgements}))
        # Suite properties reach JUnit XML in every junit_family (xunit2, the default, has no
        # per-test properties); the per-test counts show with junit_family=xunit1 or legacy.
        if not request.config.stash.get(_RECORDED, False):
            request.config.stash[_RECORDED] = True
            suite = request.getfixturevalue("record_testsuite_property")
            suite("torch", torch.__version__)
            suite("ckpt_compat", __version__)
            suite("devices", devices)
        for verdict, count in checked.counts().items():
            request.node.user_properties.append((f"checkpoint_{verdict.replace(' ', '_')}", count))
        if not checked.passed:
            pytest.fail(
                f"checkpoint round trip of {subject.id} on torch {torch.__version__}: "
                f"{len(checked.by_verdict(Verdict.INCOMPATIBLE))} incompatible cell(s)\n{checked.failure_message()}",
                pytrace=False,
            )
        return checked

    return check
