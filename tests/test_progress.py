"""Progress lines: throttling, content, configuration and the worker log filter."""

from __future__ import annotations

import logging

import pytest

from beam_pipeline.progress import (
    DEFAULT_INTERVAL_S,
    Progress,
    WorkerProgressFilter,
    interval_from_env,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_are_throttled_and_carry_counts_and_rates() -> None:
    clock, lines = Clock(), []
    progress = Progress(10.0, lines.append, clock)
    for _ in range(5):
        progress.note("concepts.ExtractConcepts", "out")
        clock.now += 1.0
    progress.note("concepts.ExtractConcepts", "rejected")
    assert lines == []  # 5 s since start: under the interval
    clock.now += 5.0
    progress.note("execute.RunPrograms", "errors", 2)
    assert len(lines) == 1
    line = lines[0]
    assert "after 10 s" in line
    # 5 outputs between t=100 and the rejection at t=105: 1.0 per second while active
    assert "concepts.ExtractConcepts out=5 rejected=1 errors=0 (1.0/s)" in line
    assert "execute.RunPrograms out=0 rejected=0 errors=2 (0.0/s)" in line
    progress.note("execute.RunPrograms", "out")
    assert len(lines) == 1  # the next line waits for the next interval
    clock.now += 10.0
    progress.note("execute.RunPrograms", "out")
    assert len(lines) == 2
    # only the step that moved since the previous line
    assert "execute.RunPrograms out=2 rejected=0 errors=2" in lines[1]
    assert "concepts" not in lines[1]
    assert progress.line().endswith("no new records")


def test_interval_zero_turns_lines_off() -> None:
    lines: list[str] = []
    progress = Progress(0.0, lines.append)
    for _ in range(100):
        progress.note("seeds.FilterSeed", "out")
    assert lines == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", DEFAULT_INTERVAL_S), ("5", 5.0), ("0", 0.0), ("-1", DEFAULT_INTERVAL_S), ("x", 30.0)],
)
def test_interval_from_env(raw: str, expected: float) -> None:
    assert interval_from_env({"SELFCODEALIGN_PROGRESS_S": raw}) == expected


def _record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("x", level, __file__, 1, "Worker: %s", (message,), None)


def test_worker_filter_passes_progress_lines_bare_and_keeps_warnings() -> None:
    keep = WorkerProgressFilter()
    line = "progress pid 7 after 3 s: seeds.FilterSeed out=4 rejected=1 errors=0 (1.3/s)"
    record = _record(logging.INFO, f'severity: INFO timestamp {{ seconds: 1 }} message: "{line}" ')
    assert keep.filter(record)
    assert record.getMessage() == line
    assert not keep.filter(_record(logging.INFO, 'severity: INFO message: "Creating state cache"'))
    warning = _record(logging.WARNING, 'severity: WARN message: "disk \\"/tmp\\" full" x: 1')
    assert keep.filter(warning)
    assert warning.getMessage() == 'worker: disk \\"/tmp\\" full'
    noise = 'severity: WARN message: "No semi_persistent_directory found:  User registered"'
    assert not keep.filter(_record(logging.WARNING, noise))
    other = _record(logging.ERROR, "not a worker entry")
    assert keep.filter(other) and other.getMessage() == "Worker: not a worker entry"
