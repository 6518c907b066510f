"""ReadSources: input patterns -> SourceFile records.

Input: the `--input` patterns (parquet shards on local disk, gs://, hf://; or directories of
.py files). Output: one SourceFile per row / file, in parallel across files, row groups and
row ranges of large row groups (`stack_io.ReadSettings`), each task streamed.
Before the graph is built the launcher reads one footer (`stack_io.preflight`): an input that
matches nothing or cannot be read stops the launch with the reason.
Errors: a pattern that matches nothing, an unreadable shard or a shard without a `content`
column becomes a DeadLetter naming the file; a task that fails part-way after its retries
keeps the rows it read and dead-letters the rest, naming the row range. The run goes on,
unless no file at all could be read: then it fails (it must not succeed with no input).
Counts: `read/files`, `read/tasks`, `read/out` (files), `read/errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.options.pipeline_options import TestOptions

from beam_pipeline import stack_io
from beam_pipeline.records import DeadLetter
from beam_pipeline.stages.common import Accounting, StageFn, StageOutputs, apply_stage_fn

STAGE = "read"
log = logging.getLogger(__name__)


class _ReadFn(StageFn):
    def __init__(self, settings: stack_io.ReadSettings) -> None:
        super().__init__(STAGE)
        self.settings = settings

    def setup(self) -> None:
        self._token = self.settings.token()  # a secret is fetched once per process


class ExpandPatternFn(_ReadFn):
    """Pattern -> files; an empty match is an error that names the pattern."""

    def handle(self, pattern: str) -> Iterator[str | DeadLetter]:
        paths = stack_io.expand_pattern(pattern, self._token, self.settings)
        if not paths:
            yield DeadLetter.of(self.stage, pattern, f"no input matches {pattern!r}", pattern)
        yield from paths


class PlanTasksFn(_ReadFn):
    """File -> read tasks (row groups, row ranges of large ones); reads only the footer."""

    def handle(self, path: str) -> Iterator[stack_io.ReadTask]:
        yield from stack_io.tasks_for_file(path, self.settings, self._token)


class ReadTaskFn(_ReadFn):
    """Read task -> SourceFile records, streamed (a task is never held whole). A task that
    fails part-way keeps what it read; the rest of its rows become one dead letter."""

    def process(self, task: stack_io.ReadTask) -> Iterator[object]:
        next_row = task.row_start
        try:
            for source in stack_io.read_task(task, self.settings, self._token):
                next_row += 1
                yield from self.route((source,))
        except Exception as exc:
            rest = task.rest(next_row) if task.kind == "parquet" else task
            yield from self.route([DeadLetter.of(self.stage, rest.label, exc, rest.label)])


def fail_if_nothing_read(_: object, files_read: int, first_errors: list[DeadLetter]) -> None:
    """A run whose every input failed (no token on the workers, a wrong path) must fail."""
    if files_read == 0 and first_errors:
        raise stack_io.InputError(
            "no input file could be read; first errors: "
            + " | ".join(f"{e.id}: {e.error}" for e in first_errors)
        )


class ReadSources(beam.PTransform):
    def __init__(
        self,
        patterns: list[str],
        accounting: Accounting | None = None,
        settings: stack_io.ReadSettings | None = None,
    ) -> None:
        super().__init__()
        self.patterns = list(patterns)
        self.accounting = accounting
        self.settings = settings

    def expand(self, pbegin: beam.pvalue.PBegin) -> StageOutputs:
        options = pbegin.pipeline.options
        settings = self.settings
        if settings is None:
            from beam_pipeline.options import SelfCodeAlignOptions

            settings = options.view_as(SelfCodeAlignOptions).read_settings()
        if options.view_as(TestOptions).dry_run:
            log.warning("dry run: the input is not opened")
        else:
            first = stack_io.preflight(self.patterns, settings)
            log.info("input check: %s opens", first)
        patterns = pbegin | "Patterns" >> beam.Create(self.patterns)
        files = apply_stage_fn(patterns, "ExpandPatterns", ExpandPatternFn(settings))
        tasks = apply_stage_fn(
            files.main | "SpreadFiles" >> beam.Reshuffle(), "PlanTasks", PlanTasksFn(settings)
        )
        spread = tasks.main | "SpreadTasks" >> beam.Reshuffle()
        read = apply_stage_fn(spread, "ReadTasks", ReadTaskFn(settings))
        errors = (files.errors, tasks.errors, read.errors) | "ReadErrors" >> beam.Flatten()
        files_read = read.main | "CountFilesRead" >> beam.combiners.Count.Globally()
        first_errors = errors | "FirstErrors" >> beam.combiners.Sample.FixedSizeGlobally(3)
        _ = (
            pbegin
            | "InputCheck" >> beam.Create([None])
            | "FailIfNothingRead"
            >> beam.Map(
                fail_if_nothing_read,
                beam.pvalue.AsSingleton(files_read),
                beam.pvalue.AsSingleton(first_errors),
            )
        )
        if self.accounting is not None:
            self.accounting.count(files.main, STAGE, "files")
            self.accounting.count(spread, STAGE, "tasks")
            self.accounting.count(read.main, STAGE, "out")
            self.accounting.count(errors, STAGE, "errors")
        return StageOutputs(read.main, read.rejected, errors)
