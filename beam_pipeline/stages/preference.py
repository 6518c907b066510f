"""PairPreferences: (FinalPair, InstructionStats) -> PreferencePair (`OUT/preference/`).

Input: the final pairs (selected, deduplicated and decontaminated) with their instruction's
execution summary (stages/stats.py). A pair whose instruction also has a failing sample gives
one PreferencePair: `chosen` is the selected response, `rejected` the failing sample's response
(`core.sample_quality`: an assertion failure first, then other exceptions, timeouts and
crashes, then syntax errors, then malformed responses; ties by a hash of the id; never a
response equal to the chosen one, whitespace aside). `prompt` is the instruction in the
training template, so the rows load straight into TRL's DPO trainer (docs/preference.md).

Rejections (`rejected/preference/`, one per final pair without a preference pair, the payload
is only the pair's id): `no_failing_sample` (every executed sample passed),
`failing_same_as_chosen` (each failing sample's response equals the chosen one). The pairs are
then decontaminated like the final dataset (the rejected response is new text): reason
`contaminated`, stage `preference.decontaminate`.
Accounting: `preference.pair` in/out/rejected/errors, `preference.pair/by/reason/<reason>`
(the rejected sides' failure reasons).
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum

import apache_beam as beam

from beam_pipeline.core.sample_quality import InstructionStats
from beam_pipeline.records import FinalPair, PreferencePair, Rejection
from beam_pipeline.stages.common import Accounting, StageFn, StageOutputs, apply_stage_fn
from sft.template import build_prompt

STAGE = "preference"


class PreferenceReason(StrEnum):
    NO_FAILING_SAMPLE = "no_failing_sample"
    SAME_AS_CHOSEN = "failing_same_as_chosen"


def preference_pair(pair: FinalPair, stats: InstructionStats) -> PreferencePair | PreferenceReason:
    """The preference pair of a final pair, or why there is none."""
    if not stats.failing:
        return PreferenceReason.NO_FAILING_SAMPLE
    rejected = stats.rejected_for(pair.response)
    if rejected is None:
        return PreferenceReason.SAME_AS_CHOSEN
    return PreferencePair(
        id=pair.id,
        instruction_id=pair.instruction_id,
        instruction=pair.instruction,
        prompt=build_prompt(pair.instruction),
        chosen=pair.response,
        rejected=rejected.response,
        chosen_id=pair.id,
        rejected_id=rejected.sample_id,
        rejected_status=rejected.status,
        rejected_reason=rejected.reason,
        rejected_detail=rejected.detail,
        num_samples=stats.num_samples,
        num_passed=stats.num_passed,
    )


class PairPreferenceFn(StageFn):
    def handle(
        self, element: tuple[FinalPair, InstructionStats]
    ) -> Iterator[PreferencePair | Rejection]:
        pair, stats = element
        made = preference_pair(pair, stats)
        if isinstance(made, PreferenceReason):
            yield Rejection.of(STAGE, made, "", record_id=pair.id)
        else:
            yield made


class PairPreferences(beam.PTransform):
    def __init__(self, accounting: Accounting | None = None) -> None:
        super().__init__()
        self.accounting = accounting

    def expand(self, pairs: beam.PCollection) -> StageOutputs:
        outputs = apply_stage_fn(pairs, "PairPreference", PairPreferenceFn(STAGE))
        if self.accounting is not None:
            name = f"{STAGE}.pair"
            self.accounting.count_stage(name, pairs, outputs)
            self.accounting.count_by(outputs.main, name, lambda p: f"reason/{p.rejected_reason}")
        return outputs
