"""torch.export: ``torch.export.export`` -> ``torch.export.save`` (.pt2) -> ``torch.export.load``.

Checked: the program's state dict, its constants (non-persistent buffers) and the outputs of
``ep.module()`` on the example inputs, bit for bit. A model the exporter cannot trace is
`unsupported` with the exporter's reason.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckpt_compat.devices import MapLocation
from ckpt_compat.formats.base import Format, Loaded, ModelFactory, Unsupported, Untrusted, first_line


class TorchExport(Format):
    name = "torch_export"
    description = "torch.export.export(model) -> torch.export.save (.pt2) / torch.export.load"
    suffix = ".pt2"
    heavy = True
    map_location_kinds = ("str",)  # torch.export.load has no map_location: files load where saved

    def why_unavailable(self) -> str | None:
        export = getattr(torch, "export", None)
        if export is None or not all(hasattr(export, f) for f in ("export", "save", "load")):
            return f"torch {torch.__version__} has no torch.export.export/save/load (added in 2.1)"
        return None

    def _save(self, model: nn.Module, path: Path, inputs: Any) -> None:
        from ckpt_compat.loading import Call, leaf_blocks

        call = inputs if isinstance(inputs, Call) else Call((inputs,))  # a spec's tree is one argument
        if not isinstance(inputs, Call) and not leaf_blocks(inputs or {}):
            raise Unsupported(
                "torch.export needs a forward that computes something — no block of this model takes input"
            )
        try:
            # Under no_grad, as inference exports run: fused inference paths (TransformerEncoderLayer's)
            # are then what the program records, as eager inference would run them.
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                logging.disable(logging.CRITICAL)  # the tracer logs its failures too; they are raised here
                program = torch.export.export(model, call.args, dict(call.kwargs))
        except Exception as exc:
            raise Unsupported(f"torch.export cannot export this model — {first_line(exc)}") from exc
        finally:
            logging.disable(logging.NOTSET)
        torch.export.save(program, str(path))

    def load(
        self,
        path: Path,
        options: Mapping[str, Any],
        map_location: MapLocation,
        fresh_model: ModelFactory,
        *,
        trusted: bool,
    ) -> Loaded:
        if map_location.target != map_location.source:
            raise Unsupported("torch.export.load has no map_location: a program loads onto the device it was saved on")
        if not trusted:
            from ckpt_compat.trust import pickled_refusals

            refused = pickled_refusals(path)
            if refused:
                raise Untrusted(
                    f"{path}: refusing torch.export.load on a file this run did not write: it falls back to "
                    f"weights_only=False on the archive's pickles, which name what a weights_only load refuses "
                    f"({'; '.join(refused)}); pass --trust if you trust where it came from"
                )
        program = torch.export.load(str(path))
        # ExportedProgram.constants (non-persistent buffers and lifted constants) arrived in torch 2.3.
        constants = getattr(program, "constants", None)
        # A tensor the traced code reached outside the module tree (in a list attribute, a closure)
        # becomes a constant named lifted_tensor_N, after no attribute: the program's outputs check it.
        hidden = None if constants is None else {k: v for k, v in constants.items() if not _LIFTED.fullmatch(k)}
        return Loaded(dict(program.state_dict), hidden=hidden, call=program.module())


_LIFTED = re.compile(r"lifted_tensor_\d+")
