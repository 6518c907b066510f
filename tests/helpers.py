"""Record factories and small readers used by several tests.

Each factory builds a valid record with plain defaults; keyword arguments override any field.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from beam_pipeline.records import Execution, Instruction, Sample, Seed

_UNSET: Any = object()


def read_jsonl_dir(directory: pathlib.Path | str) -> list[dict]:
    rows: list[dict] = []
    for path in sorted(pathlib.Path(directory).glob("part-*.jsonl")):
        with open(path, encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows


def seed_function(index: int, docstring_tail: str = "") -> str:
    """A small seed function `f<index>` with a docstring (`docstring_tail` ends it)."""
    doc = f"Return x plus {index}.{docstring_tail}"
    return f'def f{index}(x):\n    """{doc}"""\n    return x + {index}'


def make_seed(index: int = 0, seed: Any = _UNSET, **fields: Any) -> Seed:
    """Seed `index` (`seed_function(index)` unless `seed` is given); the id follows the text."""
    text = seed_function(index) if seed is _UNSET else seed
    values = {
        "id": Seed.make_id(str(text)),
        "seed": text,
        "sha1": f"sha{index}",
        "path": f"p{index}.py",
    }
    return Seed(**{**values, **fields})


def make_instruction(index: int = 0, instruction: str = "Write f.", **fields: Any) -> Instruction:
    values = {
        "id": f"i{index:02d}",
        "seed": f"def s{index}(): return {index}",
        "sha1": f"sha{index}",
        "concepts": ("loops",),
        "category": "function",
        "difficulty": "easy",
        "instruction": instruction,
    }
    return Instruction(**{**values, **fields})


def _sample_fields(instruction_id: str, sample_index: int) -> dict[str, Any]:
    return {
        "id": Sample.make_id(instruction_id, sample_index),
        "seed": "def s(x):\n    return x",
        "concepts": ("c",),
        "category": "function",
        "difficulty": "easy",
        "instruction": f"Write f for task {instruction_id}.",
        "instruction_id": instruction_id,
        "sample_index": sample_index,
        "response": "```python\ndef f(x):\n    return x\n```",
        "tests": "```python\nassert f(1) == 1\n```",
    }


def make_sample(instruction_id: str = "i0", sample_index: int = 0, **fields: Any) -> Sample:
    """Sample `sample_index` of instruction `instruction_id` (id `<instruction_id>.<index>`)."""
    return Sample(**{**_sample_fields(instruction_id, sample_index), **fields})


def make_execution(
    instruction_id: str = "i0", sample_index: int = 0, status: str = "passed", **fields: Any
) -> Execution:
    """`make_sample`'s record after execution ended with `status`."""
    values = {**_sample_fields(instruction_id, sample_index), "program_sha": "planted"}
    return Execution(**{**values, "status": status, **fields})


@contextlib.contextmanager
def busy_cpu(loops: int = 3) -> Iterator[str]:
    """`loops` busy loops on one CPU, each in its own session (a scheduler group of its own),
    until the block ends; yields the code that pins a program to that CPU, so a program that
    runs it starves."""
    cpu = min(os.sched_getaffinity(0))
    pin = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\n"
    loop = [sys.executable, "-c", pin + "while True:\n    pass\n"]
    processes = [subprocess.Popen(loop, start_new_session=True) for _ in range(loops)]
    try:
        yield pin
    finally:
        for process in processes:
            process.kill()
            process.wait()
