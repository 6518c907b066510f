"""Seed extraction and filters (method.md §1), pure functions.

A file is decoded and checked (`check_file`), parsed, and its top-level functions whose first
statement is a triple-double-quoted docstring are extracted (`extract_functions`): plain,
`async` and decorated ones, as the reference takes them. A seed's text runs from `def` (or
`async def`) to the end of its body, with the comment lines tree-sitter keeps in the body;
decorator lines are not part of it and travel in their own field. Each function then passes
the seed filters (`check_seed`). Python's `ast` parses the file first; when it rejects the
file (The Stack holds much Python 2 code) tree-sitter, if installed, recovers the functions,
and each one is kept only if it parses as Python 3 on its own.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import tokenize
from enum import StrEnum

BANNED_MODULES = frozenset(
    {"os", "sys", "subprocess", "argparse", "setuptools", "distutils", "matplotlib", "seaborn"}
)
BANNED_KEYWORDS = ("todo", "fixme", "bug")
MAX_SEED_LINES = 150
DEFAULT_MAX_FILE_BYTES = 1 << 20  # The Stack v1 keeps files up to 1 MB


class FileReason(StrEnum):
    """Why a whole file yields no functions."""

    EMPTY = "empty"
    NOT_UTF8 = "not_utf8"
    BINARY = "binary"
    TOO_LARGE = "too_large"
    SYNTAX_ERROR = "syntax_error"
    TOO_DEEP = "too_deep"


class SeedReason(StrEnum):
    """Why an extracted function is not a seed."""

    NOT_PYTHON3 = "not_python3"
    NO_RETURN_VALUE = "no_return_value"
    TOO_LONG = "too_long"
    NO_PARAMETERS = "no_parameters"
    BANNED_KEYWORD = "banned_keyword"
    BANNED_IMPORT = "banned_import"
    DUPLICATE = "duplicate"
    STATIC_CHECK_FAILED = "static_check_failed"
    OVER_MAX_SEEDS = "over_max_seeds"  # beyond --max_seeds


@dataclasses.dataclass(frozen=True)
class ExtractedFunction:
    name: str
    text: str  # from `def` (or `async def`) to the end of the body; decorators not included
    parser: str  # "ast" or "tree_sitter"
    decorators: tuple[str, ...] = ()  # each decorator's source, `@` included, in order


@dataclasses.dataclass(frozen=True)
class Extraction:
    """Outcome for one file: functions, or the reason there are none."""

    functions: tuple[ExtractedFunction, ...] = ()
    reason: FileReason | None = None
    detail: str = ""
    parser: str = "ast"


def decode_content(raw: bytes | str) -> tuple[str, bool]:
    """Text and whether it was valid UTF-8. Invalid bytes survive as surrogate escapes."""
    if isinstance(raw, str):
        return raw, True
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="surrogateescape"), False


def check_file(
    text: str, valid_utf8: bool, size_bytes: int, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> tuple[FileReason, str] | None:
    """File-level rejection reason, or None when the file may be parsed."""
    if size_bytes > max_bytes:
        return FileReason.TOO_LARGE, f"{size_bytes} bytes > {max_bytes}"
    if "\x00" in text:
        return FileReason.BINARY, "contains NUL bytes"
    if not valid_utf8:
        return FileReason.NOT_UTF8, "content is not valid UTF-8"
    if not text.strip():
        return FileReason.EMPTY, ""
    return None


# Docstring openings we accept: the reference takes plain `"""` only; we also take `r`/`u`.
_DOC_PREFIXES = frozenset({"", "r", "u", "R", "U"})
# The line breaks Python's tokenizer (and tree-sitter) count; str.splitlines also splits on
# form feeds and Unicode separators, which would shift every line number after them.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LAYOUT_TOKENS = frozenset(
    {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
)


def _split_lines(text: str) -> list[str]:
    """Lines with their line breaks, broken where Python breaks them."""
    out: list[str] = []
    pos = 0
    for match in _LINE_BREAK.finditer(text):
        out.append(text[pos : match.end()])
        pos = match.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


def is_docstring_literal(literal: str) -> bool:
    """Whether a string literal's source is one non-empty triple-double-quoted string.

    Matches the reference's tree-sitter query: a single literal (no implicit concatenation),
    `\"\"\"` at both ends, some content between them; plus our `r`/`u` prefixes.
    """
    quote = literal.find('"""')
    if quote < 0 or literal[:quote] not in _DOC_PREFIXES:
        return False
    i, n = quote + 3, len(literal)
    while i < n:  # the first unescaped closing quotes must end the literal
        if literal[i] == "\\":
            i += 2
        elif literal.startswith('"""', i):
            break
        else:
            i += 1
    return i > quote + 3 and i == n - 3


