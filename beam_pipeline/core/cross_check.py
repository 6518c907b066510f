"""Cross-checking an instruction's samples against each other's tests, pure functions.

Every sample that is a selection candidate (it passed its own tests and the format check) is
run against the tests of each of its instruction's other executed samples, passing or not: a
failing sample's tests can be right where its code is wrong. For n samples that all pass, that
is n x (n - 1) programs beside the n the execution stage ran, n x n in all. A sibling whose tests
hold no Python block has no suite and is left out. `agreement` is the share of sibling suites a
response passes: the idea of CodeT's dual execution agreement, with the model's own tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from beam_pipeline.core.program import build_program
from beam_pipeline.core.selection import python_blocks


@dataclasses.dataclass(frozen=True)
class Sibling:
    """What cross-checking needs of one executed sample."""

    sample_id: str
    response: str
    tests: str
    candidate: bool  # passed its own tests and the format check


@dataclasses.dataclass(frozen=True)
class Check:
    sample_id: str  # whose response runs
    suite_id: str  # whose tests it runs against
    source: str


def plan_checks(siblings: Iterable[Sibling]) -> Iterator[Check]:
    """The programs that cross-check one instruction's samples, in a stable order."""
    ordered = sorted(siblings, key=lambda s: s.sample_id)
    suites = [s for s in ordered if python_blocks(s.tests)]
    for sample in ordered:
        if not sample.candidate:
            continue
        for suite in suites:
            if suite.sample_id == sample.sample_id:
                continue  # its own tests: the execution stage's verdict
            program = build_program(sample.response, suite.tests)
            yield Check(sample.sample_id, suite.sample_id, program.source)


def agreement(passed: int, suites: int) -> float | None:
    """The share of sibling suites passed; None without any sibling suite."""
    return passed / suites if suites else None


def agreement_bucket(value: float | None) -> str:
    """A histogram bin in tenths ("0.0" ... "1.0"; "1.0" only for passing every suite), or
    "none"."""
    if value is None:
        return "none"
    return f"{min(int(value * 10 + 1e-9), 10) / 10:.1f}"
