"""Prompt building, parsing and per-item randomness (pure)."""

from __future__ import annotations

import collections
import re

import pytest

from beam_pipeline.core import prompting as p
from beam_pipeline.core.program import build_program
from beam_pipeline.core.prompting import Reason

SEED = 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b'


def test_build_prompt_shape() -> None:
    prompt = p.build_prompt("System.", ["one\n", "two"], "prefix:  \n")
    assert prompt == "System.\n\n## Example 1\none\n\n## Example 2\ntwo\n\n## Example 3\nprefix:"


@pytest.mark.parametrize("k", [0, 1, 8])
def test_concepts_prompt(k: int) -> None:
    built = p.concepts_prompt("s1", SEED, k=k)
    assert built.prompt.startswith(p.system_texts()["concepts"])
    assert built.prompt.endswith(f"## Example {k + 1}\n### Snippet\n{SEED}\n\n### Concepts")
    assert len(built.example_ids) == len(set(built.example_ids)) == k
    headers = re.findall(r"^## Example (\d+)$", built.prompt, re.MULTILINE)
    assert headers == [str(i) for i in range(1, k + 2)]
    pool = {ex.id: ex for ex in p.fewshot_pool()}
    for example_id in built.example_ids:
        assert ", ".join(pool[example_id].concepts) in built.prompt
    assert built.prompt == built.prompt.rstrip()


def test_instruction_prompt_carries_properties() -> None:
    built = p.instruction_prompt("s1", ("recursion", "lists"), k=8)
    assert built.category in ("function", "class", "program")
    assert built.difficulty in p.DIFFICULTIES
    assert built.prompt.endswith(
        f"### Properties\ncategory: {built.category}\nlanguage: Python\n"
        f"difficulty: {built.difficulty}\nconcepts: recursion, lists\n\n### Task"
    )


def test_response_prompt_ends_with_open_response() -> None:
    built = p.response_prompt("i1", "Write f.", k=1)
    assert built.prompt.endswith(
        "## Example 2\n<instruction>\nWrite f.\n</instruction>\n\n<response>"
    )
    assert built.prompt.count("\n</tests>") == 1  # one example (the system text names the tag)


def test_judge_prompt_shuffles_seven_demonstrations() -> None:
    prompt = p.judge_prompt("s1", SEED)
    assert prompt.count("### Good docstring: yes") + prompt.count("### Good docstring: no") == 7
    assert prompt.endswith(f"### Function\n{SEED}\n\n### Good docstring:")
    orders = {p.judge_prompt(f"s{i}", SEED) for i in range(20)}
    assert len(orders) > 10  # the shuffle depends on the seed's id


def test_same_id_same_prompts_different_ids_differ() -> None:
    a = p.instruction_prompt("same", "x, y")
    assert a == p.instruction_prompt("same", "x, y")
    prompts = {p.instruction_prompt(f"id{i}", "x, y").example_ids for i in range(30)}
    assert len(prompts) > 25
    assert p.sampler_seed("concepts", "a") == p.sampler_seed("concepts", "a")
    assert p.sampler_seed("concepts", "a") != p.sampler_seed("responses", "a")
    assert 0 <= p.sampler_seed("concepts", "a") < 2**31


def test_category_and_difficulty_distribution() -> None:
    cats = collections.Counter()
    diffs = collections.Counter()
    for i in range(6000):
        rng = p.item_rng("instruction", f"id{i}")
        cats[p.choose_category(rng)] += 1
        diffs[p.choose_difficulty(rng)] += 1
    assert abs(cats["function"] / 6000 - 0.5) < 0.03
    assert abs(cats["class"] / 6000 - 0.25) < 0.03
    assert abs(cats["program"] / 6000 - 0.25) < 0.03
    for name in p.DIFFICULTIES:
        assert abs(diffs[name] / 6000 - 1 / 3) < 0.03


