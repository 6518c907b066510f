"""Reading The Stack: parquet shards (local, gs://, hf://) or directories of .py files.

Everything goes through fsspec + pyarrow, so it works on every runner (Beam's own file IO
rejects `hf://`). A parquet shard becomes read tasks of bounded size: a row group, or a range
of rows of a large row group. A task is streamed in small record batches with buffered column
reads, so neither a shard nor a row group is ever held in memory whole.

Errors: a transient read error (a reset connection, a timeout, HTTP 429/5xx) is retried with
bounded exponential back-off and the read resumes at the first row not yet produced; anything
else, or a transient error that outlasts the retries, raises `InputError` naming the file.

Access: `hf://` (The Stack is gated) takes a token from `ReadSettings`: an explicit token or a
Secret Manager secret, resolved once per worker process; without either, the filesystem's own
lookup applies (the worker's `HF_TOKEN` or cached login).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from beam_pipeline.core.seeds import decode_content
from beam_pipeline.records import SourceFile

log = logging.getLogger(__name__)
T = TypeVar("T")

# The Stack v1 metadata columns, with the names other Stack-like dumps use as fallbacks.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "path": ("max_stars_repo_path", "path", "max_forks_repo_path", "max_issues_repo_path"),
    "repo_name": ("max_stars_repo_name", "repo_name", "repository_name"),
    "stars": ("max_stars_count", "stars"),
    "licenses": ("max_stars_repo_licenses", "licenses", "license"),
    "sha1": ("hexsha", "sha", "blob_id"),
}
CONTENT_COLUMN = "content"
PY_SUFFIXES = (".py", ".pyw")
PARQUET_SUFFIXES = (".parquet", ".pq")
BATCH_ROWS = 128
# Column chunks are read through a buffer of this size instead of whole (pyarrow's default
# pre-buffers a row group's chunks: a 1 Mi-row group of The Stack is GBs).
READ_BUFFER_BYTES = 1 << 20
# A row group with more rows than this is split into row ranges, one read task each. Parquet
# cannot seek to a row inside a column chunk, so the task for a range decodes (without
# parsing) the rows before it: about 30 us a row against ~4 ms to parse one. Capping the
# ranges per group at 16 bounds that waste to (16 - 1) / 2 x 30 us / 4 ms, about 6 % of the
# parse time, while one 1 Mi-row group still spreads over 16 workers instead of one.
ROWS_PER_TASK = 4096
MAX_RANGES_PER_GROUP = 16
# HTTP statuses worth another try; others (401, 403, 404) are answers, not accidents.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
TRANSIENT_ERRNO = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.EAGAIN,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
    }
)
# Network errors of the HTTP stacks under fsspec (requests, urllib3, aiohttp, http.client)
# that do not derive from the builtin ConnectionError / TimeoutError.
TRANSIENT_NAMES = frozenset(
    {
        "ConnectionError",
        "Timeout",
        "ReadTimeout",
        "ConnectTimeout",
        "ChunkedEncodingError",
        "ProtocolError",
        "IncompleteRead",
        "RemoteDisconnected",
        "ClientConnectionError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
    }
)
PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class InputError(Exception):
    """A shard or file that cannot be read; the message names it."""


@dataclasses.dataclass(frozen=True)
class ReadSettings:
    """How workers read the input: access token and task sizes (small and picklable)."""

    hf_token: str | None = dataclasses.field(default=None, repr=False)
    # A Secret Manager secret version holding the token, e.g.
    # projects/P/secrets/hf-token/versions/latest; fetched on the worker, never in the graph.
    hf_token_secret: str | None = None
    rows_per_task: int = ROWS_PER_TASK
    max_ranges_per_group: int = MAX_RANGES_PER_GROUP
    max_retries: int = 5
    retry_base_s: float = 1.0
    retry_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.rows_per_task < 1 or self.max_ranges_per_group < 1 or self.max_retries < 0:
            raise ValueError("rows_per_task and max_ranges_per_group must be >= 1, retries >= 0")

    def token(self) -> str | None:
        """The hub token for hf:// reads (a secret is fetched once per process)."""
        if self.hf_token:
            return self.hf_token
        if self.hf_token_secret:
            return _secret(self.hf_token_secret)
        return None


_SECRETS: dict[str, str] = {}
_SECRETS_LOCK = threading.Lock()


