"""Record schema: concepts as a list, no stored prompts, prompts rebuilt from the fields."""

from __future__ import annotations

import dataclasses
import json

import pytest

from beam_pipeline.core import prompting
from beam_pipeline.records import Concepts, Execution, FinalPair, Instruction, Sample, Seed

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
