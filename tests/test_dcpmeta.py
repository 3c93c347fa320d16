"""A DCP .metadata read as inert records: every committed one reads, a hostile one runs nothing, and
a data file that does not hold what the metadata says is broken to `check FILE`."""

from __future__ import annotations

import pickle
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ckpt_compat import payloads
from ckpt_compat.dcpmeta import Record, read_inert, storage_problems
from ckpt_compat.formats.dcp import metadata_globals
from ckpt_compat.inspection import inspect_checkpoint

CORPORA = Path(__file__).resolve().parent.parent / "ckpt_compat" / "fixtures" / "corpora"
TIED = CORPORA / "torch-2.13" / "tied" / "dcp.dcp"


def test_every_committed_metadata_reads_as_records_and_its_files_hold_it() -> None:
    folders = sorted(CORPORA.glob("*/*/*.dcp"))
    assert {f.parts[-3] for f in folders} >= {"torch-2.0", "torch-2.6", "torch-2.15"}  # old and new layouts
    for folder in folders:
        metadata = read_inert(folder / ".metadata", metadata_globals())
        assert isinstance(metadata, Record) and metadata.qualname.endswith(".Metadata")
        assert storage_problems(folder, metadata_globals()) == [], folder
        assert inspect_checkpoint(folder).verdict in ("ok", "unsafe"), folder


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "dcp.dcp"
    shutil.copytree(TIED, folder)
    return folder


def _cut(folder: Path) -> None:
    data = next(folder.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[:100])


def _storage_edit(field: str, value: Any) -> Callable[[Path], None]:
    """The metadata with one item's storage info changed: pickled by this test from the committed
    (trusted) fixture, as DCP would have written it."""

    def edit(folder: Path) -> None:
        metadata = pickle.loads((folder / ".metadata").read_bytes())
        info = next(iter(metadata.storage_data.values()))
        object.__setattr__(info, field, value)
        (folder / ".metadata").write_bytes(pickle.dumps(metadata))

    return edit


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (_cut, "run past the end of __0_0.distcp (100 bytes)"),
        (lambda folder: next(folder.glob("*.distcp")).unlink(), "its data file __0_0.distcp is missing"),
        (_storage_edit("relative_path", "../outside.distcp"), "is not a file inside the checkpoint folder"),
        (_storage_edit("offset", 10**9), "at offset 1000000000 run past the end of __0_0.distcp"),
        (_storage_edit("length", -1), "is not a file name, offset and length"),
    ],
)
def test_data_that_does_not_hold_the_metadata_is_broken(
    tmp_path: Path, damage: Callable[[Path], None], said: str
) -> None:
    folder = _copy(tmp_path)
    assert inspect_checkpoint(folder).verdict == "ok"
    damage(folder)
    inspection = inspect_checkpoint(folder)
    assert inspection.verdict == "broken", inspection.lines()
    assert any(p.startswith("stored item ") and said in p for p in inspection.problems), inspection.problems


def test_a_link_where_a_data_file_belongs_is_broken(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    data = next(folder.glob("*.distcp"))
    shutil.move(data, tmp_path / "elsewhere")
    data.symlink_to(tmp_path / "elsewhere")
    assert any("is not a regular file" in p for p in inspect_checkpoint(folder).problems)


def test_a_hostile_metadata_runs_nothing_and_names_what_it_would_call(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    folder = payloads.write("dcp_metadata", tmp_path / "hostile.dcp", canary)
    assert storage_problems(folder, metadata_globals()) == []  # its global is refused, unread
    with pytest.raises(ValueError, match="which a metadata pickle does not"):
        read_inert(folder / ".metadata", metadata_globals())
    assert inspect_checkpoint(folder).verdict == "unsafe"
    assert not canary.exists()
    pickle.loads((folder / ".metadata").read_bytes())
    assert canary.exists()  # the payload is live: it is the reading that ran nothing


def test_metadata_that_is_not_dcp_metadata_is_broken(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / ".metadata").write_bytes(pickle.dumps({"storage_data": 5}))
    assert any("does not read as DCP metadata" in p for p in inspect_checkpoint(folder).problems)


@pytest.mark.parametrize("shift", [0, 1, 8])
def test_an_item_that_does_not_open_an_archive_is_broken_as_dcp_load_finds(tmp_path: Path, shift: int) -> None:
    """Differential: one item's offset moved inside its file (its length kept inside too)."""
    format_utils = pytest.importorskip("torch.distributed.checkpoint.format_utils")
    from torch.distributed.checkpoint.api import CheckpointException

    folder = _copy(tmp_path)

    def move(info: Any) -> None:
        object.__setattr__(info, "offset", info.offset + shift)
        object.__setattr__(info, "length", info.length - shift)

    metadata = pickle.loads((folder / ".metadata").read_bytes())
    move(next(iter(metadata.storage_data.values())))
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DCP warns that no process group is initialised
            format_utils.dcp_to_torch_save(str(folder), str(tmp_path / "out.pt"))
        loads = True
    except (Exception, CheckpointException):  # DCP's own exception is a BaseException
        loads = False
    assert (inspect_checkpoint(folder).verdict != "broken") is loads, inspect_checkpoint(folder).lines()
