"""What an instruction's executed samples say about it, pure functions.

- Execution statistics: of the instruction's executed samples (the parsed samples that ran in
  the sandbox and got a verdict), how many passed; the pass rate; a difficulty estimate from
  the pass rate (`estimate_difficulty`) to set beside the difficulty the instruction was drawn
  with. Samples dropped before execution (truncated, unparseable, no code) have no verdict and
  do not count; a run restarted at the final stage sees exactly the same samples.
- Failing samples for preference pairs: every executed sample that did not pass gets a
  `FailureReason` from its status and stderr, and a tier; the rejected side of a pair is the
  failing sample with the lowest tier, ties broken by a hash of its id. A failure of the tests
  (an assertion, then any other exception) is the most useful contrast with a passing response;
  a program that does not even parse, or a malformed response, the least.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable
from enum import StrEnum

from beam_pipeline.core.selection import format_problem, whitespace_free

# Pass rate -> difficulty estimate: most samples pass -> easy, few pass -> hard.
EASY_PASS_RATE = 2 / 3
MEDIUM_PASS_RATE = 1 / 3


def estimate_difficulty(pass_rate: float) -> str:
    """easy when at least 2/3 of the samples passed, medium from 1/3, hard below."""
    if pass_rate >= EASY_PASS_RATE:
        return "easy"
    if pass_rate >= MEDIUM_PASS_RATE:
        return "medium"
    return "hard"


class FailureReason(StrEnum):
    ASSERTION = "assertion_failed"
    EXCEPTION = "exception"
    EXIT_CODE = "nonzero_exit"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    CRASHED = "crashed"
    SYNTAX = "syntax_error"
    FORMAT = "format"


# Lower is preferred as the rejected side of a pair.
TIERS = {
    FailureReason.ASSERTION: 0,
    FailureReason.EXCEPTION: 1,
    FailureReason.EXIT_CODE: 1,
    FailureReason.TIMEOUT: 2,
    FailureReason.MEMORY: 2,
    FailureReason.CRASHED: 2,
    FailureReason.SYNTAX: 3,
    FailureReason.FORMAT: 4,
}
SYNTAX_ERRORS = frozenset({"SyntaxError", "IndentationError", "TabError"})
_EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failure))(?::|$)"
)
_UNITTEST_SUMMARY = re.compile(r"^FAILED \((failures|errors)=")


def last_exception(stderr: str) -> str | None:
    """The name of the last exception a traceback reports (unittest's summary counts too:
    failures are assertions), or None."""
    for line in reversed(stderr.splitlines()):
        line = line.strip()
        if match := _EXCEPTION_LINE.match(line):
            return match.group(1)
        if match := _UNITTEST_SUMMARY.match(line):
            return "AssertionError" if match.group(1) == "failures" else "Exception"
    return None


def failure_reason(
    status: str, stderr: str, response: str, tests: str
) -> tuple[FailureReason, str]:
    """Why an executed sample failed, with a detail (exception name, format problem, ...).
    A malformed response is a format failure whatever its program did."""
    problem = format_problem(response, tests)
    if problem is not None:
        return FailureReason.FORMAT, problem[0].value
    if status in (FailureReason.TIMEOUT, FailureReason.MEMORY, FailureReason.CRASHED):
        return FailureReason(status), ""
    name = last_exception(stderr)
    if name is None:
        return FailureReason.EXIT_CODE, ""
    if name in SYNTAX_ERRORS:
        return FailureReason.SYNTAX, name
    if name == "AssertionError":
        return FailureReason.ASSERTION, name
    return FailureReason.EXCEPTION, name


def tiebreak(sample_id: str) -> str:
    """A stable, id-derived order among failing samples of the same tier."""
    return hashlib.sha256(f"rejected:{sample_id}".encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True, order=True)
class FailingSample:
    """A failing sample, comparable: the smallest is the preferred rejected side."""

    tier: int
    order: str
    sample_id: str
    response: str = dataclasses.field(compare=False)
    status: str = dataclasses.field(compare=False)
    reason: str = dataclasses.field(compare=False)
    detail: str = dataclasses.field(compare=False, default="")

    @property
    def response_key(self) -> str:
        return whitespace_free(self.response)


def failing_sample(
    sample_id: str, status: str, stderr: str, response: str, tests: str
) -> FailingSample:
    reason, detail = failure_reason(status, stderr, response, tests)
    return FailingSample(
        TIERS[reason], tiebreak(sample_id), sample_id, response, status, reason, detail
    )


# Failing samples kept per instruction: the chosen response may equal the best one's (the same
# code with a sibling's wrong tests); the next distinct response then stands in.
KEEP_FAILING = 2


def best_failing(
    candidates: Iterable[FailingSample], limit: int = KEEP_FAILING
) -> tuple[FailingSample, ...]:
    """The `limit` best failing samples with pairwise different responses (whitespace aside)."""
    kept: list[FailingSample] = []
    for candidate in sorted(candidates):
        if all(candidate.response_key != k.response_key for k in kept):
            kept.append(candidate)
            if len(kept) == limit:
                break
    return tuple(kept)


@dataclasses.dataclass(frozen=True)
class InstructionStats:
    """The executed samples of one instruction: counts and the best failing samples."""

    num_samples: int = 0
    num_passed: int = 0
    failing: tuple[FailingSample, ...] = ()

    @property
    def pass_rate(self) -> float | None:
        return self.num_passed / self.num_samples if self.num_samples else None

    @property
    def estimated_difficulty(self) -> str:
        rate = self.pass_rate
        return "" if rate is None else estimate_difficulty(rate)

    def merge(self, other: InstructionStats) -> InstructionStats:
        return InstructionStats(
            self.num_samples + other.num_samples,
            self.num_passed + other.num_passed,
            best_failing(self.failing + other.failing),
        )

    def rejected_for(self, chosen_response: str) -> FailingSample | None:
        """The failing sample to pair with `chosen_response`: the best one whose response
        differs from it, or None."""
        chosen = whitespace_free(chosen_response)
        return next((f for f in self.failing if f.response_key != chosen), None)


def sample_stats(
    sample_id: str, status: str, stderr: str, response: str, tests: str
) -> InstructionStats:
    """The statistics of one executed sample, to be merged per instruction."""
    if status == "passed":
        return InstructionStats(1, 1)
    return InstructionStats(1, 0, (failing_sample(sample_id, status, stderr, response, tests),))


def merge_all(parts: Iterable[InstructionStats]) -> InstructionStats:
    total = InstructionStats()
    for part in parts:
        total = total.merge(part)
    return total
