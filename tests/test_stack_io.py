"""Reading Stack shards and .py directories with fsspec + pyarrow."""

from __future__ import annotations

import pathlib
import random
from collections import Counter
from collections.abc import Callable, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from beam_pipeline import stack_io
from beam_pipeline.main import run
from tests.conftest import FNAPI
from tests.fixtures.bad_inputs import ROWS, write_bad_shard

pytestmark = pytest.mark.timeout(300)  # pipeline runs over parquet shards


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


# ---------------------------------------------------------------------------------------------
# Row ranges of large row groups

FAST = stack_io.ReadSettings(retry_base_s=0.001, retry_max_s=0.01)


@pytest.mark.parametrize(
    ("rows", "per_task", "max_ranges", "expected_ranges"),
    [(0, 10, 4, 1), (5, 10, 4, 1), (10, 10, 4, 1), (11, 10, 4, 2), (1000, 10, 4, 4), (7, 1, 16, 7)],
)
def test_split_rows_covers_every_row_once(
    rows: int, per_task: int, max_ranges: int, expected_ranges: int
) -> None:
    ranges = stack_io.split_rows(rows, per_task, max_ranges)
    assert len(ranges) == expected_ranges
    assert [r for start, end in ranges for r in range(start, end)] == list(range(rows))
    sizes = [end - start for start, end in ranges]
    assert max(sizes) - min(sizes) <= 1


def _one_group_shard(path: pathlib.Path, n: int, row_bytes: int = 0) -> list[str]:
    """A shard written as ONE row group (pyarrow's default for a table under 1 Mi rows)."""
    rng = random.Random(7)  # incompressible padding: many pages, many reads
    contents = [f"x = {i}  # {rng.randbytes(row_bytes // 2).hex()}" for i in range(n)]
    pq.write_table(
        pa.table({"content": contents, "max_stars_repo_path": [f"f{i}.py" for i in range(n)]}),
        path,
        data_page_size=8192,
        write_batch_size=16,  # pages of a few rows, read one by one through the group
        use_dictionary=False,
    )
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    return contents


def test_one_row_group_becomes_many_tasks_read_exactly_once(tmp_path: pathlib.Path) -> None:
    n = 5000
    contents = _one_group_shard(tmp_path / "one.parquet", n)
    settings = stack_io.ReadSettings(rows_per_task=600, max_ranges_per_group=16)
    tasks = stack_io.tasks_for_file(str(tmp_path / "one.parquet"), settings)
    assert len(tasks) == 9 and {t.row_group for t in tasks} == {0}
    per_task = [list(stack_io.read_task(t, settings)) for t in tasks]
    assert all(len(files) <= 600 for files in per_task)
    files = [f for part in per_task for f in part]
    assert [f.content for f in files] == contents
    assert [f.path for f in files] == [f"f{i}.py" for i in range(n)]
    assert [f.source.rsplit(":", 1)[1] for f in files] == [str(i) for i in range(n)]


def test_one_row_group_spreads_over_tasks_in_the_pipeline(tmp_path: pathlib.Path) -> None:
    n = 3000
    _one_group_shard(tmp_path / "one.parquet", n)
    report = run(
        [
            f"--input={tmp_path / 'one.parquet'}",
            f"--output_dir={tmp_path / 'out'}",
            "--to_stage=seeds",
            "--seed_dedup_threshold=0",
            "--decontam_benchmarks=none",
            "--read_rows_per_task=500",
            *FNAPI,
        ]
    )
    assert report["invariant_ok"], report["problems"]
    read = report["stages"]["read"]
    assert (read["tasks"], read["out"], read["errors"]) == (6, n, 0)


# ---------------------------------------------------------------------------------------------
# Transient and lasting read errors, on a filesystem that injects faults


class FlakyFileSystem(MemoryFileSystem):
    """fsspec's in-memory filesystem whose opens and reads fail when `fault` says so.
    `fault(kind, n)` gets "open" or "read" and the global count of such calls so far."""

    protocol = "flaky"
    store: dict = {}  # noqa: RUF012  (fsspec's layout: a class-level store per filesystem)
    pseudo_dirs = [""]  # noqa: RUF012
    fault: Callable[[str, int], BaseException | None] = staticmethod(lambda kind, n: None)
    calls: Counter = Counter()  # noqa: RUF012

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return MemoryFileSystem._strip_protocol(path.replace("flaky://", "memory://", 1))

    def _open(self, path: str, mode: str = "rb", **kwargs: object) -> object:
        self._inject("open")
        handle = super()._open(path, mode, **kwargs)
        for name in ("read", "readinto"):  # pyarrow reads a Python file with either
            setattr(handle, name, self._flaky(getattr(handle, name)))
        return handle

    def _flaky(self, method: Callable) -> Callable:
        def call(*args: object) -> object:
            self._inject("read")
            return method(*args)

        return call

    def _inject(self, kind: str) -> None:
        type(self).calls[kind] += 1
        exc = type(self).fault(kind, type(self).calls[kind])
        if exc is not None:
            type(self).calls[f"{kind}_faults"] += 1
            raise exc


