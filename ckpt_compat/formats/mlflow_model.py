"""MLflow's PyTorch flavor (``mlflow.pytorch.save_model`` / ``load_model``), a local model folder.

A third-party format: registered through the ``ckpt_compat.formats`` entry point (this package's
own pyproject names it, as a plugin package would), available with ``pip install
"ckpt-compat[mlflow]"``, and its known issues ship through the ``ckpt_compat.expectations`` entry
point. Two serializations, as MLflow offers them:

- ``mlflow_pickle``: ``serialization_format="pickle"``, the whole module pickled (cloudpickle).
  MLflow refuses to unpickle it unless ``MLFLOW_ALLOW_MODEL_CODE_EXECUTION=true``: both loads are
  checked, and the one that runs code only for a trusted file.
- ``mlflow_pt2``: ``serialization_format="pt2"`` (MLflow 3's default), a torch.export program
  traced on the example input; MLflow needs it as positional tensors and a TensorSpec signature.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ckpt_compat import versions
from ckpt_compat.devices import MapLocation
from ckpt_compat.formats.base import Format, Loaded, ModelFactory, Unsupported, Untrusted, first_line

ALLOW = "MLFLOW_ALLOW_MODEL_CODE_EXECUTION"


def _why_unavailable() -> str | None:
    try:
        import mlflow
        import mlflow.pytorch
    except ImportError:
        return 'MLflow is not installed: pip install "ckpt-compat[mlflow]"'
    # serialization_format ("pickle" / "pt2") replaced export_model in MLflow 3 (mlflow#20795).
    if "serialization_format" not in inspect.signature(mlflow.pytorch.save_model).parameters:
        return f"MLflow {mlflow.__version__} has no save_model(serialization_format=): upgrade MLflow"
    return None


@contextlib.contextmanager
def _allowed(allow: bool) -> Iterator[None]:
    """MLflow's own switch for loads that unpickle, set for one load and restored."""
    old = os.environ.get(ALLOW)
    os.environ[ALLOW] = "true" if allow else "false"
    try:
        yield
    finally:
        if old is None:
            del os.environ[ALLOW]
        else:
            os.environ[ALLOW] = old


