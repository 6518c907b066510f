"""Selection rules of method.md §4: format reasons, the keys, and the single loop."""

from __future__ import annotations

import random

import pytest

from beam_pipeline.core import selection
from beam_pipeline.core.selection import (
    NO_NAMES,
    KeyTable,
    NameSets,
    SelectReason,
    Verdict,
    code_representation,
    code_syntax_error,
    first_block_names,
    format_problem,
    instruction_too_long,
    names_digest,
    python_blocks,
    rank_bytes,
    select,
    select_in_order,
    selection_key,
    shuffle_rank,
    text_digest,
    whitespace_free,
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


def test_keys_remove_every_whitespace_character() -> None:
    assert whitespace_free("  a\n\tb   c \u00a0d\n") == "abcd"
    assert text_digest("Write  a\nfunction") == text_digest("Writea function")
    assert text_digest("Write a function") != text_digest("Write a-function")
    assert len(text_digest("x")) == 16


def _block(code: str, tag: str = "python") -> str:
    return f"```{tag}\n{code}\n```\n"


def test_names_cover_methods_nested_and_async_functions() -> None:
    code = (
        "import asyncio\n\nclass Stack_Impl:\n    def push(self, x):\n        def _Inner():\n"
        "            pass\n\n    async def Pop_Item(self):\n        class Node:\n"
        "            pass\n\nasync def main():\n    await asyncio.sleep(0)\n"
        "f = lambda: 1\n"
    )
    assert first_block_names("Text.\n\n" + _block(code)) == NameSets(
        functions=frozenset({"push", "inner", "popitem", "main"}),
        classes=frozenset({"stackimpl", "node"}),
    )


def test_names_come_from_the_first_python_block_only() -> None:
    response = (
        _block("ls -la", "bash")
        + _block("    def Solve(x):\n        return x")
        + _block("def g(): pass")
    )
    # a bash block is not code (it never ran); the first python block is stripped first
    assert first_block_names(response) == NameSets(frozenset({"solve"}), frozenset())
    assert first_block_names(_block("x = 1") + _block("def g(): pass")) == NameSets(
        frozenset(), frozenset()
    )


def test_unparsable_first_block_has_no_names() -> None:
    assert isinstance(first_block_names(_block("def f(:\n    pass")), str)
    assert first_block_names("no code") == "no python block"
    # only the first block must parse for the names
    assert isinstance(first_block_names(_block("def f(): pass") + _block("oops(")), NameSets)
    assert isinstance(selection_key("s.0", "Do it.", _block("def f(:")), str)


def test_names_digest_is_order_free_and_empty_is_no_names() -> None:
    assert names_digest(frozenset({"a", "b"})) == names_digest(frozenset({"b", "a"}))
    assert names_digest(frozenset({"a", "b"})) != names_digest(frozenset({"a"}))
    assert names_digest(frozenset()) == NO_NAMES


def _key(n: int, instruction: str, code: str) -> bytes:
    key = selection_key(f"s{n}", instruction, f"Answer {n}.\n\n" + _block(code))
    assert isinstance(key, bytes)
    return key


def _verdicts(keys: list[bytes]) -> list[Verdict]:
    return [verdict for _, verdict in select_in_order(keys)]


def test_blocked_first_sample_lets_the_instruction_try_its_next_sample() -> None:
    keys = [
        _key(0, "Write add.", "def add(a, b):\n    return a + b"),
        # the instruction's first sample reuses add's names; its second sample is new
        _key(1, "Write plus.", "def add(x, y):\n    return x + y"),
        _key(2, "Write plus.", "def plus(x, y):\n    return x + y"),
        _key(3, "Write plus.", "def plus2(x, y):\n    return y + x"),
    ]
    assert _verdicts(keys) == [
        Verdict.KEPT,
        Verdict.FUNCTIONS_SEEN,
        Verdict.KEPT,
        Verdict.INSTRUCTION_SEEN,
    ]


def test_empty_name_sets_never_block() -> None:
    keys = [_key(i, f"Compute value {i}.", f"x = {i}\nprint(x)") for i in range(6)]
    assert _verdicts(keys) == [Verdict.KEPT] * 6
    # a class-only response has an empty function set: it blocks only by its classes
    keys = [
        _key(0, "Box one.", "class Box:\n    pass"),
        _key(1, "Box two.", "class Crate:\n    pass"),
        _key(2, "Box three.", "class B_o_x:\n    size = 1"),
    ]
    assert _verdicts(keys) == [Verdict.KEPT, Verdict.KEPT, Verdict.CLASSES_SEEN]


def test_name_sets_compare_as_whole_sets_in_one_space() -> None:
    keys = [
        _key(0, "One.", "def solve(x):\n    return x"),
        _key(1, "Two.", "def solve(x):\n    return x\n\ndef helper():\n    pass"),
        # a class set equal to a seen function set is seen too (one set of name sets)
        _key(2, "Three.", "class Solve:\n    pass"),
        _key(3, "Four.", "def Solve_(y):\n    return -y"),
    ]
    assert _verdicts(keys) == [
        Verdict.KEPT,
        Verdict.KEPT,
        Verdict.CLASSES_SEEN,
        Verdict.FUNCTIONS_SEEN,
    ]


def test_instruction_and_response_keys_share_one_set() -> None:
    response = "Answer.\n\n" + _block("def f():\n    return 1")
    first = selection_key("a", response.replace("\n", "  \n"), "Other.\n\n" + _block("y = 2"))
    second = selection_key("b", "New task.", response)
    assert isinstance(first, bytes) and isinstance(second, bytes)
    # the second sample's response equals the first sample's instruction, whitespace aside
    assert _verdicts([first, second]) == [Verdict.KEPT, Verdict.RESPONSE_SEEN]


def test_skipped_samples_record_no_keys() -> None:
    keys = [
        _key(0, "First.", "def f():\n    return 0"),
        _key(1, "Second.", "def f():\n    return 1"),  # names seen: skipped
        _key(2, "Second.", "def g():\n    return 2"),  # so its instruction is still free
        _key(4, "Third.", "def h():\n    return 1"),
        _key(1, "Fourth.", "def f():\n    return 1"),  # sample 1's response was not recorded
    ]
    assert _verdicts(keys) == [
        Verdict.KEPT,
        Verdict.FUNCTIONS_SEEN,
        Verdict.KEPT,
        Verdict.KEPT,
        Verdict.FUNCTIONS_SEEN,
    ]


def test_select_sorts_by_rank() -> None:
    keys = [_key(i, f"Task {i}.", f"def f{i}():\n    pass") for i in range(50)]
    random.Random(1).shuffle(keys)
    order = [key for key, _ in select(keys)]
    assert order == sorted(keys)
    ids = [f"s{i}" for i in range(50)]
    assert [k[:16] for k in order] == sorted(rank_bytes(i) for i in ids)
    assert sorted(ids, key=rank_bytes) == sorted(ids, key=shuffle_rank)


def test_key_table_sorts_whole_keys_bytewise() -> None:
    rng = random.Random(2)
    keys = [rng.randbytes(80) for _ in range(500)]
    keys += [k[:40] + bytes(40) for k in keys[:50]] + [bytes(80), bytes(79) + b"\x01"]
    table = KeyTable()
    for start in range(0, len(keys), 7):
        table.add(b"".join(keys[start : start + 7]))
    assert len(table) == len(keys)
    assert [bytes(k) for k in table.in_order()] == sorted(keys)
    with pytest.raises(ValueError, match="multiple"):
        table.add(b"short")


def test_code_representation_keeps_top_level_sync_definitions() -> None:
    code = (
        '"""Module doc."""\nimport os\n\nasync def fetch():\n    pass\n\n'
        'def only_doc():\n    """Nothing else."""\n\nclass A:\n    """A."""\n\n'
        "    async def m(self):\n        'M.'\n        return 1\n\nprint(1)"
    )
    rep = code_representation(_block(code))
    # the reference leaves a body that held only a docstring empty
    assert rep == "def only_doc():\n\nclass A:\n\n    async def m(self):\n        return 1"


def test_code_that_does_not_parse_as_a_whole_is_reported() -> None:
    good = _block("def f():\n    return 1")
    assert code_syntax_error(good) is None
    broken = good + _block("def g(:")
    assert code_syntax_error(broken) is not None
    assert code_representation(broken) == ""
    # blocks of another language are not code
    assert code_syntax_error(good + _block("not python at all", "text")) is None


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


# --- --select_by agreement --------------------------------------------------------------------


def test_agreement_ranks_deal_an_instruction_its_own_places_by_agreement() -> None:
    rng = random.Random(3)
    members = [(f"q.{k}", rng.choice([None, 0.0, 0.5, 0.5, 1.0])) for k in range(9)]
    ranks = selection.agreement_ranks(members)
    # the instruction keeps exactly the places its samples hold in the seeded shuffle
    assert sorted(ranks.values()) == sorted(selection.rank_bytes(sid) for sid, _ in members)
    by_place = [sid for sid, _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    value = dict(members)
    expected = sorted(
        value,
        key=lambda sid: (value[sid] is None, -(value[sid] or 0.0), selection.rank_bytes(sid)),
    )
    assert by_place == expected
    assert value[by_place[0]] == 1.0 and value[by_place[-1]] is None


def test_equal_agreements_keep_the_seeded_order() -> None:
    members = [(f"e.{k}", 0.5) for k in range(6)]
    ranks = selection.agreement_ranks(members)
    assert ranks == {sid: selection.rank_bytes(sid) for sid, _ in members}


def test_agreement_order_keeps_the_interleaving_across_instructions() -> None:
    rng = random.Random(11)
    groups = {
        f"g{i}": [(f"g{i}.{k}", rng.random()) for k in range(rng.randrange(1, 6))]
        for i in range(40)
    }
    ranks: dict[str, bytes] = {}
    for members in groups.values():
        ranks.update(selection.agreement_ranks(members))
    seeded = sorted(ranks, key=selection.rank_bytes)
    dealt = sorted(ranks, key=ranks.get)
    # the sequence of instructions along the loop is unchanged; within one, agreement decides
    assert [s.split(".")[0] for s in dealt] == [s.split(".")[0] for s in seeded]
    value = {sid: v for members in groups.values() for sid, v in members}
    for group in groups:
        order = [value[s] for s in dealt if s.startswith(f"{group}.")]
        assert order == sorted(order, reverse=True)


def test_a_given_rank_replaces_the_seeded_one_in_the_key() -> None:
    rank = bytes(range(16))
    key = selection.selection_key(
        "x.0", "Write f.", "```python\ndef f():\n    pass\n```", rank=rank
    )
    plain = selection.selection_key("x.0", "Write f.", "```python\ndef f():\n    pass\n```")
    assert isinstance(key, bytes) and isinstance(plain, bytes)
    assert key[:16] == rank and key[16:] == plain[16:]
    with pytest.raises(ValueError):
        selection.selection_key("x.0", "Write f.", "```python\npass\n```", rank=b"short")
