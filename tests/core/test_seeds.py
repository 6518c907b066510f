"""Seed extraction and every seed filter, on exact reasons."""

from __future__ import annotations

import textwrap

import pytest

from beam_pipeline.core.seeds import (
    FileReason,
    SeedReason,
    check_file,
    check_seed,
    decode_content,
    extract_functions,
    tree_sitter_available,
)

PARSERS = [
    "auto",
    pytest.param(
        "tree_sitter",
        marks=pytest.mark.skipif(not tree_sitter_available(), reason="tree-sitter not installed"),
    ),
]


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


GOOD = _src('''
    def add(a, b):
        """Adds two numbers."""
        return a + b
''')


def test_extracts_top_level_function_with_triple_double_docstring() -> None:
    result = extract_functions(GOOD + "\nx = 1\n")
    assert result.reason is None
    assert [f.name for f in result.functions] == ["add"]
    assert result.functions[0].text == GOOD.rstrip()
    assert result.functions[0].parser == "ast"


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("def f(x):\n    '''single quotes'''\n    return x\n", id="single-quoted"),
        pytest.param("def f(x):\n    'one line'\n    return x\n", id="plain-string"),
        pytest.param("def f(x):\n    return x\n", id="no-docstring"),
        pytest.param('def f(x):\n    y = 1\n    """late"""\n    return x\n', id="not-first"),
        pytest.param(
            'class C:\n    def m(self, x):\n        """d"""\n        return x\n', id="method"
        ),
        pytest.param('if True:\n    def f(x):\n        """d"""\n        return x\n', id="nested"),
        pytest.param('def f(x):\n    """"""\n    return x\n', id="empty-docstring"),
        pytest.param('def f(x):\n    """a""" """b"""\n    return x\n', id="concatenated"),
        pytest.param('def f(x):\n    b"""bytes"""\n    return x\n', id="bytes-prefix"),
        pytest.param('def f(x):\n    f"""{x}"""\n    return x\n', id="f-prefix"),
        pytest.param('def f(x):\n    ("""a""", 1)\n    return x\n', id="parenthesised-tuple"),
        pytest.param(
            '@dataclass\nclass C:\n    def m(self, x):\n        """d"""\n        return x\n',
            id="decorated-class-method",
        ),
    ],
)
@pytest.mark.parametrize("parser", PARSERS)
def test_does_not_extract(source: str, parser: str) -> None:
    assert extract_functions(source, parser).functions == ()


# (source, seed text, decorators): the seed text starts at `def`, decorators travel apart.
DECORATED = [
    pytest.param(
        '@cache\ndef f(x):\n    """d"""\n    return x\n',
        'def f(x):\n    """d"""\n    return x',
        ("@cache",),
        id="one-decorator",
    ),
    pytest.param(
        "@functools.lru_cache(maxsize=None)  # memo\n@other\n"
        'def f(x):\n    """d"""\n    return x\n',
        'def f(x):\n    """d"""\n    return x',
        ("@functools.lru_cache(maxsize=None)", "@other"),
        id="stacked-with-arguments",
    ),
    pytest.param(
        '@register(\n    "name",\n    kind=1,\n)\ndef f(x):\n    """d"""\n    return x\n',
        'def f(x):\n    """d"""\n    return x',
        ('@register(\n    "name",\n    kind=1,\n)',),
        id="multi-line-decorator",
    ),
    pytest.param(
        'async def f(x):\n    """d"""\n    return await x\n',
        'async def f(x):\n    """d"""\n    return await x',
        (),
        id="async",
    ),
    pytest.param(
        '@app.get("/")\nasync def f(x):\n    """d"""\n    return x\n',
        'async def f(x):\n    """d"""\n    return x',
        ('@app.get("/")',),
        id="decorated-async",
    ),
]


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize(("source", "text", "decorators"), DECORATED)
def test_decorated_and_async_functions_are_extracted(
    source: str, text: str, decorators: tuple[str, ...], parser: str
) -> None:
    (fn,) = extract_functions(source, parser).functions
    assert (fn.name, fn.text, fn.decorators) == ("f", text, decorators)


@pytest.mark.parametrize(("source", "text", "decorators"), DECORATED)
def test_decorated_and_async_seeds_pass_the_filters(
    source: str, text: str, decorators: tuple[str, ...]
) -> None:
    assert check_seed(text) is None


TAIL = 'def f(x):\n    """d"""\n    if x:\n        return x\n'


