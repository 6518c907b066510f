"""AttachExecutionStats: FinalPair -> FinalPair with its instruction's execution statistics.

Input: the final pairs, and (given to the constructor) the executed samples they were selected
from. `SummarizeInstructions` combines the executions per instruction id
(`core.sample_quality.InstructionStats`: samples that ran, samples that passed, the two best
failing samples with different responses) with a CombinePerKey, so no worker holds more than
one instruction's summary; `JoinStats` brings each summary to its pair (a CoGroupByKey by
instruction id). The pair gets `num_samples`, `num_passed`, `pass_rate` and
`estimated_difficulty`.

Output (main): `(FinalPair, InstructionStats)`, one per pair; the preference stage reads the
failing samples from the summary. Dead letters: a pair whose instruction has no executed
sample (only possible when final/ is fed records from another run).
Accounting: `final.stats` in/out/errors; `final.stats/by/difficulty/<sampled>/<estimated>`,
and with `--cross_check` `final.stats/by/agreement/<tenth>` (the agreement histogram of the
final pairs, "none" for a pair without sibling suites).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import apache_beam as beam

from beam_pipeline.core import sample_quality as core
from beam_pipeline.core.cross_check import agreement_bucket
from beam_pipeline.records import DeadLetter, Execution, FinalPair
from beam_pipeline.stages.common import Accounting, StageFn, StageOutputs, apply_stage_fn

STAGE = "final.stats"


class InstructionStatsFn(beam.CombineFn):
    """Executions of one instruction -> its `InstructionStats`."""

    def create_accumulator(self) -> core.InstructionStats:
        return core.InstructionStats()

    def add_input(self, acc: core.InstructionStats, sample: Execution) -> core.InstructionStats:
        return acc.merge(
            core.sample_stats(
                sample.id, sample.status, sample.stderr, sample.response, sample.tests
            )
        )

    def merge_accumulators(self, accs: Iterable[core.InstructionStats]) -> core.InstructionStats:
        return core.merge_all(accs)

    def extract_output(self, acc: core.InstructionStats) -> core.InstructionStats:
        return acc


def with_stats(pair: FinalPair, stats: core.InstructionStats) -> FinalPair:
    return dataclasses.replace(
        pair,
        num_samples=stats.num_samples,
        num_passed=stats.num_passed,
        pass_rate=stats.pass_rate,
        estimated_difficulty=stats.estimated_difficulty,
    )


class JoinStatsFn(StageFn):
    """(instruction id, {pairs, stats}) -> (FinalPair with stats, stats) per pair."""

    def handle(
        self, joined: tuple[str, dict[str, Iterable]]
    ) -> Iterator[tuple[FinalPair, core.InstructionStats] | DeadLetter]:
        pairs = sorted(joined[1]["pairs"], key=lambda p: p.id)
        summaries = list(joined[1]["stats"])
        for pair in pairs:
            if len(summaries) != 1:  # one letter per pair: each pair leaves exactly once
                error = f"instruction {joined[0]!r} has {len(summaries)} execution summaries"
                yield DeadLetter.of(STAGE, pair, error)
            else:
                yield with_stats(pair, summaries[0]), summaries[0]


class AttachExecutionStats(beam.PTransform):
    def __init__(
        self,
        executions: beam.PCollection,
        accounting: Accounting | None = None,
        cross_checked: bool = False,
    ) -> None:
        super().__init__()
        self.executions = executions
        self.accounting = accounting
        self.cross_checked = cross_checked

    def expand(self, pairs: beam.PCollection) -> StageOutputs:
        stats = (
            self.executions
            | "ByInstruction" >> beam.Map(lambda e: (e.instruction_id, e))
            | "SummarizeInstructions" >> beam.CombinePerKey(InstructionStatsFn())
        )
        joined = {
            "pairs": pairs | "PairsByInstruction" >> beam.Map(lambda p: (p.instruction_id, p)),
            "stats": stats,
        } | "JoinStats" >> beam.CoGroupByKey()
        outputs = apply_stage_fn(joined, "AttachStats", JoinStatsFn(STAGE))
        if self.accounting is not None:
            self.accounting.count_stage(STAGE, pairs, outputs)
            self.accounting.count_by(
                outputs.main,
                STAGE,
                lambda t: f"difficulty/{t[0].difficulty or 'unknown'}/{t[0].estimated_difficulty}",
            )
            if self.cross_checked:
                self.accounting.count_by(
                    outputs.main,
                    f"{STAGE}.agreement",
                    lambda t: f"agreement/{agreement_bucket(t[0].agreement)}",
                )
        return outputs
