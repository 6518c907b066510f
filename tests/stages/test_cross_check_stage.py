"""CrossCheck and `--select_by agreement` on FnApiRunner with the real sandbox."""

from __future__ import annotations

import pathlib

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.core.selection import rank_bytes
from beam_pipeline.records import Execution, Sample
from beam_pipeline.stages.cross_check import CrossCheck
from beam_pipeline.stages.execute import ExecuteSamples
from beam_pipeline.stages.select import SelectSamples
from sandbox_image import SandboxConfig, SandboxUnavailable, make_plan
from tests.helpers import busy_cpu, make_sample

pytestmark = pytest.mark.timeout(300)  # sandboxed execution

SANDBOX = SandboxConfig(timeout_s=5.0, memory_mb=512, preload=(), max_output_bytes=2048)


@pytest.fixture(scope="module", autouse=True)
def _needs_a_sandbox() -> None:
    try:
        make_plan(SANDBOX)
    except SandboxUnavailable as exc:
        # scripts/setup.sh installs bubblewrap: a missing sandbox is a broken setup, not a skip.
        pytest.fail(f"no sandbox on this machine: {exc}")


def _code(body: str, name: str = "add") -> str:
    return f"Here it is.\n\n```python\ndef {name}(a, b):\n    {body}\n```"


def _tests(*asserts: str) -> str:
    return "```python\n" + "\n".join(asserts) + "\n```"


def _sample(instruction_id: str, index: int, response: str, tests: str) -> Sample:
    return make_sample(instruction_id, index, response=response, tests=tests)


def _executed(sample: Sample, status: str) -> Execution:
    return sample.derive(Execution, program_sha="planted", status=status)


def _prefix_in_order(order: list[int]) -> str:
    """An instruction id whose samples' seeded ranks come in `order` (first = earliest)."""
    for k in range(10_000):
        prefix = f"t{k}"
        ranks = [rank_bytes(Sample.make_id(prefix, i)) for i in order]
        if ranks == sorted(ranks):
            return prefix
    raise AssertionError("no prefix found")


def test_n_samples_run_exactly_n_times_n_programs(tmp_path: pathlib.Path) -> None:
    n = 4
    samples = [
        _sample(
            "sq",
            k,
            _code(f"total = a + b\n    return total + {k} - {k}"),
            _tests(f"assert add({k}, 1) == {k + 1}"),
        )
        for k in range(n)
    ]
    cache = tmp_path / "cache"
    with TestPipeline(runner="FnApiRunner") as p:
        executed = (
            p | beam.Create(samples) | ExecuteSamples(SANDBOX, workers=2, cache_dir=str(cache))
        )
        cross = executed.main | CrossCheck(SANDBOX, workers=2, cache_dir=str(cache))
        assert_that(
            cross.main,
            equal_to([("sq", (s.id, n - 1, n - 1)) for s in samples]),
            label="EveryoneAgrees",
        )
        assert_that(cross.errors, equal_to([]), label="NoErrors")
    # every program ran once and was cached: n own runs and n x (n - 1) cross runs
    assert len(list(cache.rglob("*.json"))) == n * n


# The planted instruction: s0 is right, s1 is wrong for negative a, s2 multiplies (passing its
# own weak test), s3 fails its own test but its tests are right and count as a suite.
PLANTED = [
    (_code("return a + b"), _tests("assert add(1, 2) == 3"), "passed"),
    (_code("return a + b if a >= 0 else 0"), _tests("assert add(0, 5) == 5"), "passed"),
    (_code("return a * b"), _tests("assert add(2, 2) == 4"), "passed"),
    (_code("return a - b"), _tests("assert add(-1, 4) == 3"), "failed"),
]
EXPECTED_AGREEMENT = {0: (3, 3), 1: (2, 3), 2: (0, 3)}


def _planted(prefix: str) -> list[Execution]:
    return [
        _executed(_sample(prefix, k, response, tests), status)
        for k, (response, tests, status) in enumerate(PLANTED)
    ]


def test_agreement_on_planted_samples_and_agreement_selection() -> None:
    # the seeded order tries the multiplying sample first, the right one last
    prefix = _prefix_in_order([2, 1, 0, 3])
    executions = _planted(prefix)
    with TestPipeline(runner="FnApiRunner") as p:
        planted = p | beam.Create(executions)
        cross = planted | CrossCheck(SANDBOX, workers=2)
        assert_that(
            cross.main,
            equal_to(
                [
                    (prefix, (Sample.make_id(prefix, k), passed, suites))
                    for k, (passed, suites) in EXPECTED_AGREEMENT.items()
                ]
            ),
            label="Agreement",
        )
        by_agreement = planted | "ByAgreement" >> SelectSamples(
            agreements=cross.main, select_by="agreement"
        )
        by_shuffle = planted | "ByShuffle" >> SelectSamples(agreements=cross.main)
        assert_that(
            by_agreement.main | "Best" >> beam.Map(lambda f: (f.id, f.agreement)),
            equal_to([(Sample.make_id(prefix, 0), 1.0)]),
            label="AgreementPicksTheBest",
        )
        assert_that(
            by_shuffle.main | "First" >> beam.Map(lambda f: (f.id, f.agreement)),
            equal_to([(Sample.make_id(prefix, 2), 0.0)]),
            label="ShufflePicksTheSeededFirst",
        )
        assert_that(
            by_agreement.rejected | "Why" >> beam.Map(lambda r: (r.id, r.reason)),
            equal_to(
                [
                    (Sample.make_id(prefix, 1), "duplicate_instruction"),
                    (Sample.make_id(prefix, 2), "duplicate_instruction"),
                    (Sample.make_id(prefix, 3), "not_passed"),
                ]
            ),
            label="OthersRejected",
        )


def test_sandbox_errors_are_dead_letters_and_leave_no_agreement() -> None:
    broken = SANDBOX.replace(start_timeout_s=0.001, max_attempts=1)
    prefix = _prefix_in_order([0, 1, 2, 3])
    with TestPipeline(runner="FnApiRunner") as p:
        cross = p | beam.Create(_planted(prefix)) | CrossCheck(broken, workers=1)
        assert_that(cross.main, equal_to([]), label="NoAgreement")
        assert_that(
            cross.errors | beam.Map(lambda d: (d.id, d.error.split(":")[0])),
            equal_to(
                [
                    (f"{Sample.make_id(prefix, a)}@{Sample.make_id(prefix, b)}", "sandbox_error")
                    for a in EXPECTED_AGREEMENT
                    for b in range(4)
                    if a != b
                ]
            ),
            label="OneLetterPerProgram",
        )


def test_a_starved_check_is_a_dead_letter_not_a_failed_suite() -> None:
    """A sibling suite that never got a CPU says nothing about the response: it must not count
    as a suite the response failed."""
    config = SANDBOX.replace(timeout_s=0.5, max_wall_factor=2.0, max_attempts=1)
    with busy_cpu() as pin:
        looping_suite = _tests(pin + "while True:\n    pass\nassert add(1, 2) == 3")
        own_tests = _tests("assert add(1, 2) == 3")
        samples = [
            _executed(_sample("st", 0, _code("return a + b"), own_tests), "passed"),
            _executed(_sample("st", 1, _code("return b + a"), looping_suite), "passed"),
        ]
        with TestPipeline(runner="FnApiRunner") as p:
            cross = p | beam.Create(samples) | CrossCheck(config, workers=1)
            assert_that(cross.main, equal_to([("st", ("st.1", 1, 1))]), label="OnlyVerdicts")
            assert_that(
                cross.errors | beam.Map(lambda d: (d.id, d.error.split(":")[0])),
                equal_to([("st.0@st.1", "starved")]),
                label="StarvedLetter",
            )
