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
verdict, errors = dead letters (`sandbox_error` after the pool's retries: the sample's agreement
is then over the suites that ran); `final.cross_check/passed` counts passing programs.
Metrics: final_cross_check_cache_hit, final_cross_check_cache_miss, final_cross_check_cache_error.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_pipeline.core import cross_check as core
from beam_pipeline.core.selection import candidate_problem
from beam_pipeline.records import CrossCheckProgram, DeadLetter, Execution
from beam_pipeline.stages.common import (
    METRICS_NAMESPACE,
    Accounting,
    StageFn,
    StageOutputs,
    apply_stage_fn,
    merge_outputs,
)
from beam_pipeline.stages.execute import DEFAULT_SANDBOX, SANDBOX_ERROR, RunProgramsFn
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


class RunChecksFn(RunProgramsFn):
    """A batch of programs -> ((instruction id, sample id), (passed, 1)) per program; the
    execution stage's pool and cache, this stage's counters."""

    def __init__(
        self, sandbox: SandboxConfig, workers: int | None = None, cache_dir: str | None = None
    ) -> None:
        super().__init__(sandbox, workers, cache_dir)
        StageFn.__init__(self, STAGE)
        self._hit = Metrics.counter(METRICS_NAMESPACE, f"{METRIC}_cache_hit")
        self._miss = Metrics.counter(METRICS_NAMESPACE, f"{METRIC}_cache_miss")
        self._cache_error = Metrics.counter(METRICS_NAMESPACE, f"{METRIC}_cache_error")

    def handle(  # type: ignore[override]
        self, batch: list[CrossCheckProgram]
    ) -> Iterator[tuple[tuple[str, str], tuple[int, int]] | DeadLetter]:
        try:
            results = self._results([program.source for program in batch])
        except Exception as exc:  # every program of the batch gets its letter
            for program in batch:
                yield _dead_letter(program, f"{type(exc).__name__}: {exc}")
            return
        for program in batch:
            result = results[program.source]
            if result.status == SANDBOX_ERROR:
                yield _dead_letter(program, result.stderr)
            else:
                key = (program.instruction_id, program.sample_id)
                yield key, (int(result.status == "passed"), 1)


def _dead_letter(program: CrossCheckProgram, message: str) -> DeadLetter:
    return DeadLetter.of(STAGE, program, f"sandbox_error: {message}")


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
