"""Reading Stack shards and .py directories with fsspec + pyarrow."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline import stack_io
from beam_pipeline.main import run
from tests.conftest import FNAPI
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


@pytest.fixture
def memory_shards(bundled_shard: str) -> Iterator[str]:
    """The bundled shard twice on fsspec's in-memory filesystem: a URL with a protocol, read
    through the same code path as gs:// and hf://."""
    fs = fsspec.filesystem("memory")
    data = pathlib.Path(bundled_shard).read_bytes()
    for name in ("train-00000-of-00002.parquet", "train-00001-of-00002.parquet"):
        fs.pipe(f"/stack/data/python/{name}", data)
    yield "memory://stack/data/python"
    fs.rm("/stack", recursive=True)


def test_url_globs_and_directories_keep_their_protocol(
    memory_shards: str, bundled_shard: str
) -> None:
    by_glob = stack_io.expand_pattern(f"{memory_shards}/train-*.parquet")
    by_dir = stack_io.expand_pattern(memory_shards)
    assert by_glob == by_dir
    assert [p.rsplit("/", 1)[1] for p in by_glob] == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    assert all(p.startswith("memory://") for p in by_glob)
    # Each expanded URL opens: one read task per row group, as for the local file.
    row_groups = pq.ParquetFile(bundled_shard).metadata.num_row_groups
    assert [len(stack_io.tasks_for_file(p)) for p in by_glob] == [row_groups, row_groups]


def test_url_shard_reads_like_the_local_file(memory_shards: str, bundled_shard: str) -> None:
    remote = _read_all(f"{memory_shards}/train-00000-of-00002.parquet")
    local = _read_all(bundled_shard)
    assert [f.id for f in remote] == [f.id for f in local]
    assert [f.content for f in remote] == [f.content for f in local]
    assert all(f.source.startswith("memory://") for f in remote)


def test_seed_stage_runs_on_a_url_glob(
    memory_shards: str, bundled_shard: str, tmp_path: pathlib.Path
) -> None:
    # FnApiRunner with one worker runs in this process, so it sees the in-memory filesystem.
    report = run(
        [
            f"--input={memory_shards}/*.parquet",
            f"--output_dir={tmp_path}",
            "--to_stage=seeds",
            "--seed_dedup_threshold=0",
            *FNAPI,
        ]
    )
    assert report["invariant_ok"], report["problems"]
    stages = report["stages"]
    assert stages["read"]["errors"] == 0
    assert stages["seeds.extract"]["in"] == 2 * pq.ParquetFile(bundled_shard).metadata.num_rows
    # The second shard is a copy: each of its seeds is an exact duplicate of the first's.
    passed_filter = stages["seeds.filter"]["out"]
    assert passed_filter > 0 and passed_filter % 2 == 0
    assert stages["seeds.exact_dedup"]["rejected"] >= passed_filter // 2


@pytest.mark.parametrize(("protocol", "module"), [("gs", "gcsfs"), ("hf", "huggingface_hub")])
def test_cloud_filesystems_are_installed(protocol: str, module: str) -> None:
    # Resolving the class imports the filesystem's package without a network call.
    assert fsspec.get_filesystem_class(protocol).__module__.split(".")[0] == module
