"""Why an execution failed, in a few words a person can count: one kind per failed Execution.

Kinds: `timeout`, `memory`, `assertion`, `syntax error`, `exception: <Type>` (any other
exception the program raised, e.g. `exception: NameError`), `crashed: <SIGNAL>` (killed by a
signal), `exit code <n>` (a nonzero exit without a traceback, e.g. `sys.exit(2)`), and
`no traceback` when neither stderr nor the exit code says more. A traceback cut away by the
output limit leaves `exit code 1`.

The exception is the one Python reports last: the first unindented line after the last
`  File "..."` frame line of stderr. That covers chained exceptions (the final one counts) and
syntax errors (no `Traceback` header, the frame line comes first) and ignores the lines of a
multi-line message, which follow the exception line.
"""

from __future__ import annotations

import re
import signal

ASSERTION = "assertion"
SYNTAX = "syntax error"
TIMEOUT = "timeout"
MEMORY = "memory"
NO_TRACEBACK = "no traceback"

_SYNTAX_ERRORS = frozenset({"SyntaxError", "IndentationError", "TabError"})
_FRAME = re.compile(r'^\s+File "')
_EXCEPTION = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?::|$)")


def raised_exception(stderr: str) -> str | None:
    """The type name (without its module) of the last exception in a Python traceback."""
    lines = stderr.splitlines()
    last_frame = max((i for i, line in enumerate(lines) if _FRAME.match(line)), default=None)
    if last_frame is None:
        return None
    for line in lines[last_frame + 1 :]:
        if not line or line[0].isspace():
            continue  # the frame's source line and caret
        found = _EXCEPTION.match(line)
        return found.group(1).rsplit(".", 1)[-1] if found else None
    return None


def exception_kind(name: str) -> str:
    if name == "AssertionError":
        return ASSERTION
    if name in _SYNTAX_ERRORS:
        return SYNTAX
    if name == "MemoryError":
        return MEMORY
    return f"exception: {name}"


def failure_kind(
    status: str, stderr: str = "", exit_code: int | None = None, term_signal: int | None = None
) -> str | None:
    """The kind of failure of an execution with this sandbox verdict; None when it passed."""
    if status == "passed":
        return None
    if status == TIMEOUT:
        return TIMEOUT
    if status == MEMORY:
        return MEMORY
    if status == "crashed":
        try:
            return f"crashed: {signal.Signals(term_signal).name}"  # type: ignore[arg-type]
        except (ValueError, TypeError):
            return "crashed"
    name = raised_exception(stderr)
    if name is not None:
        return exception_kind(name)
    if exit_code:
        return f"exit code {exit_code}"
    return NO_TRACEBACK
