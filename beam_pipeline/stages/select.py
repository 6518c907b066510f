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

With `--cross_check`, `JoinAgreements` (a CoGroupByKey by instruction id) brings each sample
its agreement (stages/cross_check.py), which the pair carries. With `--select_by agreement`
the loop's order changes only inside each instruction: the instruction keeps the places its
samples hold in the seeded shuffle, and its samples are dealt into them by agreement, highest
first (`core.agreement_ranks`); the interleaving of instructions, the keys and the loop are the
reference's.

`ShowTestsInInstruction` (optional, `--tests_in_instruction FRACTION`) appends up to three of a
pair's own top-level test asserts to its instruction for a hash-chosen fraction of the pairs;
`final.tests_in_instruction/by/outcome/<outcome>` counts shown, not chosen and no top-level assert.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator

import apache_beam as beam

from beam_pipeline.core import prompting
from beam_pipeline.core import selection as core
from beam_pipeline.core.cross_check import agreement
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
        problem = core.candidate_problem(
            sample.status, sample.instruction, sample.response, sample.tests
        )
        if problem is not None:
            yield Rejection.of(STAGE, problem[0], sample, problem[1])
        else:
            yield sample


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A sample that enters the loop, with its cross-check agreement and its rank (None: the
    seeded rank)."""

    sample: Execution
    agreement: float | None = None
    agreement_suites: int = 0
    rank: bytes | None = None

    @property
    def id(self) -> str:
        return self.sample.id


class AttachAgreementFn(StageFn):
    """(instruction id, {samples, agreements}) -> one Candidate per sample; under
    `--select_by agreement` each gets its rank from `core.agreement_ranks`."""

    def __init__(self, stage: str, select_by: str) -> None:
        super().__init__(stage)
        self.select_by = select_by

    def handle(self, joined: tuple[str, dict[str, Iterable]]) -> Iterator[Candidate]:
        counts = {sid: (passed, suites) for sid, passed, suites in joined[1]["agreements"]}
        samples = sorted(joined[1]["samples"], key=lambda s: s.id)
        values = {s.id: agreement(*counts.get(s.id, (0, 0))) for s in samples}
        ranks: dict[str, bytes] = {}
        if self.select_by == "agreement":
            ranks = core.agreement_ranks(values.items())
        for sample in samples:
            yield Candidate(
                sample,
                values[sample.id],
                counts.get(sample.id, (0, 0))[1],
                ranks.get(sample.id),
            )


class KeySamplesFn(StageFn):
    """Candidate -> (compact key, candidate); a first block that does not parse is rejected."""

    def handle(self, candidate: Candidate) -> Iterator[tuple[bytes, Candidate] | Rejection]:
        sample = candidate.sample
        key = core.selection_key(
            sample.id, sample.instruction, sample.response, rank=candidate.rank
        )
        if isinstance(key, str):
            yield Rejection.of(STAGE, core.SelectReason.FIRST_BLOCK_UNPARSABLE, sample, key)
        else:
            yield key, candidate


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
        candidates = sorted(joined[1]["samples"], key=lambda c: c.id)
        verdicts = sorted(joined[1]["verdicts"], key=_verdict_order)
        if len(candidates) != len(verdicts):
            raise ValueError(f"{len(candidates)} samples but {len(verdicts)} verdicts for a key")
        for candidate, verdict in zip(candidates, verdicts, strict=True):
            sample = candidate.sample
            if verdict != core.Verdict.KEPT:
                reason = core.REASON_OF_VERDICT[core.Verdict(verdict)]
                yield Rejection.of(STAGE, reason, sample, verdict)
            elif (error := core.code_syntax_error(sample.response)) is not None:
                yield Rejection.of(STAGE, core.SelectReason.CODE_UNPARSABLE, sample, error)
            else:
                yield to_final(sample, candidate.agreement, candidate.agreement_suites)


def to_final(
    sample: Execution, agreement: float | None = None, agreement_suites: int = 0
) -> FinalPair:
    fingerprints = {"model": sample.model, "sampling": sample.sampling}
    return FinalPair(
        id=sample.id,
        seed=sample.seed,
        sha1=sample.sha1,
        concepts=sample.concepts,
        instruction=sample.instruction,
        response=sample.response,
        tests=sample.tests,
        prompt=prompting.prompt_text(sample.response_prompt),
        prompt_mode=sample.response_prompt_mode or prompting.MODE_COMPLETION,
        category=sample.category,
        difficulty=sample.difficulty,
        model=sample.model,
        sampling=sample.sampling,
        fingerprints=json.dumps(fingerprints, sort_keys=True),
        licenses=sample.licenses,
        repo_name=sample.repo_name,
        path=sample.path,
        instruction_id=sample.instruction_id,
        agreement=agreement,
        agreement_suites=agreement_suites,
    )


# Keys per element that reaches the loop worker: fewer, larger elements through the shuffle.
KEYS_PER_BATCH = 4096


class SelectSamples(beam.PTransform):
    """Execution -> FinalPair. `agreements`: the cross-check's (instruction id, (sample id,
    suites passed, suites)) pairs, whose agreement each pair carries; `select_by="agreement"`
    then deals each instruction's samples into its places in the order by agreement."""

    def __init__(
        self,
        accounting: Accounting | None = None,
        agreements: beam.PCollection | None = None,
        select_by: str = "shuffle",
    ) -> None:
        super().__init__()
        if select_by not in core.SELECT_BY:
            raise ValueError(f"select_by must be one of {core.SELECT_BY}, got {select_by!r}")
        if select_by == "agreement" and agreements is None:
            raise ValueError("select_by='agreement' needs the cross-check's agreements")
        self.accounting = accounting
        self.agreements = agreements
        self.select_by = select_by

    def expand(self, executions: beam.PCollection) -> StageOutputs:
        checked = apply_stage_fn(executions, "FormatCheck", FormatCheckFn(STAGE))
        steps = []
        if self.agreements is None:
            candidates = checked.main | "AsCandidates" >> beam.Map(Candidate)
        else:
            joined = {
                "samples": checked.main
                | "ByInstruction" >> beam.Map(lambda s: (s.instruction_id, s)),
                "agreements": self.agreements,
            } | "JoinAgreements" >> beam.CoGroupByKey()
            attach = AttachAgreementFn(STAGE, self.select_by)
            steps.append(apply_stage_fn(joined, "AttachAgreement", attach))
            candidates = steps[-1].main
        keyed = apply_stage_fn(candidates, "KeySamples", KeySamplesFn(STAGE))
        steps.append(keyed)
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
        steps.append(applied)
        if self.accounting is not None:
            self.accounting.count_stage("final.format", executions, checked)
            self.accounting.count_stage(
                "final.select",
                checked.main,
                merge_outputs("SelectLoop", *steps),
            )
        merged = merge_outputs("Select", checked, *steps)
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
