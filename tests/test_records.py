"""Record schema: concepts as a list, no stored prompts, prompts rebuilt from the fields; the
side records' constructors and their one clipping rule."""

from __future__ import annotations

import dataclasses
import json

import pytest

from beam_pipeline.core import prompting
from beam_pipeline.core.seeds import SeedReason
from beam_pipeline.records import (
    DEAD_LETTER_RECORD_CHARS,
    REJECTION_EXCERPT_CHARS,
    Concepts,
    DeadLetter,
    Execution,
    FinalPair,
    Instruction,
    Rejection,
    Sample,
    Seed,
    SourceFile,
    clip_json,
)

SEED = (
    'def scale(xs, k):\n    """Multiply every item of xs by k."""\n    return [x * k for x in xs]'
)


def chain(concepts_k: int = 8, instruction_k: int = 8, response_k: int = 1) -> tuple:
    """Builds the records the generation stages would, with the prompts they would send."""
    seed = Seed(id=Seed.make_id(SEED), seed=SEED, sha1="ab" * 20)
    c_prompt = prompting.concepts_prompt(seed.id, seed.seed, k=concepts_k)
    concepts = seed.derive(
        Concepts,
        concepts=("list comprehensions", "scaling"),
        concepts_examples=c_prompt.example_ids,
    )
    i_prompt = prompting.instruction_prompt(concepts.id, concepts.concepts, k=instruction_k)
    instruction = concepts.derive(
        Instruction,
        category=i_prompt.category,
        difficulty=i_prompt.difficulty,
        instruction="Write `scale(xs, k)`.",
        instruction_examples=i_prompt.example_ids,
    )
    r_prompt = prompting.response_prompt(instruction.id, instruction.instruction, k=response_k)
    sample = instruction.derive(
        Sample,
        id=Sample.make_id(instruction.id, 3),
        instruction_id=instruction.id,
        sample_index=3,
        response="```python\ndef scale(xs, k):\n    return [x * k for x in xs]\n```",
        tests="```python\nassert scale([1], 2) == [2]\n```",
        response_examples=r_prompt.example_ids,
    )
    return (c_prompt.prompt, i_prompt.prompt, r_prompt.prompt), sample


@pytest.mark.parametrize("ks", [(8, 8, 1), (0, 3, 2), (21, 1, 0)])
def test_rebuilt_prompts_equal_the_built_ones(ks: tuple[int, int, int]) -> None:
    (c_sent, i_sent, r_sent), sample = chain(*ks)
    again = Sample.from_json(sample.to_json())
    assert again.concepts_prompt == c_sent
    assert again.instruction_prompt == i_sent
    assert again.response_prompt == r_sent
    assert prompting.rebuild_prompt(again, "responses") == r_sent
    assert prompting.rebuild_prompt(again, "concepts") == c_sent
    seed = Seed(id=sample.id, seed=sample.seed)
    assert prompting.rebuild_prompt(seed, "judge", judge_k=4) == prompting.judge_prompt(
        seed.id, seed.seed, k=4
    )


def test_no_prompt_is_stored_and_the_record_is_small() -> None:
    (c_sent, i_sent, r_sent), sample = chain()
    data = json.loads(sample.to_json())
    assert not [key for key in data if key.endswith("_prompt")]
    assert len(sample.to_json()) < 1_500
    assert len(c_sent) + len(i_sent) + len(r_sent) > 10_000  # what a sample carried before


def test_concepts_are_a_json_list_and_a_tuple_in_the_record() -> None:
    _, sample = chain()
    data = json.loads(sample.to_json())
    assert data["concepts"] == ["list comprehensions", "scaling"]
    assert Sample.from_dict(data).concepts == ("list comprehensions", "scaling")
    assert Sample.from_dict(data) == sample


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("loops, sets ,dicts", ("loops", "sets", "dicts")),
        (["a", "b"], ("a", "b")),
        ("", ()),
    ],
)
def test_concepts_given_as_a_string_or_list_become_a_tuple(value: object, expected: tuple) -> None:
    record = Concepts(id="s1", seed=SEED, concepts=value)
    assert record.concepts == expected
    final = FinalPair(
        id="s1.0", seed=SEED, sha1="", concepts=value, instruction="", response="", tests="",
        prompt="",
    )  # fmt: skip
    assert final.concepts == expected
    assert json.loads(final.to_json())["concepts"] == list(expected)


