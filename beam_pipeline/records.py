"""Records that flow between stages.

Every record is a frozen dataclass. Downstream records extend upstream ones, so each record
carries all upstream fields (method.md §2) and a JSON line is self-contained. Ids are stable
content hashes: the same input gives the same ids on any runner and worker count.

Records do not store the prompts of the generation stages (they were most of a sample's
bytes): each stage stores the ids of the few-shot examples it showed, and the
`concepts_prompt`, `instruction_prompt` and `response_prompt` properties rebuild the exact
prompt from the record's fields (`core.prompting.rebuild_prompt`). The field-by-field schema
is in docs/schema.md.

Chain: SourceFile -> Seed -> Concepts -> Instruction -> Sample -> Execution -> FinalPair
(-> PreferencePair). Side records: Rejection (expected outcome, counted reason), DeadLetter
(unexpected error), CrossCheckProgram (a `--cross_check` run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import traceback
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from beam_pipeline.core import prompting

T = TypeVar("T", bound="Record")


def stable_hash(*parts: str, length: int = 16) -> str:
    """Hex digest of the parts, joined unambiguously; stable across processes and runs."""
    h = hashlib.sha1()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(str(len(data)).encode())
        h.update(b":")
        h.update(data)
    return h.hexdigest()[:length]


def sha1_hex(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
    """Base: JSON round trip, derivation of a downstream record."""

    id: str

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in data.items():
            field = names.get(key)
            if field is None:
                continue  # fields of a downstream record are dropped, not an error
            if isinstance(value, list) and "tuple" in str(field.type):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls: type[T], line: str) -> T:
        return cls.from_dict(json.loads(line))

    def derive(self, cls: type[T], **fields: Any) -> T:
        """Builds a downstream record carrying every field of this one."""
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        base.update(fields)
        return cls(**base)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceFile(Record):
    """One Python file read from The Stack (or a directory of .py files)."""

    content: str
    path: str = ""
    repo_name: str = ""
    stars: int | None = None
    licenses: tuple[str, ...] = ()
    sha1: str = ""  # The Stack's hexsha when present, else the git blob id of the content
    source: str = ""  # shard path and row, for error messages
    size_bytes: int = 0
    valid_utf8: bool = True

    @staticmethod
    def make_id(sha1: str, path: str, repo_name: str) -> str:
        return "f" + stable_hash(sha1, repo_name, path)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Seed(Record):
    """A seed function: top-level, docstring, returns a value.

    `seed` runs from `def` (or `async def`) to the end of the body; the function's decorators,
    if any, are in `decorators`. `sha1` is the hex SHA-1 of `seed` (the published seed
    datasets' field); `file_sha1` is the source file's hash (The Stack's `hexsha`).
    """

    seed: str
    sha1: str = ""
    path: str = ""
    repo_name: str = ""
    stars: int | None = None
    licenses: tuple[str, ...] = ()
    parser: str = "ast"  # which parser extracted it: "ast" or "tree_sitter"
    file_sha1: str = ""
    decorators: tuple[str, ...] = ()  # each decorator's source, `@` included, in order

    @staticmethod
    def make_id(seed_text: str) -> str:
        return "s" + stable_hash(seed_text)


def as_concepts(value: Any) -> tuple[str, ...]:
    """A concepts field as a tuple of strings; a string is split on commas (the reference's
    rule), so a record built or read with one still holds a list."""
    if isinstance(value, str):
        return prompting.split_concepts(value)
    return tuple(str(item) for item in value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Concepts(Seed):
    """S->C: the concepts the seed shows."""

    concepts: tuple[str, ...]
    concepts_examples: tuple[str, ...] = ()  # ids of the few-shot examples in its S->C prompt
    concepts_prompt_mode: str = ""  # --prompt_mode of S->C ("" in records from before modes)

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        object.__setattr__(self, "concepts", as_concepts(self.concepts))

    @property
    def concepts_prompt(self) -> prompting.PromptText:
        """The S->C prompt the concepts were generated from (rebuilt, not stored)."""
        return prompting.rebuild_prompt(self, prompting.STAGE_CONCEPTS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Instruction(Concepts):
    """C->I: a coding instruction built from the concepts."""

    category: str
    difficulty: str
    instruction: str
    instruction_examples: tuple[str, ...] = ()  # ids of the few-shot examples in its C->I prompt
    instruction_prompt_mode: str = ""  # --prompt_mode of C->I ("" for a user's instruction)
    provenance: str = ""  # JSON: the source row of a user-given instruction (--instructions)

    @property
    def instruction_prompt(self) -> prompting.PromptText:
        """The C->I prompt the instruction was generated from (rebuilt, not stored)."""
        return prompting.rebuild_prompt(self, prompting.STAGE_INSTRUCTION)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sample(Instruction):
    """I->R: one sampled response with its own tests. `id` is the instruction id + index."""

    instruction_id: str
    sample_index: int
    response: str
    tests: str
    raw_response: str = ""
    response_examples: tuple[str, ...] = ()  # ids of the few-shot examples in its I->R prompt
    response_prompt_mode: str = ""  # --prompt_mode of I->R ("" in records from before modes)
    model: str = ""
    sampling: str = ""  # JSON of the sampling parameters used

    @staticmethod
    def make_id(instruction_id: str, index: int) -> str:
        return f"{instruction_id}.{index}"

    @property
    def response_prompt(self) -> prompting.PromptText:
        """The I->R prompt of the instruction, shared by its samples (rebuilt, not stored)."""
        return prompting.rebuild_prompt(self, prompting.STAGE_RESPONSE)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Execution(Sample):
    """A sample after its code plus tests ran in the sandbox."""

    program_sha: str
    status: str  # passed | failed | timeout | memory | crashed
    exit_code: int | None = None
    signal: int | None = None
    duration_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    backend: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinalPair(Record):
    """One row of the final dataset (method.md §4 fields plus provenance)."""

    seed: str
    sha1: str
    concepts: tuple[str, ...]
    instruction: str
    response: str
    tests: str
    prompt: str  # the I->R prompt, as in the published datasets (chat mode: messages as JSON)
    prompt_mode: str = ""  # the I->R --prompt_mode: completion or chat
    category: str = ""
    difficulty: str = ""
    model: str = ""
    sampling: str = ""
    fingerprints: str = ""  # JSON: stage name -> config fingerprint
    licenses: tuple[str, ...] = ()
    repo_name: str = ""
    path: str = ""
    tests_in_instruction: bool = False  # the instruction ends with some of the tests
    instruction_id: str = ""
    # What the instruction's executed samples say (stages/stats.py): how many ran, how many
    # passed, the pass rate and the difficulty it suggests beside the sampled `difficulty`.
    num_samples: int = 0
    num_passed: int = 0
    pass_rate: float | None = None
    estimated_difficulty: str = ""
    # --cross_check: the share of the sibling samples' test suites this response passes, and
    # how many suites that share is over (None and 0 when not cross-checked or no siblings).
    agreement: float | None = None
    agreement_suites: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "concepts", as_concepts(self.concepts))


@dataclasses.dataclass(frozen=True, kw_only=True)
class CrossCheckProgram(Record):
    """One cross-check run: a passing sample's response against a sibling sample's tests.
    `id` is `<sample id>@<suite sample id>`."""

    sample_id: str
    instruction_id: str
    suite_id: str
    source: str

    @staticmethod
    def make_id(sample_id: str, suite_id: str) -> str:
        return f"{sample_id}@{suite_id}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreferencePair(Record):
    """One row of `preference/`: a selected response and a failing sample of the same
    instruction. `prompt`, `chosen`, `rejected` are the columns TRL's DPO trainer reads;
    `prompt` is the instruction in the training template (sft/template.py). `id` is the
    chosen sample's id."""

    instruction_id: str
    instruction: str
    prompt: str
    chosen: str
    rejected: str
    chosen_id: str
    rejected_id: str
    rejected_status: str  # the failing sample's execution status
    rejected_reason: str  # core.sample_quality.FailureReason
    rejected_detail: str = ""  # e.g. the exception name or the format problem
    num_samples: int = 0
    num_passed: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rejection(Record):
    """An expected outcome that removes a record: counted, written, never an exception.

    It carries a bounded `excerpt` of its input, not the input: at full scale there are
    millions of rejections. The whole input is in the stage's input under the same id
    (docs/schema.md)."""

    stage: str
    reason: str  # a StrEnum member's value
    detail: str = ""
    excerpt: str = ""  # the input's JSON, clipped to REJECTION_EXCERPT_CHARS (`clip_json`)

    @classmethod
    def of(
        cls,
        stage: str,
        reason: StrEnum,
        record: Record | str,
        detail: str = "",
        record_id: str = "",
    ) -> Rejection:
        """A rejection of `record` (or of an input known only by `record_id`), under
        `record_id` when given (e.g. a sample of the rejected instruction)."""
        if isinstance(record, Record):
            record_id = record_id or record.id
            excerpt = clip_json(record.to_dict(), REJECTION_EXCERPT_CHARS)
        else:
            excerpt = clip(record, REJECTION_EXCERPT_CHARS)
        return cls(
            id=record_id,
            stage=stage,
            reason=str(reason),
            detail=clip(detail, MESSAGE_CHARS),
            excerpt=excerpt,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeadLetter(Record):
    """An unexpected error while processing a record: kept with its input for a rerun."""

    stage: str
    error: str
    traceback: str = ""
    record: str = ""  # the input's JSON, clipped to DEAD_LETTER_RECORD_CHARS (`clip_json`)

    @classmethod
    def of(
        cls, stage: str, element: Any, error: BaseException | str, record_id: str = ""
    ) -> DeadLetter:
        """A dead letter for `element` (a record, or any value a step received); `error` is
        the exception (its traceback is kept) or a message."""
        if isinstance(error, BaseException):
            message = f"{type(error).__name__}: {error}"
            trace = "".join(traceback.format_exception(error))
        else:
            message, trace = error, ""
        if isinstance(element, Record):
            record_id = record_id or element.id
            payload = clip_json(element.to_dict(), DEAD_LETTER_RECORD_CHARS)
        elif isinstance(element, str):
            payload = clip(element, DEAD_LETTER_RECORD_CHARS)
        else:
            if not record_id and not isinstance(element, tuple):
                record_id = str(getattr(element, "id", ""))
            try:
                payload = clip_json(element, DEAD_LETTER_RECORD_CHARS)
            except Exception:  # e.g. a value that refers to itself
                payload = clip(repr(element), DEAD_LETTER_RECORD_CHARS)
        return cls(
            id=record_id,
            stage=stage,
            error=clip(message, MESSAGE_CHARS),
            traceback=clip(trace, TRACEBACK_CHARS),
            record=payload,
        )


# How much of its input a side record keeps. A rejection only needs to show what was
# rejected (its input is in the stage's input, by id); a dead letter's input is needed for a
# rerun, and dead letters are rare.
REJECTION_EXCERPT_CHARS = 1_000
DEAD_LETTER_RECORD_CHARS = 200_000
MESSAGE_CHARS = 2_000  # a rejection's detail, a dead letter's error
TRACEBACK_CHARS = 20_000


def _dumps(data: Any, default: Callable[[Any], Any] | None = None) -> str:
    text = json.dumps(data, ensure_ascii=False, default=default)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable input bytes kept as surrogate escapes
        text = json.dumps(data, ensure_ascii=True, default=default)
    return text


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with a mark saying how many were cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"...[{len(text) - limit} chars clipped]"


def _clip_strings(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return clip(value, limit)
    if isinstance(value, list | tuple):
        return [_clip_strings(item, limit) for item in value]
    if isinstance(value, dict):
        return {key: _clip_strings(item, limit) for key, item in value.items()}
    return value


def clip_json(data: Any, limit: int) -> str:
    """JSON of `data` in about `limit` characters, still valid JSON: every string is clipped
    to the longest length that fits, so the short fields (ids, paths, statuses) survive whole
    and only the long texts are cut. Only data whose short parts alone exceed `limit` has its
    JSON text clipped instead."""
    text = _dumps(data, repr)
    if len(text) <= limit:
        return text
    low, high = 0, limit  # a string longer than `limit` cannot stay whole
    best = _dumps(_clip_strings(data, 0), repr)
    if len(best) > limit:
        return clip(best, limit)
    while low < high:  # the longest per-string length whose JSON fits
        middle = (low + high + 1) // 2
        candidate = _dumps(_clip_strings(data, middle), repr)
        if len(candidate) <= limit:
            low, best = middle, candidate
        else:
            high = middle - 1
    return best
