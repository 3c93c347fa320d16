"""safetensors' header rules, as the installed safetensors reads them."""

from __future__ import annotations

import pytest

from ckpt_compat.safetensors_header import _SAFETENSORS_BITS, _safetensors_reads


def test_every_dtype_named_is_asked_of_the_installed_reader() -> None:
    safetensors = pytest.importorskip("safetensors")
    from packaging.version import Version

    if Version(safetensors.__version__) >= Version("0.7"):  # it knows every name in the table
        assert all(_safetensors_reads(dtype) for dtype in _SAFETENSORS_BITS)
    assert _safetensors_reads("F32") and _safetensors_reads("BF16")  # what every release reads