def _indent_width(line: str) -> int:
    """Indentation as tree-sitter's Python scanner measures it (tab 8, form feed resets)."""
    width = 0
    for ch in line:
        if ch == " ":
            width += 1
        elif ch == "\t":
            width += 8
        elif ch == "\x0c":
            width = 0
        else:
            break
    return width


def _last_line_with_comments(lines: list[str], end: int, body_indent: int) -> int:
    """Extends a function's last line over the comment lines that belong to its block.

    tree-sitter (and so the reference's seed text) keeps a comment line after the last
    statement inside the block while it is indented at least as deep as the body; blank lines
    between are skipped; the first other line closes the block.
    """
    last = end
    for index in range(end, len(lines)):
        stripped = lines[index].strip(" \t\x0c\r\n")
        if not stripped:
            continue
        if stripped.startswith("#") and _indent_width(lines[index]) >= body_indent:
            last = index + 1
            continue
        break
    return last


def _byte_slice(line: str, start: int, stop: int | None = None) -> str:
    return line.encode("utf-8", "surrogatepass")[start:stop].decode("utf-8", "surrogatepass")


def _ast_source(node: ast.expr, lines: list[str]) -> str:
    """The exact source of an expression node."""
    end_line = node.end_lineno or node.lineno
    if end_line == node.lineno:
        return _byte_slice(lines[node.lineno - 1], node.col_offset, node.end_col_offset)
    return "".join(
        [
            _byte_slice(lines[node.lineno - 1], node.col_offset),
            *lines[node.lineno : end_line - 1],
            _byte_slice(lines[end_line - 1], 0, node.end_col_offset),
        ]
    )


def _ast_docstring_ok(first: ast.stmt, lines: list[str]) -> bool:
    if not isinstance(first, ast.Expr):
        return False
    value = first.value
    # The reference also takes `"""doc""", x`: an unparenthesised tuple's items are direct
    # children of the statement in tree-sitter's tree.
    if isinstance(value, ast.Tuple) and not _ast_source(value, lines).startswith("("):
        candidates = value.elts
    else:
        candidates = [value]
    return any(
        isinstance(c, ast.Constant)
        and isinstance(c.value, str)
        and is_docstring_literal(_ast_source(c, lines))
        for c in candidates
    )


def _ast_decorator(node: ast.expr, lines: list[str]) -> str:
    """Source of one decorator, `@` included, as written."""
    first = lines[node.lineno - 1]
    at = first.find("@")
    if at < 0:  # `@` on an earlier line, joined by a backslash: keep the expression alone
        return "@" + _ast_source(node, lines)
    end_line = node.end_lineno or node.lineno
    if end_line == node.lineno:
        return _byte_slice(first, 0, node.end_col_offset)[at:]
    tail = _byte_slice(lines[end_line - 1], 0, node.end_col_offset)
    return "".join([first[at:], *lines[node.lineno : end_line - 1], tail])


def _ends_in_comment(text: str) -> bool:
    """Whether the last token of `text` is a comment (a `#` may also sit inside a string)."""
    last = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type not in _LAYOUT_TOKENS:
                last = token.type
    except (tokenize.TokenError, SyntaxError):
        return False
    return last == tokenize.COMMENT


def _function_text(lines: list[str], first: int, last: int) -> str:
    """Lines first..last (1-based, inclusive) without the final line break.

    As in the reference's text, which ends where the last token ends: trailing blanks are
    dropped after code, kept after a comment (a comment token runs to the end of its line).
    """
    body = "".join(lines[first - 1 : last]).rstrip("\r\n")
    stripped = body.rstrip()
    if stripped == body or "#" not in lines[last - 1]:
        return stripped
    return body if _ends_in_comment(body) else stripped


def _extract_with_ast(tree: ast.Module, text: str) -> list[ExtractedFunction]:
    lines = _split_lines(text)
    out: list[ExtractedFunction] = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.col_offset != 0:
            continue
        first = node.body[0]
        if not _ast_docstring_ok(first, lines):
            continue
        end = node.end_lineno or node.lineno
        first_line = lines[first.lineno - 1]
        # a body on the `def` line ends at its newline; an indented block takes trailing comments
        if not _byte_slice(first_line, 0, first.col_offset).strip(" \t\x0c"):
            end = _last_line_with_comments(lines, end, _indent_width(first_line))
        out.append(
            ExtractedFunction(
                name=node.name,
                text=_function_text(lines, node.lineno, end),
                parser="ast",
                decorators=tuple(_ast_decorator(d, lines) for d in node.decorator_list),
            )
        )
    return out


_TS_PARSER = None


def _tree_sitter_parser():
    global _TS_PARSER
    if _TS_PARSER is None:
        try:
            import tree_sitter
            import tree_sitter_python
        except ImportError:
            _TS_PARSER = False
        else:
            _TS_PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_python.language()))
    return _TS_PARSER or None


def tree_sitter_available() -> bool:
    return _tree_sitter_parser() is not None


