"""Selection rules of method.md §4 on exact reasons."""

from __future__ import annotations

import random

import pytest

from beam_pipeline.core import selection
from beam_pipeline.core.selection import (
    SelectReason,
    code_representation,
    defined_names,
    format_problem,
    instruction_too_long,
    normalise_ws,
    python_blocks,
    shuffle_rank,
)

RESPONSE = (
    "Use a dictionary.\n\n```python\ndef count_Words(text):\n"
    '    """Counts words."""\n    return len(text.split())\n\n\nclass Box:\n'
    '    """A box."""\n\n    def size(self):\n        """Size."""\n        return 1\n```\n'
)
TESTS = "```python\nassert count_Words('a b') == 2\n```"


def test_well_formed_pair_passes() -> None:
    assert format_problem(RESPONSE, TESTS) is None


@pytest.mark.parametrize(
    ("response", "tests", "reason"),
    [
        ("No code at all.", TESTS, SelectReason.NO_CODE_BLOCK),
        ("```js\nlet x = 1;\n```", TESTS, SelectReason.NO_CODE_BLOCK),
        (RESPONSE, "assert f(1) == 1", SelectReason.NO_TEST_BLOCK),
        (RESPONSE, "```python\nprint(count_Words('a'))\n```", SelectReason.NO_ASSERT),
        (
            RESPONSE,
            "```python\nimport math\n\ndef check():\n    assert math.pi > 3\n```",
            SelectReason.TRIVIAL_TESTS,
        ),
        (RESPONSE.replace("Use a", "TODO: use a"), TESTS, SelectReason.PLACEHOLDER),
        (
            "```python\ndef f(x):\n    raise NotImplementedError\n```",
            TESTS,
            SelectReason.PLACEHOLDER,
        ),
        (
            "```python\ndef f(x):\n    # your code here\n    return x\n```",
            TESTS,
            SelectReason.PLACEHOLDER,
        ),
    ],
)
def test_format_problems(response: str, tests: str, reason: SelectReason) -> None:
    problem = format_problem(response, tests)
    assert problem is not None and problem[0] is reason


def test_python_blocks_take_untagged_and_python_only() -> None:
    text = "```\na = 1\n```\n```python\nb = 2\n```\n```bash\nls\n```\n```py\nc = 3\n```"
    assert python_blocks(text) == ["a = 1", "b = 2", "c = 3"]


def test_instruction_word_limit() -> None:
    assert not instruction_too_long(" ".join(["w"] * 200))
    assert instruction_too_long(" ".join(["w"] * 201))


def test_normalise_ws() -> None:
    assert normalise_ws("  a\n\tb   c \n") == "a b c"


def test_defined_names_lowercased_without_underscores() -> None:
    assert defined_names(RESPONSE) == ("box", "countwords")
    assert defined_names("```python\ndef CountWords(x):\n    return x\n```") == ("countwords",)


def test_code_representation_drops_docstrings_and_non_definitions() -> None:
    rep = code_representation(RESPONSE + "\n```python\nprint(1)\n```")
    assert '"""' not in rep and "Counts words" not in rep
    assert rep.startswith("def count_Words(text):\n    return len(text.split())")
    assert "class Box:" in rep and "print(1)" not in rep


def test_shuffle_rank_is_a_stable_permutation() -> None:
    ids = [f"s{i}.0" for i in range(200)]
    order = sorted(ids, key=shuffle_rank)
    assert order == sorted(ids, key=shuffle_rank)  # stable across calls
    assert order != ids and order != sorted(ids)
    other_seed = sorted(ids, key=lambda i: shuffle_rank(i, seed=1))
    assert other_seed != order
    random.Random(0).shuffle(ids)
    assert sorted(ids, key=shuffle_rank) == order  # independent of input order


def test_top_level_asserts_come_from_the_python_blocks_in_order() -> None:
    tests = (
        "Tests:\n```python\nimport math\n\ndef helper():\n    assert False\n\n"
        "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n```\n"
        "```text\nassert not_python\n```\n"
        "```python\nassert   add(0,0)==0\nassert add(2, 2) == 4\n```"
    )
    # the assert inside helper is not top-level; the text block is not python; unparsed form
    assert selection.top_level_asserts(tests) == [
        "assert add(1, 2) == 3",
        "assert add(-1, 1) == 0",
        "assert add(0, 0) == 0",
    ]
    assert selection.top_level_asserts("```python\ndef t():\n    assert f()\nt()\n```") == []
    assert selection.top_level_asserts("```python\nassert (\n```") == []


def test_shows_tests_picks_a_stable_fraction_of_ids() -> None:
    ids = [f"seed{i}.0" for i in range(4000)]
    chosen = [i for i in ids if selection.shows_tests(i, 0.25)]
    assert 0.22 < len(chosen) / len(ids) < 0.28
    assert chosen == [i for i in ids if selection.shows_tests(i, 0.25)]
    assert not any(selection.shows_tests(i, 0.0) for i in ids)
    assert all(selection.shows_tests(i, 1.0) for i in ids)


def test_instruction_with_tests_format() -> None:
    one = selection.instruction_with_tests("Write add.  \n", ["assert add(1, 2) == 3"])
    assert one == (
        "Write add.\n\nYour code should pass the following test:\n"
        "```python\nassert add(1, 2) == 3\n```"
    )
    two = selection.instruction_with_tests("Write add.", ["assert a", "assert b"])
    assert "following tests:\n```python\nassert a\nassert b\n```" in two
