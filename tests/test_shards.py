"""An output directory is read as one run's shard set, never mixed with an earlier run's."""

from __future__ import annotations

import json
import os
import pathlib

from beam_pipeline.report_html import load_examples
from beam_pipeline.shards import clear_outputs, current_shards, pick_shard_set


def _write_set(directory: pathlib.Path, total: int, tag: str, mtime: float | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(total):
        path = directory / f"part-{i:05d}-of-{total:05d}.jsonl"
        path.write_text(json.dumps({"id": f"{tag}-{i}", "tag": tag}) + "\n")
        if mtime is not None:
            os.utime(path, (mtime, mtime))


def test_the_newest_complete_set_wins_and_incomplete_sets_are_ignored() -> None:
    files = [
        ("d/part-00000-of-00003.jsonl", 100.0),
        ("d/part-00001-of-00003.jsonl", 100.0),
        ("d/part-00002-of-00003.jsonl", 101.0),
        ("d/part-00000-of-00002.jsonl", 200.0),
        ("d/part-00001-of-00002.jsonl", 200.0),
        ("d/part-00000-of-00004.jsonl", 300.0),  # incomplete: 1 of 4
        ("d/other-00000-of-00001.jsonl", 400.0),  # another prefix
    ]
    assert pick_shard_set(files) == ["d/part-00000-of-00002.jsonl", "d/part-00001-of-00002.jsonl"]
    assert pick_shard_set(files[:3]) == [f"d/part-0000{i}-of-00003.jsonl" for i in range(3)]
    assert pick_shard_set(files[5:6]) == []


def test_current_shards_ignores_an_earlier_runs_leftovers(tmp_path: pathlib.Path) -> None:
    _write_set(tmp_path / "final", 3, "old", mtime=1_000_000.0)
    _write_set(tmp_path / "final", 2, "new")
    chosen = current_shards(str(tmp_path / "final"))
    assert [pathlib.Path(p).name for p in chosen] == [
        "part-00000-of-00002.jsonl",
        "part-00001-of-00002.jsonl",
    ]
    examples = load_examples(str(tmp_path), limit=10)
    assert [e["tag"] for e in examples] == ["new", "new"]
    assert current_shards(str(tmp_path / "missing")) == []


def test_clear_outputs_removes_only_the_stages_the_run_writes(tmp_path: pathlib.Path) -> None:
    for directory in ("seeds", "execution", "final", "rejected/final", "errors/final"):
        _write_set(tmp_path / directory, 1, directory)
    removed = clear_outputs(str(tmp_path), ["final"])
    assert sorted(pathlib.Path(p).relative_to(tmp_path).as_posix() for p in removed) == [
        "errors/final",
        "final",
        "rejected/final",
    ]
    assert (tmp_path / "seeds").is_dir() and (tmp_path / "execution").is_dir()
    assert not (tmp_path / "final").exists()
