"""Execution statistics and preference pairs on planted executions (FnApiRunner)."""

from __future__ import annotations

import pathlib

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.core.sample_quality import tiebreak
from beam_pipeline.records import Execution
from beam_pipeline.report import build_stages, check, load_counts
from beam_pipeline.stages.common import Accounting
from beam_pipeline.stages.preference import PairPreferences
from beam_pipeline.stages.select import SelectSamples
from beam_pipeline.stages.stats import AttachExecutionStats
from sft.template import build_prompt
from tests.helpers import make_execution

ASSERTION = 'Traceback (most recent call last):\n  File "main.py", line 4\nAssertionError\n'
SYNTAX = '  File "main.py", line 1\n    def f(:\nSyntaxError: invalid syntax\n'


def _execution(
    instruction_id: str, index: int, status: str, stderr: str = "", body: str = ""
) -> Execution:
    name = f"f_{instruction_id}"
    return make_execution(
        instruction_id,
        index,
        status,
        difficulty="medium",
        instruction=f"Write {name}.",
        response=f"```python\ndef {name}(x):\n    return {body or f'x + {index}'}\n```",
        tests=f"```python\nassert {name}(1) == 2\n```",
        stderr=stderr,
    )


def _planted() -> list[Execution]:
    return [
        # x: 3 of 4 pass -> easy; its failing sample fails an assertion
        *(_execution("x", k, "passed") for k in range(3)),
        _execution("x", 3, "failed", ASSERTION),
        # y: 1 of 3 -> medium; the assertion failure wins over the syntax error
        _execution("y", 0, "passed"),
        _execution("y", 1, "failed", SYNTAX),
        _execution("y", 2, "failed", ASSERTION),
        # z: 1 of 5 -> hard; only timeouts fail
        _execution("z", 0, "passed"),
        *(_execution("z", k, "timeout") for k in range(1, 5)),
        # w: everything passes: no preference pair
        *(_execution("w", k, "passed") for k in range(2)),
        # v: the failing sample's response is the chosen one (whitespace aside)
        _execution("v", 0, "passed", body="x + 1"),
        _execution("v", 1, "failed", ASSERTION, body="x +  1"),
    ]


def test_stats_and_preference_pairs(tmp_path: pathlib.Path) -> None:
    executions = _planted()
    status = {e.id: e.status for e in executions}
    accounting = Accounting()
    with TestPipeline(runner="FnApiRunner") as p:
        planted = p | beam.Create(executions)
        selected = planted | SelectSamples(accounting)
        with_stats = selected.main | AttachExecutionStats(planted, accounting)
        assert_that(
            with_stats.main
            | "Stats"
            >> beam.Map(
                lambda t: (
                    t[0].instruction_id,
                    t[0].num_samples,
                    t[0].num_passed,
                    round(t[0].pass_rate, 3),
                    t[0].estimated_difficulty,
                    t[0].difficulty,
                )
            ),
            equal_to(
                [
                    ("x", 4, 3, 0.75, "easy", "medium"),
                    ("y", 3, 1, 0.333, "medium", "medium"),
                    ("z", 5, 1, 0.2, "hard", "medium"),
                    ("w", 2, 2, 1.0, "easy", "medium"),
                    ("v", 2, 1, 0.5, "medium", "medium"),
                ]
            ),
            label="Stats",
        )
        prefs = with_stats.main | PairPreferences(accounting)
        assert_that(
            prefs.main
            | "Pairs"
            >> beam.Map(
                lambda r: (
                    r.instruction_id,
                    r.rejected_id,
                    r.rejected_reason,
                    status[r.chosen_id],
                    status[r.rejected_id],
                    r.prompt == build_prompt(r.instruction),
                    r.chosen != r.rejected,
                )
            ),
            equal_to(
                [
                    ("x", "x.3", "assertion_failed", "passed", "failed", True, True),
                    ("y", "y.2", "assertion_failed", "passed", "failed", True, True),
                    ("z", pref_z(), "timeout", "passed", "timeout", True, True),
                ]
            ),
            label="OnlyWhereAFailingSampleExists",
        )
        assert_that(
            prefs.rejected | "Why" >> beam.Map(lambda r: (r.id.split(".")[0], r.reason)),
            equal_to([("w", "no_failing_sample"), ("v", "failing_same_as_chosen")]),
            label="NoPair",
        )
        accounting.write(p, str(tmp_path / "_run" / "counts"))
    stages = build_stages(load_counts(str(tmp_path)))
    assert check(stages) == []
    assert stages["preference.pair"]["in"] == 5 and stages["preference.pair"]["out"] == 3
    assert stages["final.stats"]["by_group"]["difficulty/medium"] == {
        "easy": 2,
        "medium": 2,
        "hard": 1,
    }


def pref_z() -> str:
    """z's rejected side: the timeout with the smallest id hash (the stated tie-break)."""
    return min((f"z.{k}" for k in range(1, 5)), key=tiebreak)
