"""SeedChain and FinalChain: the two stages made of several steps, each a composite.

SeedChain: SourceFile -> Seed. ExtractSeeds, then, each when configured, DecontaminateSeeds,
NearDedupSeeds, SampleSeeds and JudgeSeeds, every step on the previous step's seeds. Output: the
last step's seeds with every step's rejections and dead letters; counted as `seeds/out`.

FinalChain: Execution -> FinalOutputs(final, preference). CrossCheck (with --cross_check), then
SelectSamples, NearDedupFinal, TestsInInstruction, DecontaminateFinal (each when configured) and
ExecutionStats give the final pairs (`final/out`); PairPreferences and DecontaminatePreference
give the preference pairs (`preference/out`). Each step counts its own in/out/rejections.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import apache_beam as beam

from beam_pipeline.config import RunConfig
from beam_pipeline.core.selection import code_representation
from beam_pipeline.stages.common import Accounting, StageOutputs, merge_outputs
from beam_pipeline.stages.cross_check import CrossCheck
from beam_pipeline.stages.decontaminate import Decontaminate
from beam_pipeline.stages.dedup import NearDedup
from beam_pipeline.stages.judge import JudgeSeeds
from beam_pipeline.stages.preference import PairPreferences
from beam_pipeline.stages.seeds import ExtractSeeds, SampleSeeds
from beam_pipeline.stages.select import SelectSamples, ShowTestsInInstruction
from beam_pipeline.stages.stats import AttachExecutionStats


class Chain:
    """Steps applied one after another, each to the previous step's main output."""

    def __init__(self, first: StageOutputs) -> None:
        self.steps = [first]

    @property
    def main(self) -> beam.PCollection:
        return self.steps[-1].main

    def then(self, label: str, transform: beam.PTransform) -> StageOutputs:
        return self.add(self.main | label >> transform)

    def add(self, outputs: StageOutputs) -> StageOutputs:
        """A step built by hand from the chain's main output."""
        self.steps.append(outputs)
        return outputs

    def merged(self, label: str, *side: StageOutputs) -> StageOutputs:
        """The last main output with the rejections and dead letters of every step (and of
        `side` steps that fed the chain without being part of it)."""
        return merge_outputs(label, *side, *self.steps)


def instruction_and_response(record: Any) -> str:
    """Method.md §4: the benchmark strings are searched in instruction + response."""
    return f"{record.instruction}\n{record.response}"


def preference_texts(record: Any) -> str:
    """What the final dataset is searched in (method.md §4), plus the rejected response."""
    return f"{record.instruction}\n{record.chosen}\n{record.rejected}"


def code_representation_of(record: Any) -> str:
    return code_representation(record.response)


class SeedChain(beam.PTransform):
    """Source files -> seeds; `items` are the loaded benchmark items (none: no decontamination)."""

    def __init__(self, config: RunConfig, accounting: Accounting, items: list[Any]) -> None:
        super().__init__()
        self.config = config
        self.accounting = accounting
        self.items = items

    def expand(self, files: beam.PCollection) -> StageOutputs:
        config, acct, seeds = self.config, self.accounting, self.config.seeds
        chain = Chain(files | "ExtractSeeds" >> ExtractSeeds(seeds, acct))
        if self.items:
            chain.then(
                "DecontaminateSeeds",
                Decontaminate(
                    "seeds.decontaminate",
                    "seed",
                    config.decontam,
                    items=self.items,
                    accounting=acct,
                ),
            )
        if seeds.dedup_threshold > 0:
            chain.then(
                "NearDedupSeeds",
                NearDedup(
                    "seeds.near_dedup",
                    "seed",
                    seeds.dedup_threshold,
                    max_rounds=config.dedup_max_rounds,
                    accounting=acct,
                ),
            )
        if seeds.max_seeds:
            chain.then("SampleSeeds", SampleSeeds(seeds.max_seeds, acct))
        if seeds.judge:
            unjudged = chain.main
            judged = chain.then("JudgeSeeds", JudgeSeeds(config.generation))
            acct.count_stage("seeds.judge", unjudged, judged)
        outputs = chain.merged("AllSeedSteps")
        acct.count(outputs.main, "seeds", "out")
        return outputs


class FinalOutputs(NamedTuple):
    final: StageOutputs
    preference: StageOutputs


class FinalChain(beam.PTransform):
    """Executions -> final pairs and preference pairs; `items` as for SeedChain."""

    def __init__(self, config: RunConfig, accounting: Accounting, items: list[Any]) -> None:
        super().__init__()
        self.config = config
        self.accounting = accounting
        self.items = items

    def expand(self, executions: beam.PCollection) -> FinalOutputs:
        config, acct, final = self.config, self.accounting, self.config.final
        cross = None
        if final.cross_check:
            cross = executions | "CrossCheck" >> CrossCheck(
                config.execution.sandbox_config(),
                config.execution.workers,
                config.execution.cache_dir,
                accounting=acct,
            )
        chain = Chain(
            executions
            | "SelectSamples"
            >> SelectSamples(acct, cross.main if cross else None, select_by=final.select_by)
        )
        if final.dedup_threshold > 0:
            chain.then(
                "NearDedupFinal",
                NearDedup(
                    "final.near_dedup",
                    ["instruction", "response", code_representation_of],
                    final.dedup_threshold,
                    final.num_perm,
                    max_rounds=config.dedup_max_rounds,
                    accounting=acct,
                ),
            )
        if final.tests_in_instruction > 0:
            # After the dedup passes (which compare the method's instructions) and before
            # decontamination (which must see the text that is written).
            chain.then(
                "TestsInInstruction", ShowTestsInInstruction(final.tests_in_instruction, acct)
            )
        if self.items:
            chain.then(
                "DecontaminateFinal",
                Decontaminate(
                    "final.decontaminate",
                    instruction_and_response,
                    config.decontam,
                    items=self.items,
                    accounting=acct,
                ),
            )
        # Every final pair with its instruction's execution statistics (and failing samples,
        # which the preference pairs take their rejected side from).
        with_stats = chain.main | "ExecutionStats" >> AttachExecutionStats(
            executions, acct, cross_checked=cross is not None
        )
        pairs = with_stats.main | "FinalPairs" >> beam.Map(lambda pair_stats: pair_stats[0])
        chain.add(StageOutputs(pairs, with_stats.rejected, with_stats.errors))
        final_outputs = chain.merged("AllFinalSteps", *([cross] if cross is not None else []))
        acct.count(final_outputs.main, "final", "out")

        preference = Chain(with_stats.main | "PairPreferences" >> PairPreferences(acct))
        if self.items:
            preference.then(
                "DecontaminatePreference",
                Decontaminate(
                    "preference.decontaminate",
                    preference_texts,
                    config.decontam,
                    items=self.items,
                    accounting=acct,
                ),
            )
        preference_outputs = preference.merged("AllPreferenceSteps")
        acct.count(preference_outputs.main, "preference", "out")
        return FinalOutputs(final_outputs, preference_outputs)
