"""failure_kind: each way a program fails, as the real sandbox reports it, gets its kind."""

from __future__ import annotations

import pytest

from beam_pipeline.core.failures import failure_kind, raised_exception
from sandbox_image import SandboxConfig, run_program

PROGRAMS = [
    ("def f():\n    return 1\nassert f() == 2\n", "assertion"),
    ("def f(:\n    return 1\n", "syntax error"),
    ("def f():\n  return 1\n   x = 2\n", "syntax error"),
    ("def f():\n    return g()\nassert f() == 1\n", "exception: NameError"),
    ("import json\njson.loads('{')\n", "exception: JSONDecodeError"),
    ("x = bytearray(1 << 40)\n", "memory"),
    ("while True:\n    pass\n", "timeout"),
    ("import sys\nsys.exit(3)\n", "exit code 3"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", "crashed: SIGSEGV"),
    (
        "try:\n    {}['k']\nexcept KeyError:\n    raise ValueError('line one\\nline two')\n",
        "exception: ValueError",
    ),
    ("assert True\n", None),
]


@pytest.mark.parametrize(("source", "kind"), PROGRAMS)
def test_kind_of_a_real_execution(source: str, kind: str | None) -> None:
    result = run_program(source, SandboxConfig(timeout_s=2))
    assert failure_kind(result.status, result.stderr, result.exit_code, result.signal) == kind, (
        result.status,
        result.stderr,
    )


def test_the_last_exception_of_a_chain_counts_and_message_lines_do_not() -> None:
    stderr = (
        "Traceback (most recent call last):\n"
        '  File "main.py", line 2, in <module>\n'
        "    {}['k']\n"
        "KeyError: 'k'\n"
        "\n"
        "During handling of the above exception, another exception occurred:\n"
        "\n"
        "Traceback (most recent call last):\n"
        '  File "main.py", line 4, in <module>\n'
        "    raise mod.Custom('x')\n"
        "mod.Custom: first line\n"
        "Expected: 3\n"
    )
    assert raised_exception(stderr) == "Custom"
    assert failure_kind("failed", stderr, 1) == "exception: Custom"


@pytest.mark.parametrize(
    ("status", "stderr", "exit_code", "kind"),
    [
        ("failed", "", 1, "exit code 1"),  # the traceback was cut by the output limit
        ("failed", "some output\n", None, "no traceback"),
        ("crashed", "", None, "crashed"),
        ("timeout", "Traceback ...", None, "timeout"),
    ],
)
def test_kind_without_a_traceback(
    status: str, stderr: str, exit_code: int | None, kind: str
) -> None:
    assert failure_kind(status, stderr, exit_code) == kind
