"""Execution statistics and the choice of a failing sample (core.sample_quality)."""

from __future__ import annotations

import itertools
import random

import pytest

from beam_pipeline.core.sample_quality import (
    FailureReason,
    InstructionStats,
    estimate_difficulty,
    failure_reason,
    last_exception,
    merge_all,
    sample_stats,
)

CODE = "```python\ndef f(x):\n    return x\n```"
TESTS = "```python\nassert f(1) == 1\n```"
TRACEBACK = 'Traceback (most recent call last):\n  File "/sandbox/work/main.py", line 3\n'


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        (1.0, "easy"),
        (2 / 3, "easy"),
        (0.66, "medium"),
        (1 / 3, "medium"),
        (0.33, "hard"),
        (0, "hard"),
    ],
)
def test_difficulty_from_pass_rate(rate: float, expected: str) -> None:
    assert estimate_difficulty(rate) == expected


@pytest.mark.parametrize(
    ("status", "stderr", "response", "expected"),
    [
        ("failed", TRACEBACK + "    assert f(2) == 3\nAssertionError\n", CODE, "assertion_failed"),
        ("failed", TRACEBACK + "NameError: name 'g' is not defined\n", CODE, "exception"),
        (
            "failed",
            TRACEBACK + "json.decoder.JSONDecodeError: Expecting value\n",
            CODE,
            "exception",
        ),
        (
            "failed",
            '  File "main.py", line 1\n    def f(:\nSyntaxError: invalid syntax\n',
            CODE,
            "syntax_error",
        ),
        ("failed", "IndentationError: unexpected indent\n", CODE, "syntax_error"),
        (
            "failed",
            "AssertionError: 3 != 4\n\n----\nRan 2 tests in 0.001s\n\nFAILED (failures=1)\n",
            CODE,
            "assertion_failed",
        ),
        ("failed", "", CODE, "nonzero_exit"),
        ("timeout", "", CODE, "timeout"),
        ("memory", "MemoryError\n", CODE, "memory"),
        ("crashed", "", CODE, "crashed"),
        # a malformed response is a format failure, whatever its program did
        ("failed", "AssertionError\n", "no code at all", "format"),
        ("failed", "AssertionError\n", CODE.replace("return x", "return x  # TODO"), "format"),
    ],
)
def test_failure_reason(status: str, stderr: str, response: str, expected: str) -> None:
    assert failure_reason(status, stderr, response, TESTS)[0].value == expected


def test_last_exception_reads_from_the_bottom() -> None:
    stderr = "ValueError: first\nDuring handling...\nKeyError: 'k'\n"
    assert last_exception(stderr) == "KeyError"
    assert last_exception("plain output\n") is None


def _failing(index: int, stderr: str, response: str = CODE) -> InstructionStats:
    return sample_stats(f"i.{index}", "failed", stderr, response, TESTS)


def test_an_assertion_failure_is_preferred_over_syntax_and_format() -> None:
    parts = [
        _failing(0, "SyntaxError: invalid syntax\n", CODE.replace("x", "y")),
        _failing(1, "AssertionError\n", CODE.replace("x", "z")),
        _failing(2, "AssertionError\n", "no code"),
        sample_stats("i.3", "passed", "", CODE, TESTS),
    ]
    for order in itertools.permutations(parts):
        stats = merge_all(order)
        assert (stats.num_samples, stats.num_passed) == (4, 1)
        rejected = stats.rejected_for(CODE)
        assert rejected is not None
        assert (rejected.sample_id, rejected.reason) == ("i.1", FailureReason.ASSERTION)


def test_the_rejected_side_never_equals_the_chosen_response() -> None:
    same = _failing(0, "AssertionError\n", CODE.replace("\n    ", "\n  "))  # whitespace only
    other = _failing(1, "NameError: x\n", CODE.replace("x", "w"))
    stats = merge_all([same, other])
    rejected = stats.rejected_for(CODE)
    assert rejected is not None and rejected.sample_id == "i.1"
    assert merge_all([same]).rejected_for(CODE) is None
    assert merge_all([sample_stats("i.0", "passed", "", CODE, TESTS)]).failing == ()


def test_merging_in_any_grouping_gives_the_same_summary() -> None:
    rng = random.Random(7)
    errors = ["AssertionError\n", "NameError: n\n", "SyntaxError: s\n", ""]
    parts = [
        sample_stats(
            f"i.{k}",
            rng.choice(["passed", "failed", "timeout"]),
            rng.choice(errors),
            CODE.replace("x", f"v{rng.randrange(4)}"),
            TESTS,
        )
        for k in range(30)
    ]
    whole = merge_all(parts)
    for _ in range(20):
        rng.shuffle(parts)
        cut = rng.randrange(1, len(parts))
        assert merge_all([merge_all(parts[:cut]), merge_all(parts[cut:])]) == whole
    assert whole.pass_rate == whole.num_passed / 30