class MLflowPickle(Format):
    name = "mlflow_pickle"
    bench_note = "a folder around a pickled module (torch_module) or a .pt2 program (torch_export), measured as those"
    description = 'mlflow.pytorch.save_model(serialization_format="pickle") / mlflow.pytorch.load_model'
    suffix = ".mlflow"
    holds = "module"
    map_location_kinds = ("str",)
    serialization: ClassVar[str] = "pickle"
    _maps: ClassVar[bool] = True  # load_model passes map_location on to torch.load

    def why_unavailable(self) -> str | None:
        return _why_unavailable()

    def load_variants(self) -> list[dict[str, Any]]:
        # MLflow refuses pickle by default; the load users get after opting in runs the pickle.
        return [{"allow_code_execution": True}, {"allow_code_execution": False}]

    def _save(self, model: nn.Module, path: Path, inputs: Any) -> None:
        import mlflow.pytorch

        try:
            # pip_requirements given: MLflow would otherwise infer them by importing in a subprocess.
            # Its logger warns about pickle on every save: the format's description says so once.
            logging.getLogger("mlflow").setLevel(logging.ERROR)
            mlflow.pytorch.save_model(
                model, str(path), serialization_format=self.serialization, pip_requirements=[], **self._extra(inputs)
            )
        except Unsupported:
            raise
        except Exception as exc:
            if "parametrized modules is only supported through state_dict" in str(exc):  # torch.save(model)'s
                raise Unsupported(
                    "torch refuses to pickle a module with parametrizations by design; save its state_dict"
                ) from exc
            raise Unsupported(f"mlflow.pytorch.save_model refuses this model — {first_line(exc)}") from exc

    def _extra(self, inputs: Any) -> dict[str, Any]:
        return {}

    def load(
        self,
        path: Path,
        options: Mapping[str, Any],
        map_location: MapLocation,
        fresh_model: ModelFactory,
        *,
        trusted: bool,
    ) -> Loaded:
        import mlflow.pytorch

        if map_location.target != map_location.source and not self._maps:
            raise Unsupported("mlflow.pytorch.load_model of a pt2 program has no map_location: it loads where saved")
        allow = bool(options.get("allow_code_execution", False))
        if allow and not trusted:
            raise Untrusted(
                f"{path}: refusing {ALLOW}=true on a model folder this run did not write: MLflow then unpickles "
                "it; pass --trust if you trust where it came from"
            )
        if not trusted:
            self._refuse_pickles(path)
        try:
            with _allowed(allow):
                # load_model hands keyword arguments to torch.load (pickle) or torch.export.load (pt2).
                kwargs = {"map_location": map_location.resolve()} if self._maps else {}
                module = mlflow.pytorch.load_model(str(path), **kwargs)
        except Exception as exc:
            if "pickle is disallowed" in str(exc) and "cannot safely verify" in str(exc):
                # MLflow proves a pt2 archive pickle-free before torch.export.load, with torch >= 2.10
                # only (mlflow#25849); on older torch it refuses unless code execution is allowed.
                raise Unsupported(
                    f"MLflow refuses a pt2 model on torch {torch.__version__} unless {ALLOW}=true: it cannot "
                    "show that the archive is free of pickles before torch 2.10"
                ) from exc
            if "pickle is disallowed" in str(exc):
                raise Unsupported(f"MLflow refuses to unpickle a model unless {ALLOW}=true, by design") from exc
            raise
        return Loaded(module.state_dict(), module)

    def _refuse_pickles(self, path: Path) -> None:
        """Without trust, a pt2 archive loads only when no pickle in it names what weights_only refuses."""


class MLflowPT2(MLflowPickle):
    name = "mlflow_pt2"
    description = 'mlflow.pytorch.save_model(serialization_format="pt2") / mlflow.pytorch.load_model'
    heavy = True  # an export per model
    serialization = "pt2"
    _maps = False

    def why_unavailable(self) -> str | None:
        reason = _why_unavailable()
        if reason is None and versions.key(torch.__version__) < (2, 4):  # MLflow's own floor for pt2
            reason = f"torch {torch.__version__}: MLflow's pt2 serialization needs torch >= 2.4"
        return reason

    def load_variants(self) -> list[dict[str, Any]]:
        return [{}]

    def _extra(self, inputs: Any) -> dict[str, Any]:
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        from ckpt_compat.loading import Call

        if not isinstance(inputs, Call) or inputs.kwargs or not inputs.args:
            raise Unsupported(
                "MLflow's pt2 traces forward(*tensors): it takes positional tensor inputs only "
                "(no keyword arguments, no per-block input tree)"
            )
        if not all(isinstance(t, torch.Tensor) for t in inputs.args):
            raise Unsupported("MLflow's pt2 takes tensors only as the model's positional inputs")
        try:
            specs: list[Any] = [
                TensorSpec(np.dtype(str(t.dtype).removeprefix("torch.")), tuple(t.shape), f"input_{i}")
                for i, t in enumerate(inputs.args)
            ]
        except TypeError as exc:
            raise Unsupported(f"MLflow's TensorSpec signature has no numpy dtype for this input — {exc}") from exc
        return {"input_example": tuple(inputs.args), "signature": ModelSignature(inputs=Schema(specs))}

    def _refuse_pickles(self, path: Path) -> None:
        from ckpt_compat.trust import pickled_refusals

        archive = path / "data" / "model.pt2"
        refused = pickled_refusals(archive) if archive.is_file() else []
        if refused:
            raise Untrusted(
                f"{path}: refusing to load a pt2 archive this run did not write whose pickles name what a "
                f"weights_only load refuses ({'; '.join(refused)}); pass --trust if you trust where it came from"
            )
