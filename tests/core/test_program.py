"""Building the executed program from a response and its tests (method.md §3)."""

from __future__ import annotations

import pytest

from beam_pipeline.core.program import (
    build_program,
    calls_input,
    cut_main_section,
    fenced_blocks,
    program_sha,
)

RESPONSE = """Here is a solution.

```python
def add(a, b):
    return a + b
```

It adds numbers.
"""

TESTS = """```python
assert add(1, 2) == 3
```"""


def test_blocks_of_response_then_tests_joined_by_blank_lines() -> None:
    program = build_program(RESPONSE, TESTS)
    assert program.source == "def add(a, b):\n    return a + b\n\nassert add(1, 2) == 3\n"
    assert (program.blocks, program.skipped_blocks, program.cut_main) == (2, 0, False)


def test_every_block_counts_not_only_the_first() -> None:
    response = "```python\nimport math\n```\ntext\n```python\ndef f():\n    return math.pi\n```"
    program = build_program(response, "```\nassert f() > 3\n```")
    assert program.source == "import math\n\ndef f():\n    return math.pi\n\nassert f() > 3\n"


@pytest.mark.parametrize("tag", ["python", "py", "Python", "python3", "", "python title='x'"])
def test_python_tags(tag: str) -> None:
    assert build_program(f"```{tag}\nx = 1\n```").source == "x = 1\n"


@pytest.mark.parametrize("tag", ["bash", "json", "text", "console", "sh"])
def test_other_languages_are_skipped_and_counted(tag: str) -> None:
    program = build_program(f"```{tag}\n$ run it\n```\n```python\nx = 1\n```")
    assert program.source == "x = 1\n"
    assert program.skipped_blocks == 1


def test_tilde_fences_and_longer_fences() -> None:
    text = "~~~python\na = 1\n~~~\n````python\nb = '```'\n````"
    assert fenced_blocks(text) == [("python", "a = 1"), ("python", "b = '```'")]


def test_no_code_gives_an_empty_program() -> None:
    program = build_program("I cannot solve this.", "no tests either")
    assert program.source == "" and program.blocks == 0


def test_unclosed_fence_is_not_a_block() -> None:
    assert build_program("```python\nx = 1\n").source == ""


def test_main_section_cut_when_the_block_calls_input() -> None:
    response = (
        "```python\ndef solve(n):\n    return n * 2\n\n"
        'if __name__ == "__main__":\n    n = int(input())\n    print(solve(n))\n```'
    )
    program = build_program(response, "```python\nassert solve(2) == 4\n```")
    assert program.cut_main
    assert program.source == "def solve(n):\n    return n * 2\n\nassert solve(2) == 4\n"


def test_main_section_cut_when_input_is_called_elsewhere_in_the_block() -> None:
    block = "def main():\n    x = input()\n\nif '__main__' == __name__:\n    main()\n"
    code, cut = cut_main_section(block)
    assert calls_input(block) and cut
    assert code == "def main():\n    x = input()"


@pytest.mark.parametrize(
    "code",
    [
        # The reference's rule would cut these and delete the test run.
        'def parse(input_data):\n    """Reads the input."""\n    return input_data',
        "# no input() needed here\nx = 1",
        "s = 'call input() yourself'",
        "class Reader:\n    def input(self):\n        return 1\n\nReader().input()",
        "import builtins\nf = builtins.input",
        "from mod import input as read\n",
        "user_input = 3\nprint(user_input)",
    ],
)
def test_no_real_input_call_keeps_the_main_section(code: str) -> None:
    block = code + "\n\nif __name__ == '__main__':\n    unittest.main()\n"
    assert not calls_input(block)
    program = build_program(f"```python\n{block}```")
    assert not program.cut_main
    assert "unittest.main()" in program.source


@pytest.mark.parametrize(
    "code",
    [
        "x = input()",
        "x = input ('prompt')",
        "values = list(map(int, input().split()))",
        "def f():\n    return input()",
        "x = (\n    input()\n)",
    ],
)
def test_real_input_calls(code: str) -> None:
    assert calls_input(code)


def test_input_detected_in_code_that_does_not_parse() -> None:
    assert calls_input("n = int(input())\ns = 'unterminated")
    assert calls_input("n = input()\ndef broken(:\n")


def test_only_a_top_level_main_guard_is_cut() -> None:
    block = "def f():\n    if __name__ == '__main__':\n        pass\n    return input()\n"
    code, cut = cut_main_section(block)
    assert not cut and code == block


def test_cut_applies_to_the_block_that_calls_input_only() -> None:
    response = (
        "```python\ndef f():\n    return 1\n\nif __name__ == '__main__':\n    print(f())\n```"
    )
    tests = (
        "```python\nimport unittest\n\nclass T(unittest.TestCase):\n    def test(self):\n"
        "        self.assertEqual(f(), 1)\n\nif __name__ == '__main__':\n    unittest.main()\n```"
    )
    program = build_program(response, tests)
    assert not program.cut_main
    assert program.source.count("if __name__ == '__main__':") == 2


def test_block_that_is_only_a_main_section_disappears() -> None:
    program = build_program("```python\nif __name__ == '__main__':\n    print(input())\n```")
    assert program.source == "" and program.cut_main


def test_indented_fence_strips_its_indent() -> None:
    text = "1. Step one:\n   ```python\n   def f():\n       return 1\n   ```\n"
    assert build_program(text).source == "def f():\n    return 1\n"


def test_sha_is_stable_and_content_based() -> None:
    a = build_program(RESPONSE, TESTS)
    b = build_program(RESPONSE + "\nMore prose.", TESTS)
    assert a.sha == b.sha == program_sha(a.source)
    assert len(a.sha) == 64
    assert build_program(RESPONSE).sha != a.sha


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The closing fence ends the last line of code (the reference accepts this).
        (
            "```python\ndef g(xs):\n    out = sorted(xs)\n    return out```\nDone.",
            "def g(xs):\n    out = sorted(xs)\n    return out",
        ),
        ("```python\nx = 1```   \n", "x = 1"),
        ("```\nassert g([2, 1]) == [1, 2]```", "assert g([2, 1]) == [1, 2]"),
        # A longer closing run closes too; trailing blanks on the fence line are ignored.
        ("```python\ny = 2\n````\n", "y = 2"),
        ("```python\ny = 2\n  ```  \n", "y = 2"),
    ],
)
def test_closing_fence_at_the_end_of_a_code_line(text: str, expected: str) -> None:
    assert fenced_blocks(text) == [("python" if "python" in text else "", expected)]


def test_fence_inside_a_line_does_not_close_the_block() -> None:
    text = '```python\nticks = "```" + "x"\nprint(ticks)\n```'
    assert fenced_blocks(text) == [("python", 'ticks = "```" + "x"\nprint(ticks)')]


def test_blocks_after_a_block_closed_on_a_code_line() -> None:
    response = "```python\ndef h():\n    return 3```\nThen:\n```python\nassert h() == 3\n```"
    program = build_program(response, "```python\nassert h() > 2```")
    assert program.source == "def h():\n    return 3\n\nassert h() == 3\n\nassert h() > 2\n"
    assert program.blocks == 3


def test_a_line_opening_a_new_block_ends_an_unclosed_one() -> None:
    text = "```python\nx = 1\n```python\ny = 2\n```\nprose\n```bash\nls\n```"
    assert fenced_blocks(text) == [("python", "x = 1"), ("python", "y = 2"), ("bash", "ls")]
    assert build_program(text).source == "x = 1\n\ny = 2\n"
