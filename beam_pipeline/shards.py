"""Which shard files of an output directory belong to the run that wrote it.

A stage writes `DIR/part-SSSSS-of-NNNNN.jsonl`. A rerun with another shard count would leave
the earlier run's files beside the new ones, and a glob would read both. Two rules keep every
reader on one run's output:

- a run clears the directories it is about to write (`clear_outputs`, before the job starts);
- readers take one complete shard set (`current_shards`): all N files of one `-of-N`, the most
  recently written where several are complete; incomplete sets and strays are ignored.

No Beam here: the launcher, `--from_stage`, the report and the hub upload all call it.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

SHARD_RE = re.compile(r"(?P<prefix>[^/]+)-(?P<index>\d{5,})-of-(?P<total>\d{5,})(?P<suffix>\.\w+)$")


def _mtime(info: dict[str, Any]) -> float:
    """Modification time from an fsspec info dict (local, GCS and S3 name it differently)."""
    for key in ("mtime", "LastModified", "updated", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return 0.0


def pick_shard_set(files: Iterable[tuple[str, float]], prefix: str = "part") -> list[str]:
    """The newest complete shard set among (path, mtime) pairs, in shard order."""
    sets: dict[tuple[int, str], dict[int, tuple[str, float]]] = defaultdict(dict)
    for path, mtime in files:
        match = SHARD_RE.search(path)
        if match is None or match["prefix"] != prefix:
            continue
        total = int(match["total"])
        sets[(total, match["suffix"])][int(match["index"])] = (path, mtime)
    complete = [shards for (total, _), shards in sets.items() if set(shards) == set(range(total))]
    if not complete:
        return []
    newest = max(complete, key=lambda s: min(mtime for _, mtime in s.values()))
    return [newest[i][0] for i in sorted(newest)]


def current_shards(directory: str, prefix: str = "part", suffix: str = ".jsonl") -> list[str]:
    """Paths of the current shard set under `directory` (with the protocol unless local)."""
    fs, _, (root,) = fsspec.get_fs_token_paths(directory.rstrip("/"))
    if not fs.isdir(root):
        return []
    listing = fs.ls(root, detail=True)
    files = [
        (entry["name"], _mtime(entry))
        for entry in listing
        if entry.get("type") == "file" and entry["name"].endswith(suffix)
    ]
    chosen = pick_shard_set(files, prefix)
    ignored = sum(1 for name, _ in files if SHARD_RE.search(name)) - len(chosen)
    if ignored:
        log.warning(
            "%s: %d shard file(s) from another run ignored; reading %d",
            directory,
            ignored,
            len(chosen),
        )
    if isinstance(fs, LocalFileSystem):
        return chosen
    return [fs.unstrip_protocol(path) for path in chosen]


def stage_directories(output_dir: str, stages: Iterable[str]) -> list[str]:
    """The directories a run writes for `stages`: main, rejected and errors outputs."""
    out = output_dir.rstrip("/")
    dirs: list[str] = []
    for stage in stages:
        dirs += [f"{out}/{stage}", f"{out}/rejected/{stage}", f"{out}/errors/{stage}"]
        if stage == "seeds":
            dirs.append(f"{out}/errors/read")
    return dirs


def clear_outputs(output_dir: str, stages: Iterable[str]) -> list[str]:
    """Removes what an earlier run wrote for `stages`; returns the directories removed."""
    removed = []
    for directory in stage_directories(output_dir, stages):
        fs, _, (root,) = fsspec.get_fs_token_paths(directory)
        if fs.exists(root):
            fs.rm(root, recursive=True)
            removed.append(directory)
    if removed:
        log.info("cleared the earlier run's outputs: %s", ", ".join(removed))
    return removed