# The reference's seed text keeps the comment lines tree-sitter leaves inside the body.
@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize(
    ("after", "kept_tail"),
    [
        pytest.param(
            "        # in the if\n    # in f\n# module\n    # x\nx = 1\n",
            "\n        # in the if\n    # in f",
            id="nested",
        ),
        pytest.param("\n    # after a blank\n\nx = 1\n", "\n\n    # after a blank", id="blank"),
        pytest.param("  # shallower than the body\nx = 1\n", "", id="shallower"),
        pytest.param("# column 0\n    # indented again\nx = 1\n", "", id="module-level"),
        pytest.param("    # at the end of the file", "\n    # at the end of the file", id="eof"),
        pytest.param("    # trailing blanks  \nx = 1\n", "\n    # trailing blanks  ", id="blanks"),
    ],
)
def test_trailing_comment_lines_follow_tree_sitter(after: str, kept_tail: str, parser: str) -> None:
    (fn,) = extract_functions(TAIL + after, parser).functions
    assert fn.text == TAIL.rstrip("\n") + kept_tail


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize(
    ("last_line", "kept"),
    [
        ("    return x  # a comment  ", "    return x  # a comment  "),
        ('    return "#"  ', '    return "#"'),
        ("    return x   ", "    return x"),
    ],
)
def test_last_line_ends_where_its_last_token_ends(last_line: str, kept: str, parser: str) -> None:
    source = f'def f(x):\n    """d"""\n{last_line}\nx = 1\n'
    (fn,) = extract_functions(source, parser).functions
    assert fn.text == f'def f(x):\n    """d"""\n{kept}'


@pytest.mark.parametrize("parser", PARSERS)
def test_form_feed_and_unicode_separators_do_not_shift_lines(parser: str) -> None:
    # str.splitlines() breaks at \x0c and \u2028; Python's line numbers do not.
    source = 'x = "a\u2028b"\n\x0c\ndef f(x):\n    """d"""\n    return x\n'
    (fn,) = extract_functions(source, parser).functions
    assert fn.text == 'def f(x):\n    """d"""\n    return x'


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize(
    "docstring",
    ['"""a""", 1', '""" """', '"""\\n"""', '"""say \\"""hi\\""" """', '"""{not an f-string}"""'],
)
def test_docstring_forms_the_reference_accepts(docstring: str, parser: str) -> None:
    source = f"def f(x):\n    {docstring}\n    return x\n"
    (fn,) = extract_functions(source, parser).functions
    assert fn.text == source.rstrip("\n")


@pytest.mark.parametrize("prefix", ["r", "u", "R"])
def test_string_prefixes_allowed(prefix: str) -> None:
    source = f'def f(x):\n    {prefix}"""doc"""\n    return x\n'
    assert [f.name for f in extract_functions(source).functions] == ["f"]


def test_non_ascii_before_docstring_uses_byte_offsets() -> None:
    source = 'def f(é=1):\n    """Düsseldorf."""\n    return é\n'
    assert [f.name for f in extract_functions(source).functions] == ["f"]


@pytest.mark.parametrize(
    ("body", "reason", "detail"),
    [
        ('def f(x):\n    """d"""\n    print(x)\n', SeedReason.NO_RETURN_VALUE, ""),
        (
            'def f(x):\n    """d"""\n    if x:\n        return\n    print(x)\n',
            SeedReason.NO_RETURN_VALUE,
            "",
        ),
        (
            'def f(x):\n    """d"""\n    def g():\n        return 1\n    g()\n',
            SeedReason.NO_RETURN_VALUE,
            "",
        ),
        ('def f():\n    """d"""\n    return 1\n', SeedReason.NO_PARAMETERS, ""),
        ('def f(x):\n    """TODO: finish"""\n    return x\n', SeedReason.BANNED_KEYWORD, "todo"),
        ('def f(x):\n    """d"""\n    return x  # FixMe\n', SeedReason.BANNED_KEYWORD, "fixme"),
        ('def f(x):\n    """debug helper"""\n    return x\n', SeedReason.BANNED_KEYWORD, "bug"),
        (
            'def f(x):\n    """d"""\n    import os\n    return os.sep + x\n',
            SeedReason.BANNED_IMPORT,
            "os",
        ),
        (
            'def f(x):\n    """d"""\n    from os.path import join\n    return join(x)\n',
            SeedReason.BANNED_IMPORT,
            "os",
        ),
        (
            'def f(x):\n    """d"""\n    import matplotlib.pyplot as plt\n    return plt\n',
            SeedReason.BANNED_IMPORT,
            "matplotlib",
        ),
        (
            'def f(x):\n    """d"""\n    import sys, subprocess\n    return x\n',
            SeedReason.BANNED_IMPORT,
            "subprocess,sys",
        ),
        (
            'def f(x):\n    """d"""\n' + "    x += 1\n" * 150 + "    return x\n",
            SeedReason.TOO_LONG,
            "153 lines",
        ),
        ("def f(x):\n    print 'py2'\n    return x\n", SeedReason.NOT_PYTHON3, "SyntaxError"),
    ],
)
def test_seed_filters(body: str, reason: SeedReason, detail: str) -> None:
    assert check_seed(body.rstrip()) == (reason, detail)


