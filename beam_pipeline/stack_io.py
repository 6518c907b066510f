"""Reading The Stack: parquet shards (local, gs://, hf://) or directories of .py files.

Everything goes through fsspec + pyarrow, so it works on every runner (Beam's own file IO
rejects `hf://`). A parquet shard becomes one read task per row group and each row group is
streamed in small record batches: a shard is never held in memory whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from beam_pipeline.core.seeds import decode_content
from beam_pipeline.records import SourceFile

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


class InputError(Exception):
    """A shard or file that cannot be read; the message names it."""


@dataclasses.dataclass(frozen=True)
class ReadTask:
    """One unit of reading: a parquet row group or one .py file."""

    path: str
    kind: str  # "parquet" or "py"
    row_group: int = -1

    @property
    def label(self) -> str:
        return f"{self.path}#rg{self.row_group}" if self.kind == "parquet" else self.path


def _protocol_path(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    return path if "://" in path else f"{protocol}://{path}"


def expand_pattern(pattern: str) -> list[str]:
    """Files matched by a path, glob or directory (recursively: *.parquet and *.py)."""
    fs, _, paths = fsspec.get_fs_token_paths(pattern)
    out: list[str] = []
    for path in paths:
        if fs.isdir(path):
            for suffix in (*PARQUET_SUFFIXES, *PY_SUFFIXES):
                out.extend(fs.glob(f"{path.rstrip('/')}/**/*{suffix}"))
        else:
            out.append(path)
    return sorted({_protocol_path(fs, p) for p in out})


def tasks_for_file(path: str) -> list[ReadTask]:
    """Read tasks of one file: a task per row group for parquet, one task for a .py file."""
    if path.endswith(PY_SUFFIXES):
        return [ReadTask(path=path, kind="py")]
    try:
        with fsspec.open(path, "rb") as handle:
            meta = pq.ParquetFile(handle).metadata
    except Exception as exc:
        raise InputError(
            f"cannot read parquet footer of {path}: {type(exc).__name__}: {exc}"
        ) from exc
    if CONTENT_COLUMN not in meta.schema.names:
        raise InputError(
            f"{path} has no '{CONTENT_COLUMN}' column (columns: {', '.join(meta.schema.names)})"
        )
    return [ReadTask(path=path, kind="parquet", row_group=i) for i in range(meta.num_row_groups)]


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


def read_task(task: ReadTask) -> Iterator[SourceFile]:
    """Source files of one task. Raises InputError naming the file when it cannot be read."""
    try:
        if task.kind == "py":
            with fsspec.open(task.path, "rb") as handle:
                raw = handle.read()
            yield _make_source(raw, {"path": task.path}, task.path)
            return
        yield from _read_row_group(task)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read {task.label}: {type(exc).__name__}: {exc}") from exc


def _read_row_group(task: ReadTask) -> Iterator[SourceFile]:
    with fsspec.open(task.path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        names = set(parquet.schema_arrow.names)
        if CONTENT_COLUMN not in names:
            raise InputError(f"{task.path} has no '{CONTENT_COLUMN}' column")
        columns = {key: _first_present(names, aliases) for key, aliases in COLUMN_ALIASES.items()}
        wanted = [CONTENT_COLUMN] + [c for c in columns.values() if c]
        row = 0
        for batch in parquet.iter_batches(
            batch_size=BATCH_ROWS, row_groups=[task.row_group], columns=wanted
        ):
            # Binary view: a mis-encoded string column must not fail the whole batch.
            content = batch.column(CONTENT_COLUMN)
            if not pa.types.is_binary(content.type) and not pa.types.is_large_binary(content.type):
                content = content.cast(pa.large_binary())
            meta_cols = {k: batch.column(c).to_pylist() for k, c in columns.items() if c}
            for i, raw in enumerate(content.to_pylist()):
                meta = {k: v[i] for k, v in meta_cols.items()}
                yield _make_source(raw or b"", meta, f"{task.path}#rg{task.row_group}:{row}")
                row += 1
