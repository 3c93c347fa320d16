"""``check FOLDER`` on a Hugging Face ``save_pretrained`` folder, from its bytes alone.

What a download cut short or a copy half done leaves: a shard the index names that is missing or
not a regular file, a shard that is itself broken or unsafe (each is inspected as ``check FILE``
would), and a safetensors shard whose header lacks tensors the index puts there or holds ones it
does not list (``from_pretrained`` then fails, or leaves them at their initial values). A torch.save
shard's keys are in its pickle, which nothing here unpickles: its file is inspected, its keys not.
"""

from __future__ import annotations

from pathlib import Path

from ckpt_compat.identify import NotAFile
from ckpt_compat.inspection import Inspection, inspect_checkpoint
from ckpt_compat.stored import StoredError, read_index, shard_path


def inspect_folder(path: Path, name: str, max_size: int) -> Inspection:
    """Inspect the Hugging Face folder at ``path`` by its checkpoint file ``name``
    (`stored.hf_checkpoint`): that one file, or the index and every shard the index names."""
    if not name.endswith(".index.json"):
        inner = inspect_checkpoint(path / name, max_size=max_size)
        result = Inspection(path, f"a Hugging Face folder: {name}, {inner.description}", "hf_folder")
        _merge(result, name, inner)
        return result
    index = path / name
    result = Inspection(path, f"a Hugging Face sharded checkpoint folder ({name})", "hf_folder")
    try:
        weight_map = read_index(index)
    except StoredError as exc:
        result.problems.append(str(exc))
        return result
    shards = sorted(set(weight_map.values()))
    result.description = f"a Hugging Face sharded checkpoint folder: {len(shards)} shard(s) indexed by {name}"
    if not shards:
        result.problems.append(f"{name} lists no tensor: from_pretrained would load no weights")
    for shard in shards:
        found = _shard(index, shard, max_size)
        if isinstance(found, str):
            result.problems.append(f"shard {shard}: {found}")
            continue
        _merge(result, shard, found)
        if found.tensor_names is not None:
            listed = {k for k, v in weight_map.items() if v == shard}
            result.problems += _disagreements(shard, listed, set(found.tensor_names))
    return result


def _shard(index: Path, shard: str, max_size: int) -> Inspection | str:
    """The shard's inspection, or why it has none."""
    try:
        located = shard_path(index, shard)
    except StoredError as exc:
        return str(exc).removeprefix(f"{index}: shard {shard!r} ")
    if located.is_dir():
        return "is a folder, not a shard file"
    try:
        return inspect_checkpoint(located, max_size=max_size)
    except FileNotFoundError:
        return "named by the index, missing from the folder"
    except NotAFile as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"


def _merge(result: Inspection, name: str, inner: Inspection) -> None:
    """A file's findings as the folder's, each saying which file."""
    if inner.kind == "unknown":
        result.problems.append(f"{name}: {inner.description}")
    result.problems += [f"{name}: {p}" for p in inner.problems]
    result.refused += [g for g in inner.refused if g not in result.refused]
    result.unreadable += [op for op in inner.unreadable if op not in result.unreadable]
    result.protocol = max(result.protocol, inner.protocol)
    if inner.executes:
        result.executes = "; ".join(filter(None, [result.executes, f"{name}: {inner.executes}"]))


def _disagreements(shard: str, listed: set[str], held: set[str]) -> list[str]:
    out = []
    for keys, what in ((listed - held, "lacks"), (held - listed, "holds")):
        if keys:
            shown = ", ".join(sorted(keys)[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            place = "the index puts there" if what == "lacks" else "the index does not list"
            out.append(f"shard {shard} {what} {len(keys)} tensor(s) {place}: {shown}")
    return out