def test_choose_examples_caps_at_pool_size() -> None:
    rng = p.item_rng("x", "y")
    assert sorted(p.choose_examples([1, 2, 3], 10, rng)) == [1, 2, 3]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "\nrecursion, lists,  dynamic programming\n\n",
            ("recursion", "lists", "dynamic programming"),
        ),
        ("\nloops, sets\n\n## Example 10\n### Snippet", ("loops", "sets")),
        ("\nhash maps, sorting\n### Snippet\nother", ("hash maps", "sorting")),
        # Split on commas, each item stripped, as the reference does: inner text is kept.
        ("  a  b , c.,d ", ("a  b", "c.", "d")),
        # A line break separates like a comma; an empty item (trailing comma) is dropped.
        ("\nlist comprehension,\nslicing,\n", ("list comprehension", "slicing")),
        ("\nsorting\ngreedy choice", ("sorting", "greedy choice")),
    ],
)
def test_parse_concepts(text: str, expected: tuple[str, ...]) -> None:
    parsed = p.parse_concepts(text)
    assert parsed.ok and parsed.value == expected


def test_concepts_list_round_trips_through_the_instruction_prompt() -> None:
    concepts = p.parse_concepts("\ntwo pointers ,  sorting,hashing\n").value
    built = p.instruction_prompt("s9", concepts)
    assert "\nconcepts: two pointers, sorting, hashing\n\n### Task" in built.prompt
    # A string is split, never joined character by character.
    assert p.instruction_prompt("s9", "two pointers, sorting, hashing").prompt == built.prompt


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [("\n \n", "stop", Reason.EMPTY), ("a, b", "length", Reason.LENGTH_TRUNCATED)],
)
def test_parse_concepts_rejects(text: str, finish: str, reason: Reason) -> None:
    assert p.parse_concepts(text, finish).reason is reason


def test_parse_instruction() -> None:
    assert p.parse_instruction("\nWrite f.\nMore.\n\n## Example 9").value == "Write f.\nMore."
    assert p.parse_instruction("\nWrite g.\n### Properties\nx").value == "Write g."
    assert p.parse_instruction("   ").reason is Reason.EMPTY
    assert p.parse_instruction("Write", "length").reason is Reason.LENGTH_TRUNCATED


INSTRUCTION_WITH_BLOCK = """Write a function `render(rows)` that returns a Markdown report:

```markdown
### Summary
| name | total |
```

The heading line must be exactly `### Summary`."""


def test_parse_instruction_keeps_a_heading_inside_a_code_block() -> None:
    parsed = p.parse_instruction("\n" + INSTRUCTION_WITH_BLOCK + "\n\n### Properties\ncategory: x")
    assert parsed.value == INSTRUCTION_WITH_BLOCK
    assert parsed.value.count("```") == 2  # the block stays closed


def test_parse_instruction_heading_in_a_python_comment_and_an_unclosed_block() -> None:
    text = "Fix this:\n```python\n### constants\nN = 3\n```\nKeep N.\n### Task\nmore"
    assert (
        p.parse_instruction(text).value
        == "Fix this:\n```python\n### constants\nN = 3\n```\nKeep N."
    )
    unclosed = "Use:\n```python\n### not a heading\nx = 1\n"
    assert p.parse_instruction(unclosed).value == unclosed.strip()


GOOD = (
    "\nExplain.\n\n```python\ndef f():\n    return 1\n```\n</response>\n\n"
    "<tests>\n```python\nassert f() == 1\n```\n"
)


def test_parse_response() -> None:
    parsed = p.parse_response(GOOD)
    assert parsed.ok
    response, tests = parsed.value
    assert response.startswith("Explain.") and response.endswith("```")
    assert tests == "```python\nassert f() == 1\n```"
    assert p.parse_response(GOOD + "</tests>\n\nmore").value == parsed.value


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        (GOOD, "length", Reason.LENGTH_TRUNCATED),
        ("\n  ", "stop", Reason.EMPTY),
        ("\nno closing tag\n```python\nx=1\n```", "stop", Reason.UNPARSEABLE),
        ("\n</response>\n<tests>\nassert 1\n", "stop", Reason.EMPTY),
        ("\nbody\n</response>\n\n", "stop", Reason.MISSING_TESTS),
        ("\nbody\n</response>\n\n<tests>\n  \n", "stop", Reason.MISSING_TESTS),
        ("\nbody\n## Example 3\n</response>\n<tests>x", "stop", Reason.UNPARSEABLE),
    ],
)
def test_parse_response_rejects(text: str, finish: str, reason: Reason) -> None:
    assert p.parse_response(text, finish).reason is reason


