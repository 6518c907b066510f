"""ReadInstructions: `--instructions` files -> Instruction records (the run starts at I->R).

Input: the files `instructions_io.check_instruction_files` accepted on the launcher. Output:
one Instruction per good row, id `u<hash of the text>`; the same text twice is kept once (the
first by file and row) and each copy is rejected as `duplicate_instruction`. Rejections
(`rejected/instructions/`): not_json, not_an_object, bad_instruction, empty_instruction,
duplicate_instruction. A file that fails while being read is one dead letter
(`errors/instructions/`) naming it.
Counts: `instructions/in` (rows, plus one per file that failed), `out`, `rejected`, `errors`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from enum import StrEnum

import apache_beam as beam

from beam_pipeline import instructions_io
from beam_pipeline.records import Instruction, Rejection
from beam_pipeline.stages.common import (
    Accounting,
    StageFn,
    StageOutputs,
    apply_stage_fn,
    merge_outputs,
)

STAGE = "instructions"


class UserInstructionReason(StrEnum):
    DUPLICATE = "duplicate_instruction"


class ReadInstructionFileFn(StageFn):
    """File -> Instruction | Rejection per row."""

    def handle(self, path: str) -> Iterator[Instruction | Rejection]:
        for outcome in instructions_io.outcomes_of(path):
            if outcome.instruction is not None:
                yield outcome.instruction
            else:
                assert outcome.reason is not None  # a row is an instruction or has a reason
                yield Rejection.of(self.stage, outcome.reason, "", outcome.detail, outcome.row_id)


class KeepFirstCopyFn(StageFn):
    """(id, copies) -> the copy from the first file and row; the others are rejected."""

    def handle(self, keyed: tuple[str, Iterable[Instruction]]) -> Iterator[object]:
        _, copies = keyed
        ordered = sorted(copies, key=lambda r: _row_order(r.provenance))
        yield ordered[0]
        for copy in ordered[1:]:
            detail = f"kept {ordered[0].id}"
            yield Rejection.of(self.stage, UserInstructionReason.DUPLICATE, copy, detail)


def _row_order(provenance: str) -> tuple[str, int]:
    source = str(json.loads(provenance).get("source", "")) if provenance else ""
    path, _, row = source.rpartition(":")
    return (path, int(row) if row.isdigit() else 0)


class ReadInstructions(beam.PTransform):
    def __init__(self, files: list[str], accounting: Accounting | None = None) -> None:
        super().__init__()
        self.files = list(files)
        self.accounting = accounting

    def expand(self, pbegin: beam.pvalue.PBegin) -> StageOutputs:
        files = pbegin | "Files" >> beam.Create(self.files) | "SpreadFiles" >> beam.Reshuffle()
        rows = apply_stage_fn(files, "ReadRows", ReadInstructionFileFn(STAGE))
        keyed = rows.main | "ById" >> beam.Map(lambda r: (r.id, r)) | beam.GroupByKey()
        unique = apply_stage_fn(keyed, "KeepFirstCopy", KeepFirstCopyFn(STAGE))
        outputs = merge_outputs("UserInstructions", rows, unique)
        if self.accounting is not None:
            acct = self.accounting
            # Rows read, plus one per file that failed (it leaves as one dead letter).
            read = (rows.main, rows.rejected, rows.errors) | "AllRows" >> beam.Flatten()
            acct.count(read, STAGE, "in")
            acct.count(outputs.main, STAGE, "out")
            acct.count_rejections(outputs.rejected, STAGE)
            acct.count(outputs.errors, STAGE, "errors")
        return outputs
