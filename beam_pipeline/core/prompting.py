"""Prompt building, completion parsing and per-item randomness for the generation stages.

Pure logic (no Beam, no network): method.md §2 and the docstring judge of §1.

Prompt shape (every stage): the system text, then k few-shot examples headed `## Example {i}`,
then `## Example {k+1}` with the new item's prefix; parts joined by blank lines; the whole
prompt right-stripped.

Concepts are a list of strings (the published datasets' field): a completion is split on
commas the way the reference splits it, and a list is joined with ", " wherever a prompt shows
it, so the C->I prompt is the reference's byte for byte.

Records do not store the prompts they were generated from: each stage stores the ids of the
few-shot examples it showed (`*_examples`), and `rebuild_prompt` gives the exact prompt back
from a record's fields and the package's prompt data.

Randomness: every choice for an item (few-shot examples, category, difficulty, sampler seed)
comes from a generator seeded by the stage name and the record id only, never from bundle,
worker or run identity, so the same input gives the same prompts on any runner.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import random
import re
import tomllib
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any

from beam_pipeline.core.program import fence_spans

CATEGORIES: tuple[tuple[str, float], ...] = (("function", 0.5), ("class", 0.25), ("program", 0.25))
DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")
LANGUAGE = "Python"
EXAMPLE_STOP = "## Example"
TESTS_STOP = "</tests>"

STAGE_CONCEPTS = "concepts"
STAGE_INSTRUCTION = "instruction"
STAGE_RESPONSE = "response"
STAGE_JUDGE = "judge"


class Reason(enum.StrEnum):
    """Why a generation stage dropped an item or a sample."""

    LENGTH_TRUNCATED = "length_truncated"  # the model hit max_tokens
    EMPTY = "empty"  # nothing usable was generated
    UNPARSEABLE = "unparseable"  # the completion does not have the expected shape
    MISSING_TESTS = "missing_tests"  # a response without a <tests> section
    MISSING_CHOICE = "missing_choice"  # the server returned fewer samples than asked
    DOCSTRING_REJECTED = "docstring_rejected"  # the judge said no


# --------------------------------------------------------------------------------------------
# Package data


@dataclasses.dataclass(frozen=True)
class FewShotExample:
    id: str
    category: str
    difficulty: str
    snippet: str
    concepts: tuple[str, ...]
    instruction: str
    response: str
    tests: str


@dataclasses.dataclass(frozen=True)
class JudgeExample:
    code: str
    answer: str


def _load_toml(name: str) -> dict:
    with resources.files("beam_pipeline.prompts").joinpath(name).open("rb") as f:
        return tomllib.load(f)


@cache
def system_texts() -> dict[str, str]:
    return {key: value.strip() for key, value in _load_toml("system.toml").items()}


@cache
def fewshot_pool() -> tuple[FewShotExample, ...]:
    """The hand-written pool, in file order (the order is part of the determinism)."""
    examples = []
    for raw in _load_toml("fewshot.toml")["example"]:
        fields: dict[str, Any] = {k: v.strip() if isinstance(v, str) else v for k, v in raw.items()}
        fields["concepts"] = split_concepts(fields["concepts"])
        examples.append(FewShotExample(**fields))
    return tuple(examples)


@cache
def _pool_by_id() -> dict[str, FewShotExample]:
    return {ex.id: ex for ex in fewshot_pool()}


def split_concepts(text: str) -> tuple[str, ...]:
    """Comma-separated concepts as a list: split on commas, each item stripped (the reference's
    rule); **We** drop empty items (a trailing comma would leave an empty concept)."""
    return tuple(item for item in (part.strip() for part in text.split(",")) if item)


def join_concepts(concepts: Iterable[str] | str) -> str:
    """How a prompt shows a list of concepts (the reference joins with ", ")."""
    if isinstance(concepts, str):  # never join a string's characters
        concepts = split_concepts(concepts)
    return ", ".join(concepts)


@cache
def judge_pool() -> tuple[JudgeExample, ...]:
    return tuple(
        JudgeExample(code=raw["code"].strip(), answer=raw["answer"].strip().lower())
        for raw in _load_toml("judge.toml")["example"]
    )


# --------------------------------------------------------------------------------------------
# Per-item randomness


def item_seed(stage: str, record_id: str) -> int:
    """A 63-bit integer derived from the stage and the record id only."""
    digest = hashlib.sha256(f"{stage}\x00{record_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def item_rng(stage: str, record_id: str) -> random.Random:
    return random.Random(item_seed(stage, record_id))


def sampler_seed(stage: str, record_id: str) -> int:
    """The per-request sampling seed; 31 bits, which every server accepts."""
    return item_seed(f"{stage}/sampler", record_id) & 0x7FFFFFFF


def choose_category(rng: random.Random) -> str:
    draw = rng.random()
    total = 0.0
    for name, weight in CATEGORIES:
        total += weight
        if draw < total:
            return name
    return CATEGORIES[-1][0]


def choose_difficulty(rng: random.Random) -> str:
    return DIFFICULTIES[rng.randrange(len(DIFFICULTIES))]


def choose_examples(pool: Sequence, k: int, rng: random.Random) -> list:
    """k distinct examples in a random order (all of them, shuffled, when k >= len(pool))."""
    k = min(k, len(pool))
    return [pool[i] for i in rng.sample(range(len(pool)), k)]


# --------------------------------------------------------------------------------------------
# Prompt formats


def build_prompt(system: str, examples: Sequence[str], prefix: str) -> str:
    parts = [system.strip()]
    parts += [f"## Example {i}\n{text.strip()}" for i, text in enumerate(examples, start=1)]
    parts.append(f"## Example {len(examples) + 1}\n{prefix.strip()}")
    return "\n\n".join(parts).rstrip()


def concepts_block(snippet: str, concepts: Sequence[str] | None = None) -> str:
    block = f"### Snippet\n{snippet.strip()}\n\n### Concepts"
    return block if concepts is None else f"{block}\n{join_concepts(concepts)}"


def properties_text(category: str, difficulty: str, concepts: Sequence[str]) -> str:
    return (
        f"category: {category}\nlanguage: {LANGUAGE}\ndifficulty: {difficulty}\n"
        f"concepts: {join_concepts(concepts)}"
    )


def instruction_block(
    category: str, difficulty: str, concepts: Sequence[str], instruction: str | None = None
) -> str:
    block = f"### Properties\n{properties_text(category, difficulty, concepts)}\n\n### Task"
    return block if instruction is None else f"{block}\n{instruction.strip()}"


def response_block(instruction: str, response: str | None = None, tests: str | None = None) -> str:
    block = f"<instruction>\n{instruction.strip()}\n</instruction>\n\n<response>"
    if response is None:
        return block
    return f"{block}\n{response.strip()}\n</response>\n\n<tests>\n{(tests or '').strip()}\n</tests>"


def judge_block(code: str, answer: str | None = None) -> str:
    block = f"### Function\n{code.strip()}\n\n### Good docstring:"
    return block if answer is None else f"{block} {answer}"


# --------------------------------------------------------------------------------------------
# Prompt modes: the same few-shot content as one completion text or as chat turns

MODE_COMPLETION = "completion"
MODE_CHAT = "chat"

Messages = list[dict[str, str]]
PromptText = str | Messages  # completion text, or chat messages


def opener(query: str) -> str:
    """A query's last line: the heading or tag that opens the section the model writes
    (`### Concepts`, `### Task`, `<response>`, `### Good docstring:`)."""
    return query.rstrip().rsplit("\n", 1)[-1].strip()


def chat_turns(query: str, full: str) -> tuple[str, str]:
    """An example as (user turn, assistant turn): the query without its opener, and the opener
    with the answer, so the assistant's turn starts the section it fills."""
    if not full.startswith(query):
        raise ValueError(f"example does not start with its query: {query[:60]!r}")
    head = query.rstrip()
    head = head[: len(head) - len(opener(query))].rstrip()
    return head, (opener(query) + full[len(query) :]).strip()


