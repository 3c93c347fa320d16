"""The MLflow adapter's known issues: its ``ckpt_compat.expectations`` entry point.

A module apart from the adapter (`formats.mlflow_model`): every command loads every plugin's known
issues, and the commands that only read results (``gate``, ``report``) then import no torch.
"""

from __future__ import annotations

from pathlib import Path


def known_issues() -> Path:
    """The TOML file of the MLflow adapter's known issues, beside the adapter."""
    return Path(__file__).with_name("formats") / "mlflow_expectations.toml"