@pytest.fixture
def flaky(tmp_path: pathlib.Path) -> Iterator[type[FlakyFileSystem]]:
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    FlakyFileSystem.calls = Counter()
    FlakyFileSystem.fault = staticmethod(lambda kind, n: None)
    yield FlakyFileSystem
    FlakyFileSystem.store.clear()
    FlakyFileSystem.fault = staticmethod(lambda kind, n: None)


def _put(fs_cls: type[FlakyFileSystem], local: pathlib.Path, name: str) -> str:
    fs_cls().pipe(f"/{name}", local.read_bytes())
    return f"flaky://{name}"


def test_transient_errors_are_retried_and_the_read_resumes(
    flaky: type[FlakyFileSystem], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack_io, "READ_BUFFER_BYTES", 4096)  # many reads per row group
    contents = _one_group_shard(tmp_path / "s.parquet", 2000, row_bytes=1000)
    url = _put(flaky, tmp_path / "s.parquet", "s.parquet")
    (task,) = stack_io.tasks_for_file(url, FAST)
    got: list[str] = []
    pending = [300, 900, 1500]  # a fault at the first read after this many rows were produced

    def fault(kind: str, n: int) -> BaseException | None:
        if kind == "read" and pending and len(got) >= pending[0]:
            pending.pop(0)
            return ConnectionResetError(104, "reset by peer")
        return None

    flaky.fault = staticmethod(fault)
    for f in stack_io.read_task(task, FAST):
        got.append(f.content)
    assert flaky.calls["read_faults"] == 3 and not pending
    assert got == contents  # every row once, in order


def test_a_lasting_error_keeps_the_rows_read_and_names_the_rest(
    flaky: type[FlakyFileSystem], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack_io, "READ_BUFFER_BYTES", 4096)
    contents = _one_group_shard(tmp_path / "s.parquet", 2000, row_bytes=1000)
    url = _put(flaky, tmp_path / "s.parquet", "s.parquet")
    (task,) = stack_io.tasks_for_file(url, FAST)
    got: list[str] = []
    flaky.fault = staticmethod(
        lambda kind, n: TimeoutError("read timed out") if len(got) >= 700 else None
    )
    with pytest.raises(stack_io.InputError, match=r"s\.parquet#rg0\[(7\d\d):2000\]") as info:
        for f in stack_io.read_task(task, FAST):
            got.append(f.content)
    assert got == contents[: len(got)]
    # the retries were spent: one first try plus max_retries, all without progress
    faults = flaky.calls["read_faults"] + flaky.calls["open_faults"]
    assert faults == FAST.max_retries + 1
    assert f"[{len(got)}:2000]" in str(info.value)


@pytest.mark.parametrize(
    "exc",
    [PermissionError(13, "denied"), FileNotFoundError("gone"), ValueError("bad page header")],
)
def test_a_bad_file_is_not_retried(
    flaky: type[FlakyFileSystem], tmp_path: pathlib.Path, exc: BaseException
) -> None:
    _one_group_shard(tmp_path / "s.parquet", 100)
    url = _put(flaky, tmp_path / "s.parquet", "s.parquet")
    flaky.fault = staticmethod(lambda kind, n: exc if kind == "open" else None)
    with pytest.raises(stack_io.InputError, match=r"s\.parquet"):
        stack_io.tasks_for_file(url, FAST)
    assert flaky.calls["open_faults"] == 1


class _HTTPError(OSError):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.response = type("R", (), {"status_code": status})()


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionResetError(104, "reset"), True),
        (TimeoutError(), True),
        (OSError(110, "timed out"), True),
        (_HTTPError(503), True),
        (_HTTPError(429), True),
        (_HTTPError(401), False),
        (_HTTPError(404), False),
        (FileNotFoundError("x"), False),
        (PermissionError("x"), False),
        (pa.ArrowInvalid("Parquet magic bytes not found"), False),
        (OSError("Couldn't deserialize thrift"), False),
        (type("ChunkedEncodingError", (OSError,), {})("cut"), True),
    ],
)
def test_transient_errors_are_told_apart(exc: BaseException, transient: bool) -> None:
    assert stack_io.is_transient(exc) is transient
    wrapped = stack_io.InputError("outer")
    wrapped.__cause__ = exc
    assert stack_io.is_transient(wrapped) is transient


def test_transient_faults_in_the_pipeline_lose_and_duplicate_nothing(
    flaky: type[FlakyFileSystem], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack_io, "_backoff", lambda settings, attempt: 0.001)
    n = 1500
    _one_group_shard(tmp_path / "s.parquet", n, row_bytes=1000)
    _put(flaky, tmp_path / "s.parquet", "a.parquet")
    _put(flaky, tmp_path / "s.parquet", "b.parquet")
    # Every 7th open and every 97th read fail: a blip, after which the retry gets through (an
    # attempt at the last range of a group reads ~50 times before its first row: the skip).
    flaky.fault = staticmethod(
        lambda kind, n: ConnectionError("blip") if n % (7 if kind == "open" else 97) == 0 else None
    )
    report = run(
        [
            "--input=flaky://*.parquet",
            f"--output_dir={tmp_path / 'out'}",
            "--to_stage=seeds",
            "--seed_dedup_threshold=0",
            "--decontam_benchmarks=none",
            "--read_rows_per_task=400",
            *FNAPI,
        ]
    )
    assert flaky.calls["read_faults"] > 0 and flaky.calls["open_faults"] > 0
    assert report["invariant_ok"], report["problems"]
    read = report["stages"]["read"]
    assert (read["files"], read["tasks"], read["out"], read["errors"]) == (2, 8, 2 * n, 0)


