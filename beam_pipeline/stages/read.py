"""ReadSources: input patterns -> SourceFile records.

Input: the `--input` patterns (parquet shards on local disk, gs://, hf://; or directories of
.py files). Output: one SourceFile per row / file, in parallel across files and row groups.
Errors: a pattern that matches nothing, an unreadable shard or a shard without a `content`
column becomes a DeadLetter naming the file; the run goes on.
Counts: `read/tasks`, `read/out` (files), `read/errors`.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from beam_pipeline import stack_io
from beam_pipeline.records import DeadLetter
from beam_pipeline.stages.common import Accounting, StageFn, StageOutputs, apply_stage_fn

STAGE = "read"


class ExpandPatternFn(StageFn):
    """Pattern -> files; an empty match is an error that names the pattern."""

    def handle(self, pattern: str) -> Iterator[str | DeadLetter]:
        paths = stack_io.expand_pattern(pattern)
        if not paths:
            yield DeadLetter(id=pattern, stage=self.stage, error=f"no input matches {pattern!r}")
        yield from paths


class PlanTasksFn(StageFn):
    """File -> read tasks (one per parquet row group); reads only the parquet footer."""

    def handle(self, path: str) -> Iterator[stack_io.ReadTask]:
        yield from stack_io.tasks_for_file(path)


class ReadTaskFn(StageFn):
    """Read task -> SourceFile records. A failing task is dead-lettered whole (never half read)."""

    def handle(self, task: stack_io.ReadTask) -> Iterator[object]:
        yield from stack_io.read_task(task)


class ReadSources(beam.PTransform):
    def __init__(self, patterns: list[str], accounting: Accounting | None = None) -> None:
        super().__init__()
        self.patterns = list(patterns)
        self.accounting = accounting

    def expand(self, pbegin: beam.pvalue.PBegin) -> StageOutputs:
        patterns = pbegin | "Patterns" >> beam.Create(self.patterns)
        files = apply_stage_fn(patterns, "ExpandPatterns", ExpandPatternFn(STAGE))
        tasks = apply_stage_fn(
            files.main | "SpreadFiles" >> beam.Reshuffle(), "PlanTasks", PlanTasksFn(STAGE)
        )
        spread = tasks.main | "SpreadTasks" >> beam.Reshuffle()
        read = apply_stage_fn(spread, "ReadTasks", ReadTaskFn(STAGE))
        errors = (files.errors, tasks.errors, read.errors) | "ReadErrors" >> beam.Flatten()
        if self.accounting is not None:
            self.accounting.count(files.main, STAGE, "files")
            self.accounting.count(spread, STAGE, "tasks")
            self.accounting.count(read.main, STAGE, "out")
            self.accounting.count(errors, STAGE, "errors")
        return StageOutputs(read.main, read.rejected, errors)