@dataclasses.dataclass(frozen=True)
class FewShot:
    """A few-shot prompt before it is rendered: the system text, each example as (query, the
    same query with its answer), and the query the model answers."""

    system: str
    examples: tuple[tuple[str, str], ...]
    query: str

    def completion(self) -> str:
        """The method's prompt: `## Example i` sections, the last one left open."""
        return build_prompt(self.system, [full for _, full in self.examples], self.query)

    def chat(self) -> Messages:
        """The system text, one user/assistant pair per example, then the query as the last
        user turn. An example's user turn is its query up to the opener of the section to
        write; its assistant turn is that opener and what a base model wrote after it. The
        model's chat template renders the turns; its reply is read by the same parsers, after
        the opener it repeats (`drop_echoed_opener`)."""
        messages = [{"role": "system", "content": self.system.strip()}]
        for query, full in self.examples:
            user, assistant = chat_turns(query, full)
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": assistant})
        messages.append({"role": "user", "content": chat_turns(self.query, self.query)[0]})
        return messages

    def render(self, mode: str) -> PromptText:
        if mode == MODE_CHAT:
            return self.chat()
        if mode == MODE_COMPLETION:
            return self.completion()
        raise ValueError(f"unknown prompt mode {mode!r}")


def drop_echoed_opener(text: str, query: str) -> str:
    """A chat reply without the query's opener (`### Concepts`, `<response>`, ...) when it
    starts with it, as the examples' assistant turns do; anything else is left as is."""
    head = opener(query)
    stripped = text.lstrip()
    if head and stripped.startswith(head):
        return stripped[len(head) :].lstrip(" ").removeprefix("\n")
    return text


