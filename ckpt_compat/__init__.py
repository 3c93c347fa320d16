"""ckpt-compat: prove that PyTorch checkpoints survive formats, devices, load options and torch
versions, bit for bit."""

from __future__ import annotations

__version__ = "0.1.0"