# ---------------------------------------------------------------------------------------------
# The launcher's input check, and a run over unreadable input


def _argv(inputs: list[str], out: pathlib.Path, *extra: str) -> list[str]:
    return [
        *(f"--input={i}" for i in inputs),
        f"--output_dir={out}",
        "--to_stage=seeds",
        "--decontam_benchmarks=none",
        *extra,
        *FNAPI,
    ]


def test_launch_stops_when_the_input_is_unreadable(tmp_path: pathlib.Path) -> None:
    paths = write_bad_shard(tmp_path)
    with pytest.raises(SystemExit, match=r"cannot read parquet footer of .*corrupt\.parquet"):
        run(_argv([str(paths["corrupt"])], tmp_path / "out"))
    with pytest.raises(SystemExit, match=r"no input file matches .*nothing-\*\.parquet"):
        run(_argv([str(tmp_path / "nothing-*.parquet")], tmp_path / "out"))
    assert not (tmp_path / "out" / "seeds").exists()  # nothing ran


def test_a_run_that_reads_no_file_fails(
    flaky: type[FlakyFileSystem], tmp_path: pathlib.Path
) -> None:
    _one_group_shard(tmp_path / "s.parquet", 10)
    _put(flaky, tmp_path / "s.parquet", "a.parquet")
    # The launcher's check opens the footer once; on the workers every open is refused.
    opened = flaky.calls["open"]
    flaky.fault = staticmethod(
        lambda kind, n: PermissionError(13, "denied") if kind == "open" and n > opened + 1 else None
    )
    with pytest.raises(Exception, match=r"no input file could be read.*flaky://+a\.parquet"):
        run(_argv(["flaky://a.parquet"], tmp_path / "out"))


# ---------------------------------------------------------------------------------------------
# A token for gated hf:// input


class GatedHubFileSystem(MemoryFileSystem):
    """Stands in for the hub's filesystem under hf://: every call needs the right token."""

    protocol = "hf"
    store: dict = {}  # noqa: RUF012
    pseudo_dirs = [""]  # noqa: RUF012
    TOKEN = "hf_test_token"

    def __init__(self, token: str | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.token = token

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return MemoryFileSystem._strip_protocol(path.replace("hf://", "memory://", 1))

    def _check(self) -> None:
        if self.token != self.TOKEN:
            raise PermissionError(13, "401 Unauthorized: gated dataset")

    def ls(self, path: str, detail: bool = True, **kwargs: object) -> list:
        self._check()
        return super().ls(path, detail=detail, **kwargs)

    def info(self, path: str, **kwargs: object) -> dict:
        self._check()
        return super().info(path, **kwargs)

    def _open(self, path: str, mode: str = "rb", **kwargs: object) -> object:
        self._check()
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def gated_hub(bundled_shard: str) -> Iterator[str]:
    original = fsspec.get_filesystem_class("hf")
    fsspec.register_implementation("hf", GatedHubFileSystem, clobber=True)
    GatedHubFileSystem.clear_instance_cache()
    data = pathlib.Path(bundled_shard).read_bytes()
    GatedHubFileSystem(token=GatedHubFileSystem.TOKEN).pipe(
        "/datasets/stack/python/a.parquet", data
    )
    yield "hf://datasets/stack/python/a.parquet"
    GatedHubFileSystem.store.clear()
    GatedHubFileSystem.clear_instance_cache()
    fsspec.register_implementation("hf", original, clobber=True)


def test_the_hub_token_reaches_the_workers(
    gated_hub: str, bundled_shard: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(SystemExit, match=r"gated.*--hf_token_secret"):
        run(_argv([gated_hub], tmp_path / "no-token"))
    token = f"--hf_token={GatedHubFileSystem.TOKEN}"
    report = run(_argv([gated_hub], tmp_path / "out", token, "--seed_dedup_threshold=0"))
    assert report["invariant_ok"], report["problems"]
    read = report["stages"]["read"]
    assert read["errors"] == 0
    assert read["out"] == pq.ParquetFile(bundled_shard).metadata.num_rows
    # the token is not written into any output
    written = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert GatedHubFileSystem.TOKEN.encode() not in written


def test_settings_never_show_the_token() -> None:
    settings = stack_io.ReadSettings(hf_token="hf_secret_value")
    assert "hf_secret_value" not in repr(settings)
    assert settings.token() == "hf_secret_value"
    assert stack_io.storage_options("hf://datasets/x", settings.token()) == {
        "token": "hf_secret_value"
    }
    assert stack_io.storage_options("gs://bucket/x", settings.token()) == {}
