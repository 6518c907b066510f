"""Small readers used by several tests."""

from __future__ import annotations

import json
import pathlib


def read_jsonl_dir(directory: pathlib.Path | str) -> list[dict]:
    rows: list[dict] = []
    for path in sorted(pathlib.Path(directory).glob("part-*.jsonl")):
        with open(path, encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows
