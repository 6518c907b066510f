"""ExecuteSamples on TestPipeline: verdicts, rejections, dead letters and the execution cache."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.core.program import build_program
from beam_pipeline.records import Sample
from beam_pipeline.stages.execute import ExecuteSamples
from sandbox_image import SandboxConfig, SandboxUnavailable, make_plan
from tests.helpers import busy_cpu, make_sample

pytestmark = pytest.mark.timeout(300)  # sandboxed execution

# A generous wall-clock cap: the loop's 2 s are its own time, however busy the machine is.
SANDBOX = SandboxConfig(
    timeout_s=2.0, memory_mb=512, preload=(), max_output_bytes=2048, max_wall_factor=20.0
)
# Cannot answer "ready" in a millisecond: every run is a sandbox error (a real failure path).
BROKEN = SANDBOX.replace(start_timeout_s=0.001, max_attempts=1)

SOLUTION = "```python\ndef add(a, b):\n    return a + b\n```"
CASES = {
    "passes": (SOLUTION, "```python\nassert add(1, 2) == 3\n```", "passed"),
    "duplicate": (SOLUTION, "```python\nassert add(1, 2) == 3\n```", "passed"),
    "fails": (SOLUTION, "```python\nassert add(1, 2) == 4\n```", "failed"),
    "loops": ("```python\nwhile True:\n    pass\n```", "```python\nassert True\n```", "timeout"),
    "crashes": ("```python\nimport ctypes\n```", "```python\nctypes.string_at(0)\n```", "crashed"),
    "eats_memory": ("```python\nx = bytearray(1 << 40)\n```", "```python\nassert x\n```", "memory"),
    "reads_input": (
        "```python\ndef double(n):\n    return 2 * n\n\nif __name__ == '__main__':\n"
        "    print(double(int(input())))\n```",
        "```python\nassert double(2) == 4\n```",
        "passed",
    ),
}
NO_CODE = ("I would rather not.", "```text\nnothing\n```")


def _sample(name: str, response: str, tests: str) -> Sample:
    return make_sample(name, response=response, tests=tests)


def _samples() -> list[Sample]:
    out = [_sample(name, response, tests) for name, (response, tests, _) in CASES.items()]
    return [*out, _sample("no_code", *NO_CODE)]


@pytest.fixture(scope="module", autouse=True)
def _needs_a_sandbox() -> None:
    try:
        make_plan(SANDBOX)
    except SandboxUnavailable as exc:
        pytest.skip(f"no sandbox on this machine: {exc}")


def _run(sandbox: SandboxConfig, cache_dir: str | None = None, checks: bool = True) -> None:
    expected = {f"{name}.0": status for name, (_, _, status) in CASES.items()}
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(_samples()) | ExecuteSamples(sandbox, workers=2, cache_dir=cache_dir)
        if checks:
            assert_that(
                out.main | "Status" >> beam.Map(lambda e: (e.id, e.status)),
                equal_to(sorted(expected.items())),
                label="Verdicts",
            )
            assert_that(
                out.rejected | "Reasons" >> beam.Map(lambda r: (r.id, r.reason)),
                equal_to([("no_code.0", "no_code")]),
                label="Rejected",
            )
            assert_that(out.errors, equal_to([]), label="NoDeadLetters")


def test_verdicts_rejections_and_no_dead_letters() -> None:
    _run(SANDBOX)


def test_execution_record_carries_sample_and_result() -> None:
    with TestPipeline(runner="FnApiRunner") as p:
        sample = _sample("passes", *CASES["passes"][:2])
        out = p | beam.Create([sample]) | ExecuteSamples(SANDBOX, workers=1)

        def check(records: list) -> None:
            (record,) = records
            assert record.instruction == sample.instruction and record.tests == sample.tests
            assert record.program_sha == build_program(sample.response, sample.tests).sha
            assert (record.status, record.exit_code, record.signal) == ("passed", 0, None)
            assert record.backend in ("bwrap", "rlimits") and record.duration_s > 0

        assert_that(out.main, check)


def test_sandbox_errors_become_dead_letters_never_failed_samples() -> None:
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(_samples()) | ExecuteSamples(BROKEN, workers=1)
        assert_that(out.main, equal_to([]), label="NoVerdicts")
        assert_that(
            out.errors
            | "Letters" >> beam.Map(lambda d: (d.id, d.stage, "sandbox_error" in d.error)),
            equal_to(sorted((f"{n}.0", "execution", True) for n in CASES)),
            label="DeadLetters",
        )
        assert_that(
            out.rejected | "Reasons" >> beam.Map(lambda r: r.reason),
            equal_to(["no_code"]),
            label="Rejected",
        )


def test_cache_answers_a_rerun_without_running(tmp_path) -> None:
    cache = str(tmp_path / "cache")
    _run(SANDBOX, cache_dir=cache)
    entries = list((tmp_path / "cache").rglob("*.json"))
    assert len(entries) == len(CASES) - 1  # "duplicate" has the same program as "passes"
    # The same programs again, with a sandbox that cannot run anything: all from the cache.
    _run(BROKEN, cache_dir=cache)


def test_starved_programs_become_dead_letters_and_are_not_cached(tmp_path) -> None:
    """A program the machine keeps off the CPU is an infrastructure outcome, not a timeout."""
    config = SANDBOX.replace(timeout_s=0.5, max_wall_factor=2.0, max_attempts=1)
    cache = tmp_path / "cache"
    with busy_cpu() as pin:
        starved = _sample("starved", f"```python\n{pin}while True:\n    pass\n```", "")
        with TestPipeline(runner="FnApiRunner") as p:
            execute = ExecuteSamples(config, workers=1, cache_dir=str(cache))
            out = p | beam.Create([starved]) | execute
            assert_that(out.main, equal_to([]), label="NoVerdict")
            assert_that(
                out.errors | "Letters" >> beam.Map(lambda d: (d.id, d.error.split(":")[0])),
                equal_to([("starved.0", "starved")]),
                label="DeadLetter",
            )
    assert not list(cache.rglob("*.json"))


def test_batch_size_is_validated() -> None:
    with pytest.raises(ValueError):
        ExecuteSamples(SANDBOX, max_batch_size=0)