@pytest.mark.parametrize(
    "body",
    [
        'def f(x):\n    """d"""\n    return x',
        'def f(*args):\n    """d"""\n    return args',
        'def f(**kw):\n    """d"""\n    return kw',
        'def f(*, k):\n    """d"""\n    return k',
        'def f(x):\n    """d"""\n    import osmnx\n    return osmnx',  # not a banned module
        'def f(x):\n    """d"""\n    import numpy as np\n    return np.sum(x)',
        'def f(x):\n    """Mentions os and sys in prose only."""\n    return x',
        'def f(x):\n    """d"""\n' + "    x += 1\n" * 146 + "    return x",  # 149 lines
    ],
)
def test_seed_kept(body: str) -> None:
    assert check_seed(body) is None


@pytest.mark.parametrize(
    ("text", "valid", "size", "expected"),
    [
        ("", True, 0, FileReason.EMPTY),
        ("   \n\n", True, 4, FileReason.EMPTY),
        ("x = 1\x00\x00", True, 7, FileReason.BINARY),
        ("x = '\udcff'", False, 7, FileReason.NOT_UTF8),
        ("x = 1", True, 50 * 1024 * 1024, FileReason.TOO_LARGE),
    ],
)
def test_check_file(text: str, valid: bool, size: int, expected: FileReason) -> None:
    result = check_file(text, valid, size)
    assert result is not None and result[0] is expected


def test_check_file_accepts_normal_file() -> None:
    assert check_file(GOOD, True, len(GOOD)) is None


def test_decode_content_keeps_invalid_bytes_as_escapes() -> None:
    text, valid = decode_content(b"x = '\xff'")
    assert not valid and "\udcff" in text
    assert decode_content("already text") == ("already text", True)


def test_deep_nesting_is_a_reason_not_a_crash() -> None:
    deep_sum = "x = " + "1+" * 100_000 + "1\n"
    result = extract_functions(deep_sum, parser="ast")
    assert (result.reason, result.detail) == (FileReason.TOO_DEEP, "RecursionError")
    deep_unary = "x = " + "-" * 100_000 + "1\n"
    assert extract_functions(deep_unary).reason is FileReason.TOO_DEEP
    parens = "x = " + "(" * 5000 + ")" * 5000 + "\n"
    assert extract_functions(parens, parser="ast").reason is FileReason.SYNTAX_ERROR


PY2 = _src('''
    def double(x):
        """Doubles x."""
        return 2 * x

    def shout(msg):
        """Python 2 only."""
        print "!!", msg
        return msg

    print "module level"
''')


def test_python2_file_with_ast_only_is_a_syntax_error() -> None:
    assert extract_functions(PY2, parser="ast").reason is FileReason.SYNTAX_ERROR


@pytest.mark.skipif(not tree_sitter_available(), reason="tree-sitter not installed")
def test_python2_file_recovered_by_tree_sitter_and_py2_functions_filtered() -> None:
    result = extract_functions(PY2, parser="auto")
    assert result.parser == "tree_sitter"
    names = [f.name for f in result.functions]
    assert names == ["double", "shout"]
    verdicts = {f.name: check_seed(f.text) for f in result.functions}
    assert verdicts["double"] is None
    assert verdicts["shout"][0] is SeedReason.NOT_PYTHON3


@pytest.mark.skipif(not tree_sitter_available(), reason="tree-sitter not installed")
def test_tree_sitter_and_ast_agree_on_python3(bundled_shard: str) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(bundled_shard, columns=["content"]).slice(0, 120)
    for text in table.column("content").to_pylist():
        by_ast = extract_functions(text, parser="ast")
        if by_ast.reason is not None:
            continue
        by_ts = extract_functions(text, parser="tree_sitter")
        assert [f.text for f in by_ast.functions] == [f.text for f in by_ts.functions]
