"""Seed extraction and filters (method.md §1), pure functions.

A file is decoded and checked (`check_file`), parsed, and its top-level functions whose first
statement is a triple-double-quoted docstring are extracted (`extract_functions`). Each
function then passes the seed filters (`check_seed`). Python's `ast` parses the file first;
when it rejects the file (The Stack holds much Python 2 code) tree-sitter, if installed,
recovers the top-level functions, and each one is kept only if it parses as Python 3 on its own.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from enum import StrEnum

BANNED_MODULES = frozenset(
    {"os", "sys", "subprocess", "argparse", "setuptools", "distutils", "matplotlib", "seaborn"}
)
BANNED_KEYWORDS = ("todo", "fixme", "bug")
MAX_SEED_LINES = 150
DEFAULT_MAX_FILE_BYTES = 1 << 20  # The Stack v1 keeps files up to 1 MB
_STRING_PREFIX = re.compile(r"^[rRuUbBfF]{0,2}")


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


@dataclasses.dataclass(frozen=True)
class ExtractedFunction:
    name: str
    text: str
    parser: str  # "ast" or "tree_sitter"


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


def _has_triple_double_docstring(first_stmt_line: str) -> bool:
    stripped = first_stmt_line.lstrip()
    return _STRING_PREFIX.sub("", stripped, count=1).startswith('"""')


def _extract_with_ast(tree: ast.Module, text: str) -> list[ExtractedFunction]:
    lines = text.splitlines(keepends=True)
    out: list[ExtractedFunction] = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.decorator_list or node.col_offset != 0:
            continue
        first = node.body[0]
        if not (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            continue
        # col_offset counts UTF-8 bytes, not characters
        line = lines[first.lineno - 1].encode("utf-8", "surrogatepass")
        doc_start = line[first.col_offset :].decode("utf-8", "replace")
        if not _has_triple_double_docstring(doc_start):
            continue
        end = node.end_lineno or node.lineno
        source = "".join(lines[node.lineno - 1 : end]).rstrip()
        out.append(ExtractedFunction(name=node.name, text=source, parser="ast"))
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


def _extract_with_tree_sitter(text: str) -> list[ExtractedFunction]:
    parser = _tree_sitter_parser()
    if parser is None:
        return []
    data = text.encode("utf-8", "surrogatepass")
    root = parser.parse(data).root_node
    out: list[ExtractedFunction] = []
    for node in root.children:  # top level only; decorated_definition nodes are skipped
        if node.type != "function_definition" or node.start_point[1] != 0:
            continue
        if node.children and node.children[0].type == "async":  # as with ast: plain def only
            continue
        body = node.child_by_field_name("body")
        if body is None or not body.named_children:
            continue
        first = body.named_children[0]
        if first.type != "expression_statement" or not first.named_children:
            continue
        doc = first.named_children[0]
        if doc.type != "string":
            continue
        if not _has_triple_double_docstring(data[doc.start_byte : doc.end_byte].decode("utf-8")):
            continue
        name_node = node.child_by_field_name("name")
        name = name_node.text.decode("utf-8") if name_node is not None else ""
        source = data[node.start_byte : node.end_byte].decode("utf-8").rstrip()
        out.append(ExtractedFunction(name=name, text=source, parser="tree_sitter"))
    return out


def extract_functions(text: str, parser: str = "auto") -> Extraction:
    """Top-level functions with a triple-double-quoted docstring.

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


def _own_nodes(func: ast.FunctionDef) -> list[ast.AST]:
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
    if not isinstance(func, ast.FunctionDef):
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
