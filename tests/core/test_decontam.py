"""Benchmark strings and the multi-pattern matcher."""

from __future__ import annotations

import gzip
import json
import pathlib
import re

import pytest

from beam_pipeline.core.decontam import (
    BenchmarkItem,
    BenchmarkMatcher,
    DecontamConfig,
    bundled_humaneval_path,
    ds1000_items,
    gsm8k_items,
    humaneval_items,
    iter_texts,
    mbpp_items,
    normalize,
    parse_rows,
    read_rows,
)

CLEAN_BEFORE = (
    "Write a helper that parses a configuration file and reports every unknown key.\n"
    "Here is my attempt so far:\n"
)
CLEAN_AFTER = "\nIt works on the sample file; please review the error handling.\n"


def _mixed_case(text: str) -> str:
    """Upper-cases every other word: a case change that keeps the characters."""
    return re.sub(r"\w+", lambda m: m.group(0).upper() if m.start() % 2 else m.group(0), text)


@pytest.fixture(scope="module")
def humaneval() -> list[BenchmarkItem]:
    return humaneval_items(read_rows(bundled_humaneval_path()))


@pytest.fixture(scope="module")
def mbpp(mbpp_path: pathlib.Path) -> list[BenchmarkItem]:
    return mbpp_items(read_rows(str(mbpp_path)))


@pytest.fixture(scope="module")
def matcher(humaneval: list[BenchmarkItem], mbpp: list[BenchmarkItem]) -> BenchmarkMatcher:
    return BenchmarkMatcher(humaneval + mbpp)


def test_humaneval_items(humaneval: list[BenchmarkItem]) -> None:
    tasks = {i.item_id for i in humaneval}
    assert len(tasks) == 164
    parts = {i.part for i in humaneval}
    assert parts == {"prompt", "docstring", "canonical_solution"}
    first = [i for i in humaneval if i.item_id == "HumanEval/0"]
    docstring = next(i.text for i in first if i.part == "docstring")
    assert "Check if in given list of numbers" in docstring
    assert all(i.key.startswith("humaneval:HumanEval/") for i in humaneval)
    # Every task has a non-empty docstring taken from its entry point.
    assert sum(1 for i in humaneval if i.part == "docstring" and i.text.strip()) == 164


def test_mbpp_items_cover_every_problem_text_and_code(mbpp: list[BenchmarkItem]) -> None:
    assert len({i.item_id for i in mbpp}) == 974
    assert {i.part for i in mbpp} == {"text", "code"}
    assert len(mbpp) == 2 * 974


def test_normalize() -> None:
    assert normalize("  Def F(x):\r\n\treturn  X\n") == "def f(x): return x"


def _planted(text: str) -> str:
    return CLEAN_BEFORE + _mixed_case(text) + CLEAN_AFTER


def _assert_names_a_contained_item(
    found: object, planted: str, items: list[BenchmarkItem], expected_key: str
) -> None:
    assert found is not None, f"{expected_key} not caught"
    # Several items can share a string (MBPP repeats some solutions); the named one must be
    # one whose string really is in the text.
    strings = {normalize(i.text) for i in items if i.key == found.key}
    assert any(s and s in normalize(planted) for s in strings)


def test_catches_every_humaneval_canonical_solution_with_case_changes(
    matcher: BenchmarkMatcher, humaneval: list[BenchmarkItem]
) -> None:
    solutions = [i for i in humaneval if i.part == "canonical_solution"]
    assert len(solutions) == 164 - 4  # the reference's generic solutions are not patterns
    exact = 0
    for item in solutions:
        planted = _planted(item.text)
        found = matcher.find(planted)
        _assert_names_a_contained_item(found, planted, humaneval, item.key)
        exact += found.key == item.key
    assert exact >= 160


def test_catches_every_humaneval_prompt_and_docstring(
    matcher: BenchmarkMatcher, humaneval: list[BenchmarkItem]
) -> None:
    for item in humaneval:
        if item.part in ("prompt", "docstring"):
            planted = _planted(item.text.upper())
            found = matcher.find(planted)
            _assert_names_a_contained_item(found, planted, humaneval, item.key)


def test_catches_every_mbpp_solution_and_text_with_case_changes(
    matcher: BenchmarkMatcher, mbpp: list[BenchmarkItem]
) -> None:
    exact = 0
    for item in mbpp:
        planted = _planted(item.text)
        found = matcher.find(planted)
        _assert_names_a_contained_item(found, planted, mbpp, item.key)
        exact += found.key == item.key
    assert exact >= 0.98 * len(mbpp)


def test_catches_reindented_copies(matcher: BenchmarkMatcher, mbpp: list[BenchmarkItem]) -> None:
    # MBPP code uses CRLF and tabs; a generated copy has LF and spaces.
    item = next(i for i in mbpp if i.item_id == "1" and i.part == "code")
    copied = item.text.replace("\r\n", "\n").replace("\t", "    ")
    assert matcher.find("```python\n" + copied + "\n```").key == "mbpp:1"


def test_clean_texts_are_not_flagged(matcher: BenchmarkMatcher) -> None:
    clean = [
        CLEAN_BEFORE + CLEAN_AFTER,
        "def parse_header(line: str) -> tuple[str, str]:\n"
        '    """Splits an HTTP header line into name and value."""\n'
        "    name, _, value = line.partition(':')\n"
        "    return name.strip().lower(), value.strip()\n",
        "Implement a least-recently-used cache with a fixed capacity and O(1) get and put.",
        "",
    ]
    for text in clean:
        assert matcher.find(text) is None, text