@dataclasses.dataclass(frozen=True)
class ConceptsPrompt:
    prompt: PromptText
    example_ids: tuple[str, ...]
    query: str = ""  # the open section (chat replies are read after its opener)


@dataclasses.dataclass(frozen=True)
class InstructionPrompt:
    prompt: PromptText
    category: str
    difficulty: str
    example_ids: tuple[str, ...]
    query: str = ""


@dataclasses.dataclass(frozen=True)
class ResponsePrompt:
    prompt: PromptText
    example_ids: tuple[str, ...]
    query: str = ""


def _concepts_fewshot(chosen: Sequence[FewShotExample], snippet: str) -> FewShot:
    return FewShot(
        system_texts()["concepts"],
        tuple(
            (concepts_block(ex.snippet), concepts_block(ex.snippet, ex.concepts)) for ex in chosen
        ),
        concepts_block(snippet),
    )


def _instruction_fewshot(
    chosen: Sequence[FewShotExample], category: str, difficulty: str, concepts: Sequence[str]
) -> FewShot:
    return FewShot(
        system_texts()["instruction"],
        tuple(
            (
                instruction_block(ex.category, ex.difficulty, ex.concepts),
                instruction_block(ex.category, ex.difficulty, ex.concepts, ex.instruction),
            )
            for ex in chosen
        ),
        instruction_block(category, difficulty, concepts),
    )


def _response_fewshot(chosen: Sequence[FewShotExample], instruction: str) -> FewShot:
    return FewShot(
        system_texts()["response"],
        tuple(
            (response_block(ex.instruction), response_block(ex.instruction, ex.response, ex.tests))
            for ex in chosen
        ),
        response_block(instruction),
    )


def _judge_fewshot(
    record_id: str, code: str, k: int, pool: Sequence[JudgeExample] | None
) -> FewShot:
    rng = item_rng(STAGE_JUDGE, record_id)
    chosen = choose_examples(pool or judge_pool(), k, rng)
    return FewShot(
        system_texts()["judge"],
        tuple((judge_block(ex.code), judge_block(ex.code, ex.answer)) for ex in chosen),
        judge_block(code),
    )


def concepts_prompt(
    record_id: str,
    snippet: str,
    k: int = 8,
    pool: Sequence[FewShotExample] | None = None,
    mode: str = MODE_COMPLETION,
) -> ConceptsPrompt:
    """S->C: `### Snippet` + seed, `### Concepts`."""
    rng = item_rng(STAGE_CONCEPTS, record_id)
    chosen = choose_examples(pool or fewshot_pool(), k, rng)
    fewshot = _concepts_fewshot(chosen, snippet)
    return ConceptsPrompt(fewshot.render(mode), tuple(ex.id for ex in chosen), fewshot.query)


