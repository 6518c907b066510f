"""SelectSamples: Execution -> FinalPair (method.md §4, before near-dedup and decontamination).

Steps and their report keys (all rejections go to `rejected/final/`):
- `final.format`: failing samples (`not_passed`, detail: the execution status), malformed
  responses (no_code_block, no_test_block, tests_without_assert, tests_only_definitions,
  placeholder) and instructions over 200 words.
- `final.select`: the reference's single loop. `KeySamples` gives each sample its compact key
  (`core.selection_key`, 80 bytes) in parallel; a sample whose first Python block does not
  parse is rejected `first_block_unparsable`. The keys, concatenated in batches, meet on ONE
  worker (`Gather`), which sorts them into the shuffle order (rank = hash of 6666 and the
  sample id) and runs the loop; each key leaves with its verdict. `JoinVerdicts` brings the
  verdicts back to the records by key (a CoGroupByKey, so no worker holds more than one
  key's records). Skipped samples are rejected `duplicate_instruction`,
  `duplicate_response` or `duplicate_defined_names` (detail: which key was seen: instruction,
  response, functions, classes); a kept sample whose code does not parse as a whole is
  rejected `code_unparsable` (after the loop, as in the reference: its keys stay seen).
Survivors become FinalPair records with their provenance.

`ShowTestsInInstruction` (optional, `--tests_in_instruction FRACTION`) appends up to three of a
pair's own top-level test asserts to its instruction for a hash-chosen fraction of the pairs;
`final.tests_in_instruction/by/outcome/<outcome>` counts shown, not chosen and no top-level assert.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator

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


class KeySamplesFn(StageFn):
    """Execution -> (compact key, sample); a first block that does not parse is rejected."""

    def handle(self, sample: Execution) -> Iterator[tuple[bytes, Execution] | Rejection]:
        key = core.selection_key(sample.id, sample.instruction, sample.response)
        if isinstance(key, str):
            reason = core.SelectReason.FIRST_BLOCK_UNPARSABLE.value
            yield Rejection.of(STAGE, reason, sample, key)
        else:
            yield key, sample


class SelectLoopFn(beam.DoFn):
    """(_, batches of keys) -> (key, verdict) for every key. Runs once, on one worker, which
    holds the keys in one flat buffer (80 bytes each) and the seen digests of kept samples."""

    def process(self, element: tuple[int, Iterable[bytes]]) -> Iterator[tuple[bytes, str]]:
        table = core.KeyTable()
        for batch in element[1]:
            table.add(batch)
        for key, verdict in core.select_in_order(table.in_order()):
            yield key, verdict.value


def _verdict_order(verdict: str) -> tuple[bool, str]:
    return verdict != core.Verdict.KEPT, verdict


class ApplyVerdictsFn(StageFn):
    """(key, {samples, verdicts}) -> FinalPair or Rejection per sample. Samples share a key
    only when they are the same for the loop (same id and texts), so any pairing is exact."""

    def handle(self, joined: tuple[bytes, dict[str, Iterable]]) -> Iterator[FinalPair | Rejection]:
        samples = sorted(joined[1]["samples"], key=lambda s: s.id)
        verdicts = sorted(joined[1]["verdicts"], key=_verdict_order)
        if len(samples) != len(verdicts):
            raise ValueError(f"{len(samples)} samples but {len(verdicts)} verdicts for a key")
        for sample, verdict in zip(samples, verdicts, strict=True):
            if verdict != core.Verdict.KEPT:
                reason = core.REASON_OF_VERDICT[core.Verdict(verdict)].value
                yield Rejection.of(STAGE, reason, sample, verdict)
            elif (error := core.code_syntax_error(sample.response)) is not None:
                yield Rejection.of(STAGE, core.SelectReason.CODE_UNPARSABLE.value, sample, error)
            else:
                yield to_final(sample)


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


# Keys per element that reaches the loop worker: fewer, larger elements through the shuffle.
KEYS_PER_BATCH = 4096


class SelectSamples(beam.PTransform):
    def __init__(self, accounting: Accounting | None = None) -> None:
        super().__init__()
        self.accounting = accounting

    def expand(self, executions: beam.PCollection) -> StageOutputs:
        checked = apply_stage_fn(executions, "FormatCheck", FormatCheckFn(STAGE))
        keyed = apply_stage_fn(checked.main, "KeySamples", KeySamplesFn(STAGE))
        verdicts = (
            keyed.main
            | "Keys" >> beam.Map(lambda pair: pair[0])
            | "BatchKeys" >> beam.BatchElements(max_batch_size=KEYS_PER_BATCH)
            | "JoinBatch" >> beam.Map(lambda keys: (0, b"".join(keys)))
            | "Gather" >> beam.GroupByKey()
            | "Loop" >> beam.ParDo(SelectLoopFn())
        )
        joined = {"samples": keyed.main, "verdicts": verdicts} | "JoinVerdicts" >> (
            beam.CoGroupByKey()
        )
        applied = apply_stage_fn(joined, "ApplyVerdicts", ApplyVerdictsFn(STAGE))
        if self.accounting is not None:
            self.accounting.count_stage("final.format", executions, checked)
            self.accounting.count_stage(
                "final.select", checked.main, merge_outputs("SelectLoop", keyed, applied)
            )
        merged = merge_outputs("Select", checked, keyed, applied)
        return StageOutputs(applied.main, merged.rejected, merged.errors)


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
