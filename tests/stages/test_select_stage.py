"""SelectSamples on a real runner: exactly the samples the method's single loop keeps."""

from __future__ import annotations

import ast
import dataclasses
import random
from collections import Counter, defaultdict
from collections.abc import Callable

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from beam_pipeline.core.selection import (
    format_problem,
    instruction_too_long,
    python_blocks,
    shows_tests,
    shuffle_rank,
)
from beam_pipeline.records import Execution
from beam_pipeline.stages.select import SelectSamples, ShowTestsInInstruction, to_final
from tests.helpers import make_execution

pytestmark = pytest.mark.timeout(300)  # property tests, each a pipeline

TESTS = "```python\nassert f(1) == 1\n```"


def _sample(
    sid: str,
    instruction: str,
    code: str = "def f(x):\n    return x",
    status: str = "passed",
    extra: str = "",
) -> Execution:
    """Execution `sid` ("<instruction id>.<index>") whose response shows `code`."""
    instruction_id, index = sid.split(".")
    return make_execution(
        instruction_id,
        int(index),
        status,
        instruction=instruction,
        response=f"Here.\n\n```python\n{code}\n```{extra}",
        tests=TESTS,
    )


# --- the oracle: the method's loop written plainly, over strings and sets ----------------------


def _name_sets(response: str) -> tuple[frozenset[str], frozenset[str]] | None:
    try:
        tree = ast.parse(python_blocks(response)[0].strip())
    except SyntaxError:
        return None
    functions, classes = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions.add(node.name.replace("_", "").lower())
        elif isinstance(node, ast.ClassDef):
            classes.add(node.name.replace("_", "").lower())
    return frozenset(functions), frozenset(classes)


def _code_parses(response: str) -> bool:
    try:
        ast.parse("\n".join(b.strip() for b in python_blocks(response)))
    except SyntaxError:
        return False
    return True


def _plain_loop(
    samples: list[Execution], rank: Callable[[str], object] = shuffle_rank
) -> dict[str, str]:
    """Sample id -> "kept" or the rejection reason, by one loop in (rank, id) order."""
    outcome: dict[str, str] = {}
    seen_keys: set[str] = set()
    seen_names: set[frozenset[str]] = set()
    for s in sorted(samples, key=lambda s: (rank(s.id), s.id)):
        problem = format_problem(s.response, s.tests)
        names = _name_sets(s.response)
        key_i, key_r = "".join(s.instruction.split()), "".join(s.response.split())
        if s.status != "passed":
            outcome[s.id] = "not_passed"
        elif problem is not None:
            outcome[s.id] = problem[0].value
        elif instruction_too_long(s.instruction):
            outcome[s.id] = "instruction_over_200_words"
        elif names is None:
            # skipped whatever its keys (the stage names this reason even where the loop would
            # have met a seen key first; the sample is skipped either way and records nothing)
            outcome[s.id] = "first_block_unparsable"
        elif key_i in seen_keys:
            outcome[s.id] = "duplicate_instruction"
        elif key_r in seen_keys:
            outcome[s.id] = "duplicate_response"
        elif any(n and n in seen_names for n in names):
            outcome[s.id] = "duplicate_defined_names"
        else:
            seen_names.update(names)
            seen_keys.update((key_i, key_r))
            # the code representation is built after the loop: a sample dropped there keeps
            # its keys seen
            outcome[s.id] = "kept" if _code_parses(s.response) else "code_unparsable"
    return outcome


def _run_stage(samples: list[Execution], expected: dict[str, str]) -> None:
    kept = sorted(sid for sid, what in expected.items() if what == "kept")
    rejected = sorted((sid, what) for sid, what in expected.items() if what != "kept")
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(samples) | SelectSamples()
        assert_that(out.main | "Ids" >> beam.Map(lambda r: r.id), equal_to(kept), label="Kept")
        assert_that(
            out.rejected | "Reasons" >> beam.Map(lambda r: (r.id, r.reason)),
            equal_to(rejected),
            label="Rejected",
        )
        assert_that(out.errors, equal_to([]), label="Errors")


