"""SelectSamples: Execution -> FinalPair (method.md §4, before near-dedup and decontamination).

Steps and their report keys (all rejections go to `rejected/final/`):
- `final.format`: failing samples (`not_passed`, detail: the execution status), malformed
  responses (no_code_block, no_test_block, tests_without_assert, tests_only_definitions,
  placeholder) and instructions over 200 words.
- `final.unique_instruction`, `final.unique_response`, `final.unique_names`: in the seeded
  shuffle order (rank = hash of 6666 and the sample id), the first sample per
  whitespace-normalised instruction, then per normalised response, then per set of defined
  names is kept; the others are rejected with the kept sample's id in `detail`.
Survivors become FinalPair records with their provenance.

`ShowTestsInInstruction` (optional, `--tests_in_instruction FRACTION`) appends up to three of a
pair's own top-level test asserts to its instruction for a hash-chosen fraction of the pairs;
`final.tests_in_instruction/by/outcome/<outcome>` counts shown, not chosen and no top-level assert.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator

import apache_beam as beam

from beam_pipeline.core import selection as core
from beam_pipeline.records import Execution, FinalPair, Rejection
from beam_pipeline.stages.common import (
    Accounting,
    StageFn,
    StageOutputs,
    apply_stage_fn,
    merge_outputs,
)

STAGE = "final"


class FormatCheckFn(StageFn):
    def handle(self, sample: Execution) -> Iterator[Execution | Rejection]:
        if sample.status != "passed":
            yield Rejection.of(STAGE, core.SelectReason.NOT_PASSED.value, sample, sample.status)
            return
        problem = core.format_problem(sample.response, sample.tests)
        if problem is not None:
            yield Rejection.of(STAGE, problem[0].value, sample, problem[1])
        elif core.instruction_too_long(sample.instruction):
            words = len(sample.instruction.split())
            yield Rejection.of(STAGE, core.SelectReason.LONG_INSTRUCTION.value, sample, str(words))
        else:
            yield sample


def instruction_key(sample: Execution) -> str:
    return core.normalise_ws(sample.instruction)


def response_key(sample: Execution) -> str:
    return core.normalise_ws(sample.response)


def names_key(sample: Execution) -> str:
    return "\x1f".join(core.defined_names(sample.response))


class KeepLowestRankFn(StageFn):
    """(key, samples) -> the sample first in the shuffle; the others rejected with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(STAGE)
        self.reason = reason

    def handle(self, keyed: tuple[str, Iterable[Execution]]) -> Iterator[Execution | Rejection]:
        ranked = sorted(keyed[1], key=lambda s: (core.shuffle_rank(s.id), s.id))
        yield ranked[0]
        for sample in ranked[1:]:
            yield Rejection.of(STAGE, self.reason, sample, f"kept {ranked[0].id}")


def to_final(sample: Execution) -> FinalPair:
    fingerprints = {"model": sample.model, "sampling": sample.sampling}
    return FinalPair(
        id=sample.id,
        seed=sample.seed,
        sha1=sample.sha1,
        concepts=sample.concepts,
        instruction=sample.instruction,
        response=sample.response,
        tests=sample.tests,
        prompt=sample.response_prompt,
        category=sample.category,
        difficulty=sample.difficulty,
        model=sample.model,
        sampling=sample.sampling,
        fingerprints=json.dumps(fingerprints, sort_keys=True),
        licenses=sample.licenses,
        repo_name=sample.repo_name,
        path=sample.path,
    )


class _KeepFirstPer(beam.PTransform):
    def __init__(self, key: Callable[[Execution], str], reason: str) -> None:
        super().__init__()
        self.key = key
        self.reason = reason

    def expand(self, samples: beam.PCollection) -> StageOutputs:
        grouped = (
            samples
            | "Key" >> beam.Map(lambda s, key=self.key: (key(s), s))
            | "Group" >> beam.GroupByKey()
        )
        return apply_stage_fn(grouped, "KeepFirst", KeepLowestRankFn(self.reason))


class SelectSamples(beam.PTransform):
    def __init__(self, accounting: Accounting | None = None) -> None:
        super().__init__()
        self.accounting = accounting

    def expand(self, executions: beam.PCollection) -> StageOutputs:
        checked = apply_stage_fn(executions, "FormatCheck", FormatCheckFn(STAGE))
        steps = [checked]
        current = checked.main
        if self.accounting is not None:
            self.accounting.count_stage("final.format", executions, checked)
        for label, key, reason in (
            ("UniqueInstruction", instruction_key, core.SelectReason.SAME_INSTRUCTION),
            ("UniqueResponse", response_key, core.SelectReason.SAME_RESPONSE),
            ("UniqueNames", names_key, core.SelectReason.SAME_NAMES),
        ):
            kept = current | label >> _KeepFirstPer(key, reason.value)
            if self.accounting is not None:
                name = "final.unique_" + label.removeprefix("Unique").lower()
                self.accounting.count_stage(name, current, kept)
            steps.append(kept)
            current = kept.main
        final = current | "ToFinalPair" >> beam.Map(to_final)
        merged = merge_outputs("Select", *steps)
        return StageOutputs(final, merged.rejected, merged.errors)


class ShowTestsFn(StageFn):
    def __init__(self, fraction: float) -> None:
        super().__init__(STAGE)
        self.fraction = fraction

    def handle(self, pair: FinalPair) -> Iterator[FinalPair]:
        yield show_tests(pair, self.fraction)


def show_tests(pair: FinalPair, fraction: float) -> FinalPair:
    """The pair with some of its tests in the instruction when its id falls in `fraction`."""
    if not core.shows_tests(pair.id, fraction):
        return pair
    asserts = core.top_level_asserts(pair.tests)
    if not asserts:
        return pair
    return dataclasses.replace(
        pair,
        instruction=core.instruction_with_tests(pair.instruction, asserts),
        tests_in_instruction=True,
    )


def _show_tests_outcome(pair: FinalPair, fraction: float) -> str:
    if pair.tests_in_instruction:
        return "outcome/shown"
    chosen = core.shows_tests(pair.id, fraction)
    return "outcome/no_top_level_assert" if chosen else "outcome/not_chosen"


class ShowTestsInInstruction(beam.PTransform):
    def __init__(self, fraction: float, accounting: Accounting | None = None) -> None:
        super().__init__()
        self.fraction = fraction
        self.accounting = accounting

    def expand(self, pairs: beam.PCollection) -> StageOutputs:
        outputs = apply_stage_fn(pairs, "ShowTests", ShowTestsFn(self.fraction))
        if self.accounting is not None:
            name = "final.tests_in_instruction"
            self.accounting.count_stage(name, pairs, outputs)
            self.accounting.count_by(
                outputs.main, name, lambda p, f=self.fraction: _show_tests_outcome(p, f)
            )
        return outputs