def instruction_prompt(
    record_id: str,
    concepts: Sequence[str],
    k: int = 8,
    pool: Sequence[FewShotExample] | None = None,
    mode: str = MODE_COMPLETION,
) -> InstructionPrompt:
    """C->I: `### Properties` (category, language, difficulty, concepts), `### Task`."""
    rng = item_rng(STAGE_INSTRUCTION, record_id)
    category = choose_category(rng)
    difficulty = choose_difficulty(rng)
    chosen = choose_examples(pool or fewshot_pool(), k, rng)
    fewshot = _instruction_fewshot(chosen, category, difficulty, concepts)
    ids = tuple(ex.id for ex in chosen)
    return InstructionPrompt(fewshot.render(mode), category, difficulty, ids, fewshot.query)


def response_prompt(
    record_id: str,
    instruction: str,
    k: int = 1,
    pool: Sequence[FewShotExample] | None = None,
    mode: str = MODE_COMPLETION,
) -> ResponsePrompt:
    """I->R: `<instruction>...</instruction>`, `<response>`."""
    rng = item_rng(STAGE_RESPONSE, record_id)
    chosen = choose_examples(pool or fewshot_pool(), k, rng)
    fewshot = _response_fewshot(chosen, instruction)
    return ResponsePrompt(fewshot.render(mode), tuple(ex.id for ex in chosen), fewshot.query)


def judge_prompt(
    record_id: str,
    code: str,
    k: int = 7,
    pool: Sequence[JudgeExample] | None = None,
    mode: str = MODE_COMPLETION,
) -> PromptText:
    """Docstring judge: k shuffled yes/no demonstrations, then the seed."""
    return _judge_fewshot(record_id, code, k, pool).render(mode)


@dataclasses.dataclass(frozen=True)
class JudgePrompt:
    prompt: PromptText
    query: str  # the open section (chat replies are read after its opener)


def judge_request(
    record_id: str, code: str, k: int = 7, mode: str = MODE_COMPLETION
) -> JudgePrompt:
    """`judge_prompt` with the query a chat reply starts by repeating."""
    fewshot = _judge_fewshot(record_id, code, k, None)
    return JudgePrompt(fewshot.render(mode), fewshot.query)


# --------------------------------------------------------------------------------------------
# Rebuilding a record's prompt

# Pipeline stage names accepted beside the randomness stage names.
_STAGE_ALIASES = {"instructions": STAGE_INSTRUCTION, "responses": STAGE_RESPONSE}


def _examples_by_id(ids: Sequence[str]) -> list[FewShotExample]:
    pool = _pool_by_id()
    missing = [i for i in ids if i not in pool]
    if missing:
        raise KeyError(
            f"few-shot example ids {missing} are not in the package's pool: the record was "
            "written with other prompt data, so its prompt cannot be rebuilt"
        )
    return [pool[i] for i in ids]


def rebuild_prompt(
    record: Any, stage: str, judge_k: int = 7, mode: str | None = None
) -> PromptText:
    """The exact prompt `stage` sent for `record` (a Concepts, Instruction, Sample or later
    record; a Seed for the judge), from the record's fields and the package's prompt data: a
    text in completion mode, chat messages in chat mode.

    S->C, C->I and I->R use the few-shot ids the record stores (`concepts_examples`,
    `instruction_examples`, `response_examples`) and the mode it stores
    (`concepts_prompt_mode`, ...), so the prompt does not depend on the flags of a later run.
    The judge stores nothing: its prompt is rebuilt from the seed's id, `judge_k` and `mode`
    (the `--judge_k` and `--prompt_mode` settings of the run).
    """
    stage = _STAGE_ALIASES.get(stage, stage)
    # "" in records written before the modes existed: those prompts were completions
    mode = mode or str(getattr(record, f"{stage}_prompt_mode", "") or MODE_COMPLETION)
    if stage == STAGE_CONCEPTS:
        fewshot = _concepts_fewshot(_examples_by_id(record.concepts_examples), record.seed)
    elif stage == STAGE_INSTRUCTION:
        chosen = _examples_by_id(record.instruction_examples)
        fewshot = _instruction_fewshot(chosen, record.category, record.difficulty, record.concepts)
    elif stage == STAGE_RESPONSE:
        # A Sample's id is `<instruction id>.<index>`; the prompt is the instruction's.
        fewshot = _response_fewshot(_examples_by_id(record.response_examples), record.instruction)
    elif stage == STAGE_JUDGE:
        fewshot = _judge_fewshot(record.id, record.seed, judge_k, None)
    else:
        raise ValueError(f"no prompt for stage {stage!r}")
    return fewshot.render(mode)