def _ids_in_rank_order(prefix: str, count: int) -> list[str]:
    return sorted((f"{prefix}.{k}" for k in range(count)), key=shuffle_rank)


# --- hand-written cases --------------------------------------------------------------------


def test_an_instruction_whose_first_sample_is_blocked_keeps_its_next() -> None:
    a = _ids_in_rank_order("a", 1)[0]
    later = [i for i in _ids_in_rank_order("b", 20) if shuffle_rank(i) > shuffle_rank(a)]
    blocked, second = later[0], later[1]
    samples = [
        _sample(a, "Write add.", "def add(a, b):\n    return a + b"),
        _sample(blocked, "Write plus.", "def add(x, y):\n    return x + y"),
        _sample(second, "Write plus.", "def plus(x, y):\n    return x + y"),
    ]
    expected = {a: "kept", blocked: "duplicate_defined_names", second: "kept"}
    assert _plain_loop(samples) == expected
    _run_stage(samples, expected)


def test_samples_without_definitions_do_not_collapse() -> None:
    samples = [_sample(f"t{i}.0", f"Print {i}.", f"print({i})") for i in range(6)]
    expected = {s.id: "kept" for s in samples}
    assert _plain_loop(samples) == expected
    _run_stage(samples, expected)


def test_whitespace_is_removed_from_the_keys() -> None:
    ids = _ids_in_rank_order("w", 3)
    samples = [
        _sample(ids[0], "Write   f.", "def f(x):\n    return x"),
        _sample(ids[1], "Write\nf .", "def g(x):\n    return x"),  # same instruction key
        _sample(ids[2], "Write g.", "def f(x):\n  return x"),  # same response key
    ]
    expected = {
        ids[0]: "kept",
        ids[1]: "duplicate_instruction",
        ids[2]: "duplicate_response",
    }
    assert _plain_loop(samples) == expected
    _run_stage(samples, expected)


def test_unparsable_code_is_dropped_and_counted() -> None:
    first, second, third = _ids_in_rank_order("u", 3)
    broken_tail = "\n\n```python\ndef tail(:\n```"
    samples = [
        # first block does not parse: skipped, so the instruction's next sample is tried
        _sample(first, "Write u.", "def u(:\n    pass"),
        # kept by the loop, then dropped for its code representation: its keys stay seen
        _sample(second, "Write u.", "def u(x):\n    return x", extra=broken_tail),
        _sample(third, "Write u.", "def v(x):\n    return x"),
    ]
    expected = {
        first: "first_block_unparsable",
        second: "code_unparsable",
        third: "duplicate_instruction",
    }
    assert _plain_loop(samples) == expected
    _run_stage(samples, expected)


# --- property: the stage keeps what the loop keeps -----------------------------------------

COMMON_NAMES = ("main", "solve", "helper", "process_data", "Solve")
COMMON_CLASSES = ("Stack", "Node", "Solution")


