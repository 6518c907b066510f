"""CrossCheck: Execution -> per-sample agreement (`--cross_check`, see core/cross_check.py).

Input: the executed samples. They are grouped by instruction (one instruction's samples on a
worker at a time); `PlanChecks` turns each group into `CrossCheckProgram`s: every candidate
(passed its own tests and the format check) against every other sample's tests. The programs
are redistributed, batched and run like the execution stage's: the same per-process sandbox
pool and the same execution cache (a rerun, or a program the execution stage already ran,
costs nothing). `CountAgreement` sums each sample's verdicts.

Output (main): `(instruction id, (sample id, suites passed, suites))` for every candidate with at
least one sibling suite; selection joins it to the samples (a candidate without one has no
agreement). Accounting: `final.cross_check` in = programs planned, out = programs that got a
verdict, errors = dead letters (`sandbox_error`, or starved, after the pool's retries: the
sample's agreement is then over the suites that ran, never counting one that did not run as
failed); `final.cross_check/passed` counts passing programs.
Metrics: final_cross_check_<status>, final_cross_check_cache_hit, _cache_miss, _cache_error,
_duration_ms.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from beam_pipeline.core import cross_check as core
from beam_pipeline.core.selection import candidate_problem
from beam_pipeline.records import CrossCheckProgram, DeadLetter, Execution
from beam_pipeline.stages.common import (
    Accounting,
    StageFn,
    StageOutputs,
    apply_stage_fn,
    merge_outputs,
)
from beam_pipeline.stages.execute import DEFAULT_SANDBOX, SandboxBatchFn
from sandbox_image import SandboxConfig

STAGE = "final.cross_check"
METRIC = "final_cross_check"


def sibling(sample: Execution) -> core.Sibling:
    problem = candidate_problem(sample.status, sample.instruction, sample.response, sample.tests)
    return core.Sibling(sample.id, sample.response, sample.tests, problem is None)


class PlanChecksFn(StageFn):
    """(instruction id, its executed samples) -> the cross-check programs."""

    def handle(self, group: tuple[str, list[Execution]]) -> Iterator[CrossCheckProgram]:
        instruction_id, samples = group
        for check in core.plan_checks(sibling(s) for s in samples):
            yield CrossCheckProgram(
                id=CrossCheckProgram.make_id(check.sample_id, check.suite_id),
                sample_id=check.sample_id,
                instruction_id=instruction_id,
                suite_id=check.suite_id,
                source=check.source,
            )


class RunChecksFn(SandboxBatchFn):
    """A batch of programs -> ((instruction id, sample id), (passed, 1)) per program that got
    a verdict; the execution stage's pool and cache, this stage's counters."""

    def __init__(
        self, sandbox: SandboxConfig, workers: int | None = None, cache_dir: str | None = None
    ) -> None:
        super().__init__(STAGE, METRIC, sandbox, workers, cache_dir)

    def handle(
        self, batch: list[CrossCheckProgram]
    ) -> Iterator[tuple[tuple[str, str], tuple[int, int]] | DeadLetter]:
        for outcome in self.verdicts([(program, program.source) for program in batch]):
            if isinstance(outcome, DeadLetter):
                yield outcome
                continue
            program, _, result = outcome
            assert isinstance(program, CrossCheckProgram)
            yield (program.instruction_id, program.sample_id), (int(result.passed), 1)


def _sum_pairs(values: list[tuple[int, int]]) -> tuple[int, int]:
    passed = suites = 0
    for p, n in values:
        passed += p
        suites += n
    return passed, suites


class CrossCheck(beam.PTransform):
    """Execution -> (instruction id, (sample id, suites passed, suites)); see the module
    docstring."""

    def __init__(
        self,
        sandbox: SandboxConfig = DEFAULT_SANDBOX,
        workers: int | None = None,
        cache_dir: str | None = None,
        max_batch_size: int = 64,
        accounting: Accounting | None = None,
    ) -> None:
        super().__init__()
        self.sandbox = sandbox
        self.workers = workers
        self.cache_dir = cache_dir
        self.max_batch_size = max_batch_size
        self.accounting = accounting

    def expand(self, executions: beam.PCollection) -> StageOutputs:
        groups = (
            executions
            | "ByInstruction" >> beam.Map(lambda e: (e.instruction_id, e))
            | "GroupSiblings" >> beam.GroupByKey()
            | "AsLists" >> beam.MapTuple(lambda key, samples: (key, list(samples)))
        )
        planned = apply_stage_fn(groups, "PlanChecks", PlanChecksFn(STAGE))
        batches = (
            planned.main
            | "FanOut" >> beam.Reshuffle()
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.max_batch_size)
        )
        ran = apply_stage_fn(
            batches, "RunChecks", RunChecksFn(self.sandbox, self.workers, self.cache_dir)
        )
        agreements = (
            ran.main
            | "CountAgreement" >> beam.CombinePerKey(_sum_pairs)
            | "ByInstructionId"
            >> beam.MapTuple(lambda key, counts: (key[0], (key[1], counts[0], counts[1])))
        )
        if self.accounting is not None:
            self.accounting.count(planned.main, STAGE, "in")
            self.accounting.count(ran.main, STAGE, "out")
            self.accounting.count_rejections(ran.rejected, STAGE)
            self.accounting.count(ran.errors, STAGE, "errors")
            self.accounting.count(
                ran.main | "Passing" >> beam.Filter(lambda kv: kv[1][0] == 1), STAGE, "passed"
            )
            self.accounting.count(planned.errors, f"{STAGE}.plan", "errors")
        merged = merge_outputs("CrossCheck", planned, ran)
        return StageOutputs(agreements, merged.rejected, merged.errors)
