"""pytest plugin (entry point ``pytest11``): the ``cuda`` marker, skipped cleanly without a GPU.

Downstream projects get it by installing ckpt-compat; the strategies in
`ckpt_compat.strategies` and `ckpt_compat.roundtrip.check_spec` are the checks to call.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped cleanly when none is present")


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
