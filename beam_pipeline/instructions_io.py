"""`--instructions`: a user's own instructions (JSONL or parquet, any fsspec path) as records.

A file holds one instruction per row in an `instruction` column; `category` and `difficulty`
columns are used when present, and every other column is kept, as JSON, in the record's
`provenance`. The launcher checks each file's columns before the job starts
(`check_instruction_files`), so a file without the column stops the run with a message that
names it; a bad row inside a good file is a counted rejection (`rows_of`), never a crash.

No Beam here: `stages/user_instructions.py` is the glue.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from beam_pipeline.records import Instruction, stable_hash

COLUMN = "instruction"
KNOWN = ("category", "difficulty")
PARQUET = (".parquet", ".pq")
JSONL = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


class InstructionsError(ValueError):
    """An instructions input that cannot be read at all; the message says which and why."""


class RowReason(StrEnum):
    """Why a row of an instructions file is not an instruction."""

    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    BAD_INSTRUCTION = "bad_instruction"
    EMPTY_INSTRUCTION = "empty_instruction"


@dataclasses.dataclass(frozen=True)
class RowOutcome:
    """One row: an Instruction, or a reason and detail why it is not one."""

    instruction: Instruction | None
    reason: RowReason | None = None
    detail: str = ""
    row_id: str = ""


def _is_parquet(path: str) -> bool:
    return path.lower().endswith(PARQUET)


def expand(patterns: list[str]) -> list[str]:
    """Files matched by paths, globs or directories (recursively: *.jsonl, *.json, *.parquet)."""
    out: list[str] = []
    for pattern in patterns:
        fs, _, paths = fsspec.get_fs_token_paths(pattern)
        matched: list[str] = []
        for path in paths:
            if fs.isdir(path):
                matched += [p for p in fs.find(path) if p.lower().endswith(PARQUET + JSONL)]
            else:
                matched.append(path)
        if not matched:
            raise InstructionsError(f"--instructions {pattern!r} matches no file")
        local = isinstance(fs, LocalFileSystem)
        out += [p if local else fs.unstrip_protocol(p) for p in sorted(matched)]
    return out


def columns_of(path: str) -> list[str]:
    """The columns of a file: the parquet schema, or the keys of a JSONL file's first row."""
    if _is_parquet(path):
        import pyarrow.parquet as pq

        with fsspec.open(path, "rb") as handle:
            return list(pq.ParquetFile(handle).schema_arrow.names)
    with fsspec.open(path, "rt", encoding="utf-8", compression="infer") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InstructionsError(f"{path}: line {number} is not JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise InstructionsError(f"{path}: line {number} is not a JSON object")
            return list(row)
    return []


def check_instruction_files(patterns: list[str]) -> list[str]:
    """The files to read; InstructionsError when one is unreadable or has no `instruction`."""
    files = expand(patterns)
    for path in files:
        try:
            columns = columns_of(path)
        except InstructionsError:
            raise
        except Exception as exc:
            raise InstructionsError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
        if COLUMN not in columns:
            raise InstructionsError(
                f"{path} has no {COLUMN!r} column (it has {columns}); each row needs the "
                f"instruction text in {COLUMN!r}"
            )
    return files


def instruction_of(row: Any, source: str) -> RowOutcome:
    """A row (any JSON value) -> an Instruction, or the reason it is not one."""
    if not isinstance(row, dict):
        return RowOutcome(None, RowReason.NOT_AN_OBJECT, f"{source}: {type(row).__name__}", source)
    text = row.get(COLUMN)
    if not isinstance(text, str):
        return RowOutcome(
            None, RowReason.BAD_INSTRUCTION, f"{source}: {COLUMN} is {type(text).__name__}", source
        )
    if not text.strip():
        return RowOutcome(None, RowReason.EMPTY_INSTRUCTION, source, source)
    extra = {k: v for k, v in row.items() if k != COLUMN and k not in KNOWN}
    provenance = json.dumps({"source": source, **extra}, ensure_ascii=False, default=str)
    record = Instruction(
        id="u" + stable_hash(text),
        seed="",
        concepts=(),
        category=str(row.get("category") or ""),
        difficulty=str(row.get("difficulty") or ""),
        instruction=text,
        provenance=provenance,
    )
    return RowOutcome(record)


def rows_of(path: str) -> Iterator[tuple[Any, str]]:
    """(row, "path:row number") for every row of a file; an unparsable JSONL line is yielded
    as a `_BadLine` so that it is counted, not lost."""
    if _is_parquet(path):
        import pyarrow.parquet as pq

        with fsspec.open(path, "rb") as handle:
            number = 0
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    number += 1
                    yield row, f"{path}:{number}"
        return
    with fsspec.open(path, "rt", encoding="utf-8", compression="infer") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line), f"{path}:{number}"
            except json.JSONDecodeError as exc:
                yield _BadLine(str(exc)), f"{path}:{number}"


@dataclasses.dataclass(frozen=True)
class _BadLine:
    error: str


def outcomes_of(path: str) -> Iterator[RowOutcome]:
    for row, source in rows_of(path):
        if isinstance(row, _BadLine):
            yield RowOutcome(None, RowReason.NOT_JSON, f"{source}: {row.error}", source)
        else:
            yield instruction_of(row, source)