def prompt_text(prompt: PromptText) -> str:
    """A prompt as one string: the text itself, or the chat messages as JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Parsing


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A parsed completion: `value` (a string or a pair), or a `reason` with a `detail`."""

    value: object = None
    reason: Reason | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


def _reject(reason: Reason, detail: str) -> Parsed:
    return Parsed(reason=reason, detail=detail)


def _cut_at_next_example(text: str) -> str:
    """The model may run on into the next example when a stop string was not honoured."""
    index = text.find(EXAMPLE_STOP)
    return text if index < 0 else text[:index]


def _check_finish(finish_reason: str | None) -> Parsed | None:
    if finish_reason == "length":
        return _reject(Reason.LENGTH_TRUNCATED, "generation hit max_tokens")
    return None


_SECTION = re.compile(r"^\s*(###|<\w+>)", re.MULTILINE)


def parse_concepts(text: str, finish_reason: str | None = "stop") -> Parsed:
    """The concepts (a tuple of strings) in the first paragraph of the completion.

    Split on commas and each item stripped, as the reference does; **We** read only up to the
    first blank line or section heading (a base model may run on into another section) and
    treat a line break like a comma, so a concept never holds a newline.
    """
    if (rejected := _check_finish(finish_reason)) is not None:
        return rejected
    body = _cut_at_next_example(text)
    match = _SECTION.search(body)
    if match:
        body = body[: match.start()]
    paragraph = body.strip().split("\n\n", 1)[0]
    concepts = split_concepts(paragraph.replace("\n", ","))
    if not concepts:
        return _reject(Reason.EMPTY, "no concepts")
    return Parsed(value=concepts)


_HEADING = re.compile(r"^[ \t]*###\s", re.MULTILINE)


def parse_instruction(text: str, finish_reason: str | None = "stop") -> Parsed:
    """The task text up to the next example, or a `### ` heading outside a code block.

    A `### ` line inside a fenced block belongs to the instruction (a Markdown sample, a
    comment banner): cutting there would leave an unclosed fence. An unclosed fence runs to
    the end of the text, as in Markdown.
    """
    if (rejected := _check_finish(finish_reason)) is not None:
        return rejected
    body = _cut_at_next_example(text)
    spans = fence_spans(body)
    for match in _HEADING.finditer(body):
        if not any(start <= match.start() < end for start, end in spans):
            body = body[: match.start()]
            break
    body = body.strip()
    if not body:
        return _reject(Reason.EMPTY, "no instruction")
    return Parsed(value=body)


def parse_response(text: str, finish_reason: str | None = "stop") -> Parsed:
    """(response, tests) from `...</response>\\n\\n<tests>\\n...` (the `</tests>` stop is cut)."""
    if (rejected := _check_finish(finish_reason)) is not None:
        return rejected
    body = _cut_at_next_example(text)
    end = body.find("</response>")
    if end < 0:
        if not body.strip():
            return _reject(Reason.EMPTY, "no response")
        return _reject(Reason.UNPARSEABLE, "no </response> closing tag")
    response = body[:end].strip()
    rest = body[end + len("</response>") :]
    if not response:
        return _reject(Reason.EMPTY, "empty response")
    start = rest.find("<tests>")
    if start < 0:
        return _reject(Reason.MISSING_TESTS, "no <tests> section")
    tests = rest[start + len("<tests>") :]
    close = tests.find(TESTS_STOP)
    if close >= 0:
        tests = tests[:close]
    tests = tests.strip()
    if not tests:
        return _reject(Reason.MISSING_TESTS, "empty <tests> section")
    return Parsed(value=(response, tests))


def parse_judge(text: str) -> Parsed:
    """True when "yes" outnumbers "no" in the answer (method.md §1)."""
    words = re.findall(r"[a-z]+", text.lower())
    yes, no = words.count("yes"), words.count("no")
    return Parsed(value=yes > no, detail=f"yes={yes} no={no}")