def _random_samples(
    rng: random.Random,
    instructions: int,
    per_instruction: int,
    shared_response: float,
    common_names: float,
    no_names: float,
) -> list[Execution]:
    texts = [f"Write a program for task {i}." for i in range(max(1, instructions * 3 // 4))]
    shared = [f"def shared_{i}(x):\n    return x * {i}" for i in range(8)] + ["print(0)"]

    def name() -> str:
        if rng.random() < common_names:
            return rng.choice(COMMON_NAMES)
        return f"fn_{rng.randrange(10**6)}"

    def code() -> str:
        roll = rng.random()
        if roll < shared_response:
            return rng.choice(shared)
        if roll < shared_response + no_names:
            return f"value = {rng.randrange(100)}\nprint(value)"
        parts = [f"def {name()}(x):\n    return x + {rng.randrange(5)}"]
        if rng.random() < 0.3:
            cls = rng.choice(COMMON_CLASSES) if rng.random() < common_names else "Box"
            parts.append(f"class {cls}{rng.randrange(3)}:\n    def {name()}(self):\n        pass")
        if rng.random() < 0.1:
            parts.append(f"async def {name()}():\n    pass")
        if rng.random() < 0.03:
            parts[0] = parts[0].replace("(x)", "(x")  # first block does not parse
        return "\n\n".join(parts)

    samples = []
    for i in range(instructions):
        text = rng.choice(texts)
        for k in range(per_instruction):
            # whitespace variants meet in one key
            instruction = text.replace(" ", rng.choice([" ", "  ", "\n"]), 1)
            extra = "\n\n```python\nbroken(\n```" if rng.random() < 0.02 else ""
            status = "passed" if rng.random() < 0.9 else "failed"
            samples.append(_sample(f"q{i}.{k}", instruction, code(), status, extra))
    return samples


@settings(
    max_examples=5,
    deadline=None,
    derandomize=True,
    # the samples derive from the drawn parameters; shrinking them costs minutes, not insight
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**31),
    instructions=st.integers(150, 300),
    per_instruction=st.integers(4, 10),
    shared_response=st.floats(0.0, 0.4),
    common_names=st.floats(0.0, 0.7),
    no_names=st.floats(0.0, 0.4),
)
def test_stage_keeps_exactly_what_the_loop_keeps(
    seed: int,
    instructions: int,
    per_instruction: int,
    shared_response: float,
    common_names: float,
    no_names: float,
) -> None:
    rng = random.Random(seed)
    samples = _random_samples(
        rng, instructions, per_instruction, shared_response, common_names, no_names
    )
    expected = _plain_loop(samples)
    reasons = Counter(expected.values())
    assert reasons["kept"] > 0 and len(expected) == len(samples) >= 600
    _run_stage(samples, expected)


def _agreement_places(samples: list[Execution], value: dict[str, float]) -> dict[str, int]:
    """The oracle's order for --select_by agreement, written plainly: each instruction's
    candidates take the positions its candidates hold in the seeded order, best agreement
    first."""
    candidates = [
        s
        for s in samples
        if s.status == "passed"
        and format_problem(s.response, s.tests) is None
        and not instruction_too_long(s.instruction)
    ]
    seeded = sorted(candidates, key=lambda s: shuffle_rank(s.id))
    positions: dict[str, list[int]] = defaultdict(list)
    members: dict[str, list[str]] = defaultdict(list)
    for position, s in enumerate(seeded):
        positions[s.instruction_id].append(position)
        members[s.instruction_id].append(s.id)
    place = {}
    for iid, ids in members.items():
        best_first = sorted(ids, key=lambda sid: (-value[sid], shuffle_rank(sid)))
        place.update(zip(best_first, positions[iid], strict=True))
    return place


def test_agreement_order_runs_the_same_loop_over_the_dealt_order() -> None:
    rng = random.Random(5)
    samples = _random_samples(rng, 150, 6, 0.2, 0.4, 0.1)
    value = {s.id: rng.choice([0.0, 0.25, 0.5, 1.0]) for s in samples}
    place = _agreement_places(samples, value)
    expected = _plain_loop(samples, rank=lambda sid: place.get(sid, -1))
    assert expected != _plain_loop(samples)  # the order matters for these samples
    agreements = [(s.instruction_id, (s.id, int(value[s.id] * 4), 4)) for s in samples]
    kept = sorted(sid for sid, what in expected.items() if what == "kept")
    rejected = sorted((sid, what) for sid, what in expected.items() if what != "kept")
    with TestPipeline(runner="FnApiRunner") as p:
        given = p | "Agreements" >> beam.Create(agreements)
        out = p | beam.Create(samples) | SelectSamples(agreements=given, select_by="agreement")
        assert_that(
            out.main | "Ids" >> beam.Map(lambda r: (r.id, r.agreement)),
            equal_to([(sid, value[sid]) for sid in kept]),
            label="Kept",
        )
        assert_that(
            out.rejected | "Reasons" >> beam.Map(lambda r: (r.id, r.reason)),
            equal_to(rejected),
            label="Rejected",
        )


# --- the final record ------------------------------------------------------------------------


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