def _secret(version_name: str) -> str:
    with _SECRETS_LOCK:
        if version_name not in _SECRETS:
            try:
                from apache_beam.utils.secret import GcpSecret

                value = GcpSecret(version_name).get_secret_bytes().decode().strip()
            except Exception as exc:
                raise InputError(
                    f"cannot read the hub token from secret {version_name}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            _SECRETS[version_name] = value
        return _SECRETS[version_name]


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def storage_options(url: str, token: str | None) -> dict[str, Any]:
    """fsspec keyword arguments for `url`: the hub token for hf://, nothing otherwise."""
    return {"token": token} if token and protocol_of(url) == "hf" else {}


@dataclasses.dataclass(frozen=True)
class ReadTask:
    """One unit of reading: rows [row_start, row_end) of a parquet row group, or a .py file."""

    path: str
    kind: str  # "parquet" or "py"
    row_group: int = -1
    row_start: int = 0
    row_end: int = -1

    @property
    def label(self) -> str:
        if self.kind != "parquet":
            return self.path
        return f"{self.path}#rg{self.row_group}[{self.row_start}:{self.row_end}]"

    def rest(self, next_row: int) -> ReadTask:
        """The rows not yet produced when a read stopped before `next_row`."""
        return dataclasses.replace(self, row_start=next_row)


def is_transient(exc: BaseException) -> bool:
    """Whether a read error is worth another try (checked along the exception's causes)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = getattr(getattr(current, "response", None), "status_code", None)
        if status is None:
            status = getattr(current, "status", None) or getattr(current, "code", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status in TRANSIENT_STATUS
        if isinstance(current, PERMANENT_OS_ERRORS):
            return False
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        if TRANSIENT_NAMES.intersection(c.__name__ for c in type(current).__mro__):
            return True
        if isinstance(current, OSError) and current.errno in TRANSIENT_ERRNO:
            return True
        current = current.__cause__ or current.__context__
    return False


def _backoff(settings: ReadSettings, attempt: int) -> float:
    delay = min(settings.retry_max_s, settings.retry_base_s * 2**attempt)
    return delay * (0.5 + random.random() / 2)  # jitter: workers hit by one outage spread out


def with_retries(what: str, fn: Callable[[], T], settings: ReadSettings) -> T:
    """`fn()`, retried on transient errors; the last error is raised as is."""
    for attempt in range(settings.max_retries + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == settings.max_retries or not is_transient(exc):
                raise
            delay = _backoff(settings, attempt)
            log.warning("%s: %s: %s; retrying in %.1f s", what, type(exc).__name__, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _protocol_path(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    return path if "://" in path else f"{protocol}://{path}"


def expand_pattern(
    pattern: str, token: str | None = None, settings: ReadSettings | None = None
) -> list[str]:
    """Files matched by a path, glob or directory (recursively: *.parquet and *.py)."""
    settings = settings or ReadSettings()

    def expand() -> list[str]:
        fs, _, paths = fsspec.get_fs_token_paths(
            pattern, storage_options=storage_options(pattern, token)
        )
        out: list[str] = []
        for path in paths:
            if fs.isdir(path):
                for suffix in (*PARQUET_SUFFIXES, *PY_SUFFIXES):
                    out.extend(fs.glob(f"{path.rstrip('/')}/**/*{suffix}"))
            else:
                out.append(path)
        return sorted({_protocol_path(fs, p) for p in out})

    return with_retries(f"listing {pattern}", expand, settings)


def split_rows(num_rows: int, rows_per_task: int, max_ranges: int) -> list[tuple[int, int]]:
    """[start, end) ranges covering 0..num_rows: as few as the bounds allow, equal in size."""
    if num_rows <= 0:
        return [(0, 0)]
    n = min(max_ranges, math.ceil(num_rows / rows_per_task))
    bounds = [num_rows * i // n for i in range(n + 1)]
    return list(itertools.pairwise(bounds))


def _open(path: str, token: str | None) -> fsspec.core.OpenFile:
    # fsspec.open returns one OpenFile; unannotated, it reads as `OpenFiles | ...` to a checker.
    return cast(fsspec.core.OpenFile, fsspec.open(path, "rb", **storage_options(path, token)))


def read_footer(path: str, token: str | None = None) -> pq.FileMetaData:
    with _open(path, token) as handle:
        return pq.ParquetFile(handle).metadata


def tasks_for_file(
    path: str, settings: ReadSettings | None = None, token: str | None = None
) -> list[ReadTask]:
    """Read tasks of one file: one per row group or row range for parquet, one per .py file."""
    settings = settings or ReadSettings()
    if path.endswith(PY_SUFFIXES):
        return [ReadTask(path=path, kind="py")]
    try:
        meta = with_retries(f"footer of {path}", lambda: read_footer(path, token), settings)
    except Exception as exc:
        raise InputError(
            f"cannot read parquet footer of {path}: {type(exc).__name__}: {exc}{_hint(path)}"
        ) from exc
    if CONTENT_COLUMN not in meta.schema.names:
        raise InputError(
            f"{path} has no '{CONTENT_COLUMN}' column (columns: {', '.join(meta.schema.names)})"
        )
    return [
        ReadTask(path=path, kind="parquet", row_group=rg, row_start=start, row_end=end)
        for rg in range(meta.num_row_groups)
        for start, end in split_rows(
            meta.row_group(rg).num_rows, settings.rows_per_task, settings.max_ranges_per_group
        )
    ]


def _hint(path: str) -> str:
    if protocol_of(path) != "hf":
        return ""
    return (
        " (hf:// datasets such as The Stack are gated: accept the dataset's terms on the hub "
        "and give the workers a token with --hf_token_secret or --hf_token)"
    )


def preflight(patterns: list[str], settings: ReadSettings | None = None) -> str:
    """Checks on the launcher that the input exists and that one file of it reads (the first
    parquet footer); raises InputError saying what is wrong. Returns the file it read."""
    settings = settings or ReadSettings()
    token = settings.token()
    files: list[str] = []
    for pattern in patterns:
        try:
            files.extend(expand_pattern(pattern, token, settings))
        except Exception as exc:
            raise InputError(
                f"cannot list input {pattern}: {type(exc).__name__}: {exc}{_hint(pattern)}"
            ) from exc
    if not files:
        raise InputError(f"no input file matches {', '.join(map(repr, patterns))}")
    first = next((f for f in files if not f.endswith(PY_SUFFIXES)), files[0])
    tasks = tasks_for_file(first, settings, token)
    if tasks and tasks[0].kind == "py":
        try:  # one byte shows that the file opens with these credentials
            with_retries(first, lambda: _read_bytes(first, token, 1), settings)
        except Exception as exc:
            raise InputError(f"cannot read {first}: {type(exc).__name__}: {exc}") from exc
    return first


def _first_present(names: set[str], aliases: tuple[str, ...]) -> str | None:
    return next((a for a in aliases if a in names), None)


def _licenses(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)  # type: ignore[union-attr]


def _make_source(content: str | bytes, meta: dict[str, object], source: str) -> SourceFile:
    raw = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
    text, valid = decode_content(raw)
    sha1 = str(meta.get("sha1") or hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest())
    path = str(meta.get("path") or "")
    repo = str(meta.get("repo_name") or "")
    stars = meta.get("stars")
    return SourceFile(
        id=SourceFile.make_id(sha1, path, repo),
        content=text,
        path=path,
        repo_name=repo,
        stars=int(stars) if isinstance(stars, int | float) else None,
        licenses=_licenses(meta.get("licenses")),
        sha1=sha1,
        source=source,
        size_bytes=len(raw),
        valid_utf8=valid,
    )


def read_task(
    task: ReadTask, settings: ReadSettings | None = None, token: str | None = None
) -> Iterator[SourceFile]:
    """Source files of one task, streamed. A transient error is retried and the read resumes
    at the first row not yet yielded; a lasting one raises InputError naming the file."""
    settings = settings or ReadSettings()
    if task.kind == "py":
        try:
            raw = with_retries(task.path, lambda: _read_bytes(task.path, token), settings)
        except Exception as exc:
            raise InputError(f"cannot read {task.label}: {type(exc).__name__}: {exc}") from exc
        yield _make_source(raw, {"path": task.path}, task.path)
        return
    next_row = task.row_start
    failures = 0  # consecutive, without a row read in between
    while True:
        try:
            for source in _read_rows(task.rest(next_row), token):
                failures = 0
                next_row += 1
                yield source
            return
        except InputError:
            raise
        except Exception as exc:
            if failures >= settings.max_retries or not is_transient(exc):
                raise InputError(
                    f"cannot read {task.rest(next_row).label}: {type(exc).__name__}: {exc}"
                    f"{_hint(task.path) if not is_transient(exc) else ''}"
                ) from exc
            delay = _backoff(settings, failures)
            failures += 1
            log.warning(
                "%s: %s: %s; resuming at row %d in %.1f s",
                task.label, type(exc).__name__, exc, next_row, delay,
            )  # fmt: skip
            time.sleep(delay)


def _read_bytes(path: str, token: str | None, limit: int = -1) -> bytes:
    with _open(path, token) as handle:
        return handle.read(limit)


def _read_rows(task: ReadTask, token: str | None) -> Iterator[SourceFile]:
    if task.row_end >= 0 and task.row_start >= task.row_end:
        return
    with _open(task.path, token) as handle:
        parquet = pq.ParquetFile(handle, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
        names = set(parquet.schema_arrow.names)
        if CONTENT_COLUMN not in names:
            raise InputError(f"{task.path} has no '{CONTENT_COLUMN}' column")
        columns = {key: _first_present(names, aliases) for key, aliases in COLUMN_ALIASES.items()}
        wanted = [CONTENT_COLUMN] + [c for c in columns.values() if c]
        end = (
            task.row_end
            if task.row_end >= 0
            else parquet.metadata.row_group(task.row_group).num_rows
        )
        row = 0  # index in the row group of the batch's first row
        for batch in parquet.iter_batches(
            batch_size=BATCH_ROWS, row_groups=[task.row_group], columns=wanted
        ):
            first, row = row, row + batch.num_rows
            if row <= task.row_start:
                continue  # decoded, not converted: the cheap way past earlier ranges
            lo, hi = max(task.row_start - first, 0), min(end - first, batch.num_rows)
            batch = batch.slice(lo, hi - lo)
            # Binary view: a mis-encoded string column must not fail the whole batch.
            content = batch.column(CONTENT_COLUMN)
            if not pa.types.is_binary(content.type) and not pa.types.is_large_binary(content.type):
                content = content.cast(pa.large_binary())
            meta_cols = {k: batch.column(c).to_pylist() for k, c in columns.items() if c}
            for i, raw in enumerate(content.to_pylist()):
                meta = {k: v[i] for k, v in meta_cols.items()}
                yield _make_source(
                    raw or b"", meta, f"{task.path}#rg{task.row_group}:{first + lo + i}"
                )
            if row >= end:
                return
