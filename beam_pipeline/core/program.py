"""The program that execution runs for a sample (method.md §3). Pure: no Beam, no I/O.

Program = every fenced code block of the response and then of the tests, in order, joined by
blank lines. A closing fence may end a line of code (`    return out```), as the reference
accepts. Blocks fenced with another language tag (```bash, ```json, ```text, ...) are
not Python and are skipped (counted). A block whose code really calls `input(` (the builtin,
found by tokens: not in a string or comment, not `x.input(`, not `def input(`) loses its
top-level `if __name__ == "__main__":` section, so the tests run instead of waiting for stdin.
The reference cuts whenever the text `input` occurs, which can delete `unittest.main()` and let
a sample pass with no test run; here that cannot happen unless `input(` is really called.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import re
import tokenize
from collections.abc import Iterator

# An opening fence at the start of a line (indented at most 3 spaces) and an optional info
# string. The closing fence is looked up separately (see `_closing_fence`).
_OPEN = re.compile(
    r"^(?P<indent>[ \t]{0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n", re.MULTILINE
)
PYTHON_TAGS = frozenset({"", "python", "py", "python3", "py3"})
_MAIN_GUARD = re.compile(
    r"""^if\s+(__name__\s*==\s*(['"])__main__\2|(['"])__main__\3\s*==\s*__name__)\s*:"""
)


@dataclasses.dataclass(frozen=True)
class Program:
    source: str  # empty when the text holds no Python block
    blocks: int  # Python blocks used
    skipped_blocks: int  # blocks fenced as another language
    cut_main: bool  # a `__main__` section was removed because its block calls input(

    @property
    def sha(self) -> str:
        return program_sha(self.source)


def program_sha(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


@functools.cache
def _closing_fence(fence: str) -> re.Pattern[str]:
    """What ends a block opened with `fence`.

    A run of at least the fence's characters that ends a line: on a line of its own, or at
    the end of a line of code (`    return out```), which the reference accepts and models
    often write; a fence in the middle of a line (`s = "```"`) does not close the block.
    **We** also end the block at a line that opens another one (```` ```python ````): the
    model forgot to close the first, and a fence line is never part of the code.
    """
    char = re.escape(fence[0])
    run = rf"{char}{{{len(fence)},}}"
    return re.compile(
        rf"(?<!{char}){run}[ \t]*$|(?P<reopen>^[ \t]{{0,3}}{run}[ \t]*[^\s`][^\n`]*$)",
        re.MULTILINE,
    )


def _fences(text: str) -> Iterator[tuple[re.Match[str], int, int]]:
    """(opening, end of body, end of block) of each fenced block in order; the ends of an
    unclosed block (the last one) are -1."""
    position = 0
    while (opening := _OPEN.search(text, position)) is not None:
        closing = _closing_fence(opening.group("fence")).search(text, opening.end())
        if closing is None:
            yield opening, -1, -1  # an unclosed fence runs to the end of the text
            return
        # A line that opens the next block is read again as that block's opening.
        position = closing.start() if closing.group("reopen") else closing.end()
        yield opening, closing.start(), position


def fence_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) of each fenced block, fences included; an unclosed one runs to the end."""
    return [(opening.start(), end if end >= 0 else len(text)) for opening, _, end in _fences(text)]


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of each closed fenced block, in order."""
    blocks = []
    for opening, body_end, _ in _fences(text):
        if body_end < 0:
            break
        body = text[opening.end() : body_end]
        last_newline = body.rfind("\n")
        if not body[last_newline + 1 :].strip():  # the fence stood on a line of its own
            body = body[: max(last_newline, 0)]
        info = opening.group("info").strip()
        tag = info.split()[0].lower() if info else ""
        indent = len(opening.group("indent"))
        if indent:  # a fence indented by n spaces strips up to n spaces from its lines
            body = "\n".join(re.sub(rf"^ {{0,{indent}}}", "", line) for line in body.split("\n"))
        blocks.append((tag, body.strip("\n")))
    return blocks


def calls_input(code: str) -> bool:
    """Whether `code` calls the builtin `input(` (by tokens; tolerant of broken code)."""
    if "input" not in code:
        return False
    previous: tokenize.TokenInfo | None = None
    pending: tokenize.TokenInfo | None = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(code).readline):
            if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
                continue
            if pending is not None:
                if token.type == tokenize.OP and token.string == "(":
                    return True
                pending = None
            if token.type == tokenize.NAME and token.string == "input":
                before = previous.string if previous is not None else ""
                if before not in (".", "def", "class", "import", "as"):
                    pending = token
            previous = token
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass  # what was tokenized before the error still counts
    return False


def cut_main_section(code: str) -> tuple[str, bool]:
    """Removes a top-level `if __name__ == "__main__":` line and everything after it."""
    lines = code.split("\n")
    for i, line in enumerate(lines):
        if _MAIN_GUARD.match(line):
            return "\n".join(lines[:i]).rstrip("\n"), True
    return code, False


def build_program(response: str, tests: str = "") -> Program:
    """The program for a response and its tests (method.md §3 with our `input(` rule)."""
    parts: list[str] = []
    skipped = 0
    cut_any = False
    for text in (response, tests):
        for tag, body in fenced_blocks(text):
            if tag not in PYTHON_TAGS:
                skipped += 1
                continue
            if calls_input(body):
                body, cut = cut_main_section(body)
                cut_any = cut_any or cut
            if body.strip():
                parts.append(body)
    source = "\n\n".join(parts) + "\n" if parts else ""
    return Program(source=source, blocks=len(parts), skipped_blocks=skipped, cut_main=cut_any)
