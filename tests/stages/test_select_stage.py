"""SelectSamples on TestPipeline: the sequential-loop semantics of method.md §4."""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.core.selection import defined_names, normalise_ws, shows_tests, shuffle_rank
from beam_pipeline.records import Execution
from beam_pipeline.stages.select import SelectSamples, ShowTestsInInstruction, to_final

TESTS = "```python\nassert f(1) == 1\n```"


def _sample(
    sid: str, instruction: str, fn: str = "f", status: str = "passed", body: str = "return x"
) -> Execution:
    return Execution(
        id=sid,
        seed="def s(x):\n    return x",
        concepts="c",
        category="function",
        difficulty="easy",
        instruction=instruction,
        instruction_id=sid.split(".")[0],
        sample_index=int(sid.split(".")[1]),
        response=f"Here.\n\n```python\ndef {fn}(x):\n    {body}\n```",
        tests=TESTS,
        program_sha="p",
        status=status,
    )


def _reference_loop(samples: list[Execution]) -> tuple[set[str], dict[str, str]]:
    """The method's single loop, for comparison."""
    kept, reasons = set(), {}
    seen_i, seen_r, seen_n = set(), set(), set()
    for s in sorted(samples, key=lambda s: (shuffle_rank(s.id), s.id)):
        if s.status != "passed":
            reasons[s.id] = "not_passed"
            continue
        i, r, n = normalise_ws(s.instruction), normalise_ws(s.response), defined_names(s.response)
        if i in seen_i:
            reasons[s.id] = "duplicate_instruction"
            continue
        seen_i.add(i)
        if r in seen_r:
            reasons[s.id] = "duplicate_response"
            continue
        seen_r.add(r)
        if n in seen_n:
            reasons[s.id] = "duplicate_defined_names"
            continue
        seen_n.add(n)
        kept.add(s.id)
    return kept, reasons


def test_select_matches_the_sequential_loop() -> None:
    samples = []
    for i in range(30):
        for k in range(3):
            samples.append(
                _sample(
                    f"i{i}.{k}",
                    instruction=f"Task {i % 12}   please",  # 12 distinct instructions
                    fn=f"fn{(i + k) % 7}",  # name sets collide across instructions
                    body=f"return x + {(i * k) % 5}",  # responses collide too
                    status="failed" if (i + k) % 5 == 0 else "passed",
                )
            )
    kept, reasons = _reference_loop(samples)
    assert 0 < len(kept) < 12
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(samples) | SelectSamples()
        assert_that(
            out.main | "Ids" >> beam.Map(lambda r: r.id), equal_to(sorted(kept)), label="Kept"
        )
        assert_that(
            out.rejected | "Reasons" >> beam.Map(lambda r: (r.id, r.reason)),
            equal_to(sorted(reasons.items())),
            label="Rejected",
        )
        assert_that(out.errors, equal_to([]), label="Errors")


def test_final_pair_fields() -> None:
    sample = _sample("a.0", "Write f.")
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create([sample]) | SelectSamples()
        assert_that(
            out.main | beam.Map(lambda r: (r.id, r.instruction, r.tests, r.category, r.seed)),
            equal_to([("a.0", "Write f.", TESTS, "function", sample.seed)]),
        )


def test_tests_in_instruction_changes_only_the_chosen_pairs() -> None:
    pairs = [to_final(_sample(f"seed{i}.0", f"Write f number {i}.")) for i in range(200)]
    no_asserts = dataclasses.replace(
        to_final(_sample("seed999.0", "Write g.")), tests="```python\ndef t():\n    assert 1\n```"
    )
    pairs.append(no_asserts)
    fraction = 0.5
    chosen = {p.id for p in pairs if shows_tests(p.id, fraction)}
    with TestPipeline() as p:
        out = (p | beam.Create(pairs) | ShowTestsInInstruction(fraction)).main | beam.Map(
            lambda f: (f.id, f.tests_in_instruction, f.instruction)
        )
        expected = [
            (
                pair.id,
                pair.id in chosen and pair is not no_asserts,
                pair.instruction
                + (
                    "\n\nYour code should pass the following test:\n"
                    "```python\nassert f(1) == 1\n```"
                    if pair.id in chosen and pair is not no_asserts
                    else ""
                ),
            )
            for pair in pairs
        ]
        assert_that(out, equal_to(expected))
    assert 60 < len(chosen) < 140
