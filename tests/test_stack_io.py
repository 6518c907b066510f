"""Reading Stack shards and .py directories with fsspec + pyarrow."""

from __future__ import annotations

import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline import stack_io
from tests.fixtures.bad_inputs import ROWS, write_bad_shard


def _read_all(path: str) -> list:
    return [f for task in stack_io.tasks_for_file(path) for f in stack_io.read_task(task)]


def test_bundled_shard_reads_with_metadata(bundled_shard: str) -> None:
    meta = pq.ParquetFile(bundled_shard).metadata
    tasks = stack_io.tasks_for_file(bundled_shard)
    assert len(tasks) == meta.num_row_groups > 1
    files = _read_all(bundled_shard)
    assert len(files) == meta.num_rows
    first = files[0]
    assert first.repo_name == "python/cpython"
    assert first.path.startswith("Lib/")
    assert first.licenses == ("PSF-2.0",)
    assert len(first.sha1) == 40
    assert len({f.id for f in files}) == len(files)


def test_binary_content_column_and_invalid_utf8(tmp_path: pathlib.Path) -> None:
    paths = write_bad_shard(tmp_path)
    files = _read_all(str(paths["bad"]))
    assert [f.path for f in files] == [r[0] for r in ROWS]
    by_path = {f.path: f for f in files}
    assert not by_path["latin1.py"].valid_utf8
    assert by_path["good.py"].valid_utf8
    assert by_path["huge.py"].size_bytes > 50 * 1024 * 1024
    assert by_path["good.py"].stars == 0 and by_path["good.py"].sha1 == "0" * 40
    # a not-UTF-8 record still serialises to valid JSON
    assert "\\udce9" in by_path["latin1.py"].to_json()


def test_missing_content_column_names_the_file(tmp_path: pathlib.Path) -> None:
    paths = write_bad_shard(tmp_path)
    with pytest.raises(stack_io.InputError, match=r"no_content\.parquet has no 'content'"):
        stack_io.tasks_for_file(str(paths["no_content"]))


def test_corrupt_shard_names_the_file(tmp_path: pathlib.Path) -> None:
    paths = write_bad_shard(tmp_path)
    with pytest.raises(stack_io.InputError, match=r"corrupt\.parquet"):
        stack_io.tasks_for_file(str(paths["corrupt"]))


def test_directory_of_py_files(tmp_path: pathlib.Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text('def f(x):\n    """d"""\n    return x\n')
    (tmp_path / "b.py").write_bytes(b"\xff\xfe")
    (tmp_path / "notes.txt").write_text("ignored")
    paths = stack_io.expand_pattern(str(tmp_path))
    assert sorted(pathlib.Path(p).name for p in paths) == ["a.py", "b.py"]
    files = [f for p in paths for t in stack_io.tasks_for_file(p) for f in stack_io.read_task(t)]
    assert {pathlib.Path(f.path).name: f.valid_utf8 for f in files} == {"a.py": True, "b.py": False}
    assert all(f.sha1 and f.id for f in files)


def test_glob_and_missing_pattern(tmp_path: pathlib.Path) -> None:
    for i in range(3):
        pq.write_table(pa.table({"content": [f"x = {i}"]}), tmp_path / f"s{i}.parquet")
    assert len(stack_io.expand_pattern(str(tmp_path / "s*.parquet"))) == 3
    assert stack_io.expand_pattern(str(tmp_path / "nothing-*.parquet")) == []


def test_row_groups_stream_in_batches(tmp_path: pathlib.Path) -> None:
    n = stack_io.BATCH_ROWS * 3 + 5
    pq.write_table(
        pa.table({"content": [f"x = {i}" for i in range(n)]}),
        tmp_path / "big.parquet",
        row_group_size=n,
    )
    files = _read_all(str(tmp_path / "big.parquet"))
    assert [f.content for f in files] == [f"x = {i}" for i in range(n)]
    assert files[-1].source.endswith(f"#rg0:{n - 1}")