def _ts_text(data: bytes, node) -> str:
    return data[node.start_byte : node.end_byte].decode("utf-8", "surrogatepass")


def _ts_docstring_ok(function, data: bytes) -> bool:
    body = function.child_by_field_name("body")
    if body is None:
        return False
    statements = [c for c in body.named_children if c.type != "comment"]
    if not statements or statements[0].type != "expression_statement":
        return False
    for child in statements[0].named_children:
        if child.type != "string":
            continue
        parts = [c.type for c in child.children]
        if "string_content" in parts and is_docstring_literal(_ts_text(data, child)):
            return True
    return False


def _ts_decorator(data: bytes, node) -> str:
    """`@` through the decorator's expression (a comment after it is not part of it)."""
    parts = [c for c in node.named_children if c.type != "comment"]
    end = parts[-1].end_byte if parts else node.end_byte
    return data[node.start_byte : end].decode("utf-8", "surrogatepass")


def _extract_with_tree_sitter(text: str) -> list[ExtractedFunction]:
    parser = _tree_sitter_parser()
    if parser is None:
        return []
    data = text.encode("utf-8", "surrogatepass")
    # As the reference: every function definition that starts in column 0, wherever error
    # recovery put it in the tree (decorated ones sit inside a decorated_definition).
    found = []
    stack = [parser.parse(data).root_node]
    while stack:
        node = stack.pop()
        is_candidate = node.type == "function_definition" and node.start_point[1] == 0
        if is_candidate and _ts_docstring_ok(node, data):
            found.append(node)
        stack.extend(reversed(node.children))
    out: list[ExtractedFunction] = []
    for node in found:
        name_node = node.child_by_field_name("name")
        parent = node.parent
        decorators = ()
        if parent is not None and parent.type == "decorated_definition":
            decorators = tuple(
                _ts_decorator(data, c) for c in parent.children if c.type == "decorator"
            )
        out.append(
            ExtractedFunction(
                name=_ts_text(data, name_node) if name_node is not None else "",
                text=_ts_text(data, node),
                parser="tree_sitter",
                decorators=decorators,
            )
        )
    return out


def extract_functions(text: str, parser: str = "auto") -> Extraction:
    """Top-level functions (plain, async, decorated) with a triple-double-quoted docstring.

    parser: "ast" (Python 3 files only), "tree_sitter", or "auto" (ast, then tree-sitter for
    files ast rejects).
    """
    if parser == "tree_sitter":
        return Extraction(tuple(_extract_with_tree_sitter(text)), parser="tree_sitter")
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        if parser == "auto" and tree_sitter_available():
            return Extraction(tuple(_extract_with_tree_sitter(text)), parser="tree_sitter")
        return Extraction(reason=FileReason.SYNTAX_ERROR, detail=f"{exc.msg} (line {exc.lineno})")
    except (RecursionError, MemoryError) as exc:
        return Extraction(reason=FileReason.TOO_DEEP, detail=type(exc).__name__)
    except ValueError as exc:  # e.g. source code string cannot contain null bytes
        return Extraction(reason=FileReason.SYNTAX_ERROR, detail=str(exc))
    return Extraction(tuple(_extract_with_ast(tree, text)), parser="ast")


def _own_nodes(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.AST]:
    """Nodes of the function body, not descending into nested functions, lambdas or classes."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = list(func.body)
    nested = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, nested):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def imported_modules(tree: ast.AST) -> set[str]:
    """Top-level package names of every import statement in the tree."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def imports_in(text: str) -> set[str]:
    """Top-level package names imported anywhere in `text` (empty if it does not parse)."""
    try:
        return imported_modules(ast.parse(text))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()


def check_seed(text: str) -> tuple[SeedReason, str] | None:
    """Seed filter reason for one extracted function, or None if it is kept."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return SeedReason.NOT_PYTHON3, type(exc).__name__
    func = tree.body[0] if tree.body else None
    if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
        return SeedReason.NOT_PYTHON3, "not a function definition"
    # Reasons in the order method.md lists the filters; the first that applies is reported.
    if not any(isinstance(n, ast.Return) and n.value is not None for n in _own_nodes(func)):
        return SeedReason.NO_RETURN_VALUE, ""
    n_lines = text.count("\n") + 1
    if n_lines > MAX_SEED_LINES:
        return SeedReason.TOO_LONG, f"{n_lines} lines"
    args = func.args
    if not (args.posonlyargs or args.args or args.kwonlyargs or args.vararg or args.kwarg):
        return SeedReason.NO_PARAMETERS, ""
    lowered = text.lower()
    for word in BANNED_KEYWORDS:
        if word in lowered:
            return SeedReason.BANNED_KEYWORD, word
    banned = sorted(imported_modules(func) & BANNED_MODULES)
    if banned:
        return SeedReason.BANNED_IMPORT, ",".join(banned)
    return None
