"""Turning completions into programs and scoring them in the sandbox.

The generation prompt is the training template's prompt followed by a ```` ```python ````
line, so a completion is code up to the closing fence. HumanEval: when the code defines the
entry point it is placed after the problem's prompt (so helper functions and imports of the
prompt stay available, and the model's definition wins); otherwise it is taken as the body of
the prompt's function. MBPP: the completion, the problem's setup code (which builds objects
from the solution's classes), then the asserts.
Programs run only in `sandbox_image` (never `exec` in this process); pass means exit code 0.
Sandbox infrastructure errors are retried and, if they persist, reported as such.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sft.eval.problems import Problem
from sft.template import DEFAULT_SYSTEM, SECTION_STOP, build_prompt

RESPONSE_PREFIX = "```python\n"
STOP_SEQUENCES: tuple[str, ...] = ("```", SECTION_STOP)


def generation_prompt(problem: Problem, system: str | None = None, bos: str = "") -> str:
    """The prompt text; `bos` is the BOS text for a tokenizer whose encoder does not add it."""
    return bos + build_prompt(problem.instruction, system or DEFAULT_SYSTEM) + RESPONSE_PREFIX


def extract_code(completion: str) -> str:
    """The code part of a completion: everything before a closing fence or a new section."""
    end = len(completion)
    for stop in STOP_SEQUENCES:
        index = completion.find(stop)
        if index != -1:
            end = min(end, index)
    return completion[:end].rstrip() + "\n"


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^def\s+{re.escape(name)}\s*\(", code, flags=re.MULTILINE) is not None


def build_program(problem: Problem, completion: str) -> str:
    code = extract_code(completion)
    if problem.benchmark == "humaneval":
        if _defines(code, problem.entry_point):
            solution = problem.code_prompt + "\n" + code
        else:
            solution = problem.code_prompt + code
        return f"{solution}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"
    return f"{code}\n{problem.test_setup}\n\n{problem.test}\n"


@dataclass(frozen=True)
class ProblemResult:
    task_id: str
    passed: bool
    status: str
    completion: str
    duration_s: float = 0.0
    stderr_tail: str = ""


@dataclass(frozen=True)
class Score:
    benchmark: str
    problems: tuple[ProblemResult, ...]

    @property
    def n(self) -> int:
        return len(self.problems)

    @property
    def passed(self) -> int:
        return sum(p.passed for p in self.problems)

    @property
    def pass_at_1(self) -> float:
        return self.passed / self.n if self.n else 0.0

    @property
    def statuses(self) -> dict[str, int]:
        return dict(sorted(Counter(p.status for p in self.problems).items()))


def run_programs(programs: Sequence[str], pool: Any, retries: int = 2) -> list[Any]:
    """Runs programs in a `sandbox_image.SandboxPool`, retrying infrastructure errors."""
    results = list(pool.run_many(list(programs)))
    for _ in range(retries):
        # Infrastructure outcomes (the sandbox failed, the machine starved the program) say
        # nothing about the code: run them again.
        again = [i for i, r in enumerate(results) if not r.is_verdict]
        if not again:
            break
        for index, result in zip(again, pool.run_many([programs[i] for i in again]), strict=True):
            results[index] = result
    return results


def score(
    problems: Sequence[Problem], completions: Sequence[str], pool: Any, retries: int = 2
) -> Score:
    """Executes every problem's program for its completion and scores pass@1 (greedy)."""
    if len(problems) != len(completions):
        raise ValueError("one completion per problem is needed")
    if not problems:
        raise ValueError("no problems to score")
    benchmark = problems[0].benchmark
    programs = [build_program(p, c) for p, c in zip(problems, completions, strict=True)]
    results = run_programs(programs, pool, retries)
    rows = tuple(
        ProblemResult(
            task_id=problem.task_id,
            passed=bool(result.passed),
            status=result.status,
            completion=completion,
            duration_s=float(result.duration_s),
            stderr_tail=(result.stderr or "")[-500:],
        )
        for problem, completion, result in zip(problems, completions, results, strict=True)
    )
    return Score(benchmark, rows)