def test_a_line_with_the_former_prompt_fields_still_reads() -> None:
    _, sample = chain()
    data = json.loads(sample.to_json())
    data.update(concepts_prompt="x" * 100, instruction_prompt="y", response_prompt="z")
    assert Sample.from_dict(data) == sample


def test_downstream_records_keep_the_example_ids() -> None:
    _, sample = chain()
    execution = sample.derive(Execution, program_sha="0" * 64, status="passed")
    assert execution.concepts_examples == sample.concepts_examples
    assert execution.response_prompt == sample.response_prompt
    fields = {f.name for f in dataclasses.fields(Execution)}
    assert {"concepts_examples", "instruction_examples", "response_examples"} <= fields


def test_unknown_example_id_says_the_prompt_data_changed() -> None:
    _, sample = chain()
    broken = dataclasses.replace(sample, concepts_examples=("no-such-example",))
    with pytest.raises(KeyError, match="other prompt data"):
        _ = broken.concepts_prompt
    with pytest.raises(ValueError, match="no prompt"):
        prompting.rebuild_prompt(sample, "execution")


def _big_file(size: int) -> SourceFile:
    return SourceFile(
        id="f1", content="x = 1\n" * (size // 6), path="pkg/mod.py", source="shard-3.parquet:17"
    )


@pytest.mark.parametrize("size", [10, 5_000, 3_000_000])
def test_clip_json_stays_valid_json_and_keeps_the_short_fields(size: int) -> None:
    record = _big_file(size)
    for limit in (REJECTION_EXCERPT_CHARS, DEAD_LETTER_RECORD_CHARS):
        text = clip_json(record.to_dict(), limit)
        assert len(text) <= max(limit, len(record.to_json()))
        data = json.loads(text)
        assert (data["id"], data["path"], data["source"]) == ("f1", "pkg/mod.py", record.source)
        if len(record.to_json()) <= limit:
            assert text == record.to_json()  # what fits is kept whole
        else:
            assert data["content"].startswith("x = 1\n")
            assert data["content"].endswith("chars clipped]")


def test_clip_json_of_a_value_with_only_short_parts_is_clipped_as_text() -> None:
    text = clip_json(list(range(10_000)), 100)
    assert text.startswith("[0, 1, 2") and text.endswith("chars clipped]")
    assert len(text) < 140


def test_rejection_of_a_record_keeps_a_bounded_excerpt_under_its_id() -> None:
    rejection = Rejection.of("seeds", SeedReason.TOO_LONG, _big_file(1_000_000), "d" * 10_000)
    assert (rejection.id, rejection.stage, rejection.reason) == ("f1", "seeds", "too_long")
    assert type(rejection.reason) is str  # the enum's value: JSON and equality unchanged
    assert len(rejection.excerpt) <= REJECTION_EXCERPT_CHARS
    assert json.loads(rejection.excerpt)["path"] == "pkg/mod.py"
    assert len(rejection.detail) < 2_100
    line = json.loads(rejection.to_json())
    assert set(line) == {"id", "stage", "reason", "detail", "excerpt"}
    sample = Rejection.of("responses", SeedReason.TOO_LONG, _big_file(10), record_id="f1.3")
    assert sample.id == "f1.3"  # a sample's rejection is under the sample's id
    known_by_id = Rejection.of("preference", SeedReason.TOO_LONG, "", record_id="p1")
    assert (known_by_id.id, known_by_id.excerpt) == ("p1", "")


def test_dead_letter_of_an_exception_keeps_its_traceback_and_the_record() -> None:
    record = _big_file(300_000)
    try:
        raise ValueError("boom")
    except ValueError as exc:
        letter = DeadLetter.of("seeds", record, exc)
    assert (letter.id, letter.stage, letter.error) == ("f1", "seeds", "ValueError: boom")
    assert "Traceback" in letter.traceback and "boom" in letter.traceback
    assert len(letter.record) <= DEAD_LETTER_RECORD_CHARS
    assert json.loads(letter.record)["source"] == record.source
    small = _big_file(60)
    assert DeadLetter.of("seeds", small, "x").record == small.to_json()  # rerunnable as is


def test_dead_letter_of_any_element() -> None:
    letter = DeadLetter.of("read", "gs://b/*.parquet", "no input", "gs://b/*.parquet")
    assert (letter.id, letter.record, letter.traceback) == ("gs://b/*.parquet",) * 2 + ("",)
    pair = DeadLetter.of("final", (_big_file(10), "src"), "e" * 5_000)
    assert pair.id == "" and len(pair.error) < 2_100
    assert "pkg/mod.py" in pair.record