@pytest.mark.parametrize(
    ("text", "keep"),
    [(" yes", True), (" Yes.", True), (" no", False), ("", False), (" yes no no", False)],
)
def test_parse_judge(text: str, keep: bool) -> None:
    assert p.parse_judge(text).value is keep


def test_pool_covers_categories_and_difficulties() -> None:
    pool = p.fewshot_pool()
    assert len(pool) >= 16
    assert len({ex.id for ex in pool}) == len(pool)
    seen = {(ex.category, ex.difficulty) for ex in pool}
    for category, _ in p.CATEGORIES:
        for difficulty in p.DIFFICULTIES:
            assert (category, difficulty) in seen
    for ex in pool:
        assert ex.snippet and ex.concepts and ex.instruction
        # Both sides hold a Python block the execution stage runs.
        assert build_program(ex.response).blocks >= 1, ex.id
        assert "assert" in ex.tests and build_program("", ex.tests).blocks >= 1, ex.id
        # Examples must themselves parse the way generated text is parsed.
        completion = p.response_block(ex.instruction, ex.response, ex.tests).split("<response>", 1)[
            1
        ]
        parsed = p.parse_response(completion.removesuffix("</tests>"))
        assert parsed.ok and parsed.value == (ex.response, ex.tests), ex.id
        assert p.parse_concepts("\n" + p.join_concepts(ex.concepts)).value == ex.concepts, ex.id


def test_judge_pool_has_both_answers() -> None:
    answers = collections.Counter(ex.answer for ex in p.judge_pool())
    assert answers["yes"] >= 3 and answers["no"] >= 3
    assert set(answers) == {"yes", "no"}


def test_chat_turns_hold_the_completion_prompts_content() -> None:
    from beam_pipeline.core.prompting import MODE_CHAT, concepts_prompt, response_prompt

    for built in (
        concepts_prompt("s1", "def f():\n    return 1", k=3, mode=MODE_CHAT),
        response_prompt("i1", "Write a function that adds two numbers.", k=2, mode=MODE_CHAT),
    ):
        messages = built.prompt
        assert isinstance(messages, list)
        assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(
            built.example_ids
        ) + ["user"]
        # The last user turn stops before the opener the model's turn starts with.
        assert built.query.startswith(messages[-1]["content"])
        assert messages[2]["content"].startswith(built.query.rstrip().rsplit("\n", 1)[-1])
    text = response_prompt("i1", "Write a function that adds two numbers.", k=2).prompt
    chat = response_prompt("i1", "Write a function that adds two numbers.", k=2, mode="chat")
    assert isinstance(text, str) and isinstance(chat.prompt, list)
    # Same examples, same order: each turn is a piece of the completion text, in order.
    position = 0
    for message in chat.prompt:
        found = text.find(message["content"], position)
        assert found >= position, message["role"]
        position = found + len(message["content"])
    # An example's assistant turn opens its section and holds what a base model wrote in it.
    first_answer = chat.prompt[2]["content"]
    assert first_answer.startswith("<response>\n") and first_answer.endswith("</tests>")
    assert chat.prompt[1]["content"].endswith("</instruction>")
    with pytest.raises(ValueError, match="prompt mode"):
        response_prompt("i1", "x", mode="instruct")


def test_an_echoed_opener_is_dropped_and_nothing_else() -> None:
    from beam_pipeline.core.prompting import drop_echoed_opener, response_block

    query = response_block("Write f.")
    assert drop_echoed_opener("<response>\nHere.\n</response>", query) == "Here.\n</response>"
    assert drop_echoed_opener("  <response> Here.", query) == "Here."
    assert drop_echoed_opener("Here.\n</response>", query) == "Here.\n</response>"
    concepts_query = "### Snippet\nx = 1\n\n### Concepts"
    assert drop_echoed_opener("### Concepts\na, b", concepts_query) == "a, b"
    assert drop_echoed_opener("loops, ### Concepts", concepts_query) == "loops, ### Concepts"
