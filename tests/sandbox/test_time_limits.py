"""A timeout is a verdict only when the program had its time (method.md §3).

The limit counts the program's own time: wall clock less the time its tasks waited for a CPU.
A CPU loop and a sleeper both had theirs; a program the machine kept off the CPU did not, and
is `starved`: retried, never a verdict.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from sandbox_image import SandboxPool, run_program
from tests.sandbox.conftest import TEST_CONFIG

pytestmark = pytest.mark.timeout(300)  # programs that run into their limits

LOOP = "while True:\n    pass\n"


@pytest.fixture()
def timed_pool(backend: str) -> Iterator[SandboxPool]:
    config = TEST_CONFIG.replace(backend=backend, timeout_s=1.0, preload=(), max_wall_factor=30)
    with SandboxPool(config, workers=1) as pool:
        yield pool


def test_cpu_loop_is_a_timeout_verdict(timed_pool: SandboxPool) -> None:
    result = timed_pool.run(LOOP)
    assert result.status == "timeout" and result.is_verdict, result
    assert result.cpu_s >= 0.8, result  # it used its time on a CPU, however busy the machine


def test_sleeper_is_a_timeout_verdict(timed_pool: SandboxPool) -> None:
    """Asleep of its own accord (sleep, I/O, a lock): the machine took nothing from it."""
    result = timed_pool.run("import time\ntime.sleep(3600)\n")
    assert result.status == "timeout" and result.is_verdict, result
    assert result.cpu_s < 0.5 and result.run_wait_s is not None and result.run_wait_s < 0.5


def test_rlimit_cpu_is_a_timeout_verdict(backend: str) -> None:
    config = TEST_CONFIG.replace(backend=backend, timeout_s=60.0, cpu_time_s=1.0, preload=())
    result = run_program(LOOP, config)
    assert result.status == "timeout" and result.signal is not None, result


def _hogs(cpu: int, count: int) -> list[subprocess.Popen]:
    """CPU loops pinned to `cpu`, each in a session (and so a scheduler autogroup) of its own."""
    source = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"
    return [
        subprocess.Popen([sys.executable, "-c", source], start_new_session=True)
        for _ in range(count)
    ]


def test_starved_program_is_retried_and_never_a_verdict(backend: str) -> None:
    cpu = min(os.sched_getaffinity(0))
    # The program shares one core with three loops (more on a busy machine): a quarter of it at
    # most, so its own time cannot reach the limit within twice the limit of wall clock.
    source = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\n" + LOOP
    config = TEST_CONFIG.replace(
        backend=backend, timeout_s=0.5, max_wall_factor=2.0, max_attempts=2, preload=()
    )
    with SandboxPool(config, workers=1) as pool:
        # A first program pages the interpreter in: time blocked on the disk is not waiting.
        assert pool.run("print('warm')").passed
        hogs = _hogs(cpu, 3)
        try:
            result = pool.run(source)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        runs = sum(s.runs for s in pool._live)
    assert result.status == "starved" and not result.is_verdict, result
    assert result.run_wait_s is not None and result.run_wait_s > result.cpu_s, result
    assert runs == 1 + 2  # run again after a pause, on every attempt
