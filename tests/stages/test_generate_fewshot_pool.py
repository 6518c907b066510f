"""Every few-shot example's response, followed by its tests, runs and passes.

The program is built by the execution stage's own `core.program.build_program` (every Python
fenced block of the response, then of the tests). It runs in the project's sandbox when that
is available, else in a plain `python -I` subprocess with a timeout.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from beam_pipeline.core.program import build_program
from beam_pipeline.core.prompting import FewShotExample, fewshot_pool


def _run(source: str) -> tuple[bool, str]:
    try:
        from sandbox_image import SandboxConfig, run_program

        result = run_program(source, SandboxConfig(timeout_s=30.0))
        if result.status != "sandbox_error":
            return result.passed, f"{result.status}: {result.stderr[-2000:]}"
    except ImportError:
        pass
    proc = subprocess.run(
        [sys.executable, "-I", "-c", source],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("example", fewshot_pool(), ids=lambda ex: ex.id)
def test_fewshot_example_passes_its_tests(example: FewShotExample) -> None:
    passed, detail = _run(build_program(example.response, example.tests).source)
    assert passed, f"{example.id}: {detail}"


@pytest.mark.parametrize("example", fewshot_pool()[:3], ids=lambda ex: ex.id)
def test_a_broken_response_fails_its_tests(example: FewShotExample) -> None:
    """The harness can fail: an implementation replaced by a stub does not pass."""
    stubbed = build_program("```python\npass\n```", example.tests).source
    passed, _ = _run(stubbed)
    assert not passed