def test_matches_are_ordered_and_deterministic() -> None:
    items = [
        BenchmarkItem("mbpp", "2", "code", "return a + b"),
        BenchmarkItem("mbpp", "1", "code", "return a + b"),
        BenchmarkItem("humaneval", "HumanEval/9", "prompt", "def add(a, b):\n    return a + b"),
    ]
    text = "DEF ADD(a, b):\n  return A + B"
    forward = BenchmarkMatcher(items).matches(text)
    backward = BenchmarkMatcher(list(reversed(items))).matches(text)
    assert forward == backward
    assert [m.key for m in forward] == ["humaneval:HumanEval/9", "mbpp:1", "mbpp:2"]


def test_empty_and_short_strings_are_not_patterns() -> None:
    items = [
        BenchmarkItem("gsm8k", "0", "question", "   "),
        BenchmarkItem("gsm8k", "1", "question", "abc"),
        BenchmarkItem("gsm8k", "2", "question", "a longer question text"),
    ]
    assert BenchmarkMatcher(items).find("anything at all") is None
    short_dropped = BenchmarkMatcher(items, min_chars=10)
    assert short_dropped.skipped == 2
    assert short_dropped.find("xx abc xx") is None
    assert short_dropped.find("A LONGER   question text!").key == "gsm8k:2"


def test_ngram_mode_catches_copies_with_changed_punctuation(mbpp: list[BenchmarkItem]) -> None:
    item = next(i for i in mbpp if i.item_id == "12" and i.part == "code")
    reworded = re.sub(r"[^\w]+", " ~ ", item.text)  # substrings no longer match
    substring = BenchmarkMatcher(mbpp, mode="substring")
    ngram = BenchmarkMatcher(mbpp, mode="ngram", ngram_size=8)
    both = BenchmarkMatcher(mbpp, mode="both", ngram_size=8)
    assert substring.find(reworded) is None
    found = ngram.find(reworded)
    assert found is not None and found.how == "ngram" and found.key == "mbpp:12"
    assert both.find(reworded).key == "mbpp:12"
    assert both.find(item.text).how == "substring"


def test_ngram_min_fraction() -> None:
    words = [f"w{i}" for i in range(40)]
    items = [BenchmarkItem("gsm8k", "7", "question", " ".join(words))]
    partial = " ".join(words[:15])  # 3 of the item's 28 8-grams
    loose = BenchmarkMatcher(items, mode="ngram", ngram_size=13)
    strict = BenchmarkMatcher(items, mode="ngram", ngram_size=13, ngram_min_fraction=0.5)
    assert loose.find(partial).length == 3
    assert strict.find(partial) is None
    assert strict.find(" ".join(words[:30])).key == "gsm8k:7"


def test_user_supplied_benchmark_files(tmp_path: pathlib.Path) -> None:
    gsm = tmp_path / "gsm8k.jsonl.gz"
    with gzip.open(gsm, "wt", encoding="utf-8") as handle:
        for question in ["Natalia sold clips to 48 of her friends.", "Weng earns $12 an hour."]:
            handle.write(json.dumps({"question": question, "answer": "42"}) + "\n")
    ds = tmp_path / "ds1000.json"
    ds.write_text(
        json.dumps(
            [{"prompt": "import pandas as pd\ndf = pd.DataFrame()", "metadata": {"problem_id": 5}}]
        )
    )
    items = gsm8k_items(read_rows(str(gsm))) + ds1000_items(read_rows(str(ds)))
    assert [i.key for i in items] == ["gsm8k:0", "gsm8k:1", "ds1000:5"]
    matcher = BenchmarkMatcher(items)
    assert matcher.find("Q: WENG EARNS $12 AN HOUR. how much...").key == "gsm8k:1"
    assert matcher.find("IMPORT pandas as pd\n\ndf = pd.DataFrame()").key == "ds1000:5"


def test_bad_benchmark_rows_say_what_is_wrong(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_rows(b'{"question": "a"}\n{broken\n', "q.jsonl")
    with pytest.raises(ValueError, match="'question'"):
        gsm8k_items([{"text": "no question here"}])
    with pytest.raises(ValueError, match="JSON object"):
        parse_rows(b"[1, 2]")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"benchmarks": ("humaneval", "apps")},
        {"benchmarks": ()},
        {"mode": "fuzzy"},
        {"ngram_size": 0},
        {"ngram_min_fraction": 1.5},
        {"min_chars": -1},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DecontamConfig(**kwargs)


def test_iter_texts_reads_fields_and_functions() -> None:
    class Rec:
        instruction = "a"
        response = None
        tests = 3

    assert list(iter_texts(Rec(), ["instruction", "response", lambda r: "x"])) == [
        ("instruction", "a"),
        ("<lambda>", "x"),
    ]
    with pytest.raises(TypeError, match="tests"):
        list(iter_texts(Rec(), ["tests"]))


def test_generic_humaneval_solutions_do_not_make_code_contaminated(
    matcher: BenchmarkMatcher,
) -> None:
    """`return x + y` is HumanEval/53's whole solution, and in countless correct programs."""
    for body in ("return x + y", "return len(string)", "return n**2", "return ''.join(strings)"):
        assert matcher.find(f"def helper(x, y, n, string, strings):\n    {body}\n") is None
