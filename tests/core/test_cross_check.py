"""Which programs the cross-check runs (core.cross_check)."""

from __future__ import annotations

import pytest

from beam_pipeline.core.cross_check import Sibling, agreement, agreement_bucket, plan_checks


def _sibling(k: int, candidate: bool = True, tests: str | None = None) -> Sibling:
    return Sibling(
        f"i.{k}",
        f"```python\ndef f(x):\n    return x + {k}\n```",
        tests if tests is not None else f"```python\nassert f({k}) == {2 * k}\n```",
        candidate,
    )


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_n_passing_samples_give_n_times_n_minus_one_programs(n: int) -> None:
    checks = list(plan_checks(_sibling(k) for k in range(n)))
    assert len(checks) == n * (n - 1)
    assert {(c.sample_id, c.suite_id) for c in checks} == {
        (f"i.{a}", f"i.{b}") for a in range(n) for b in range(n) if a != b
    }
    for check in checks:  # the response's code, then the suite's tests
        suite = int(check.suite_id.split(".")[1])
        assert f"return x + {check.sample_id.split('.')[1]}" in check.source
        assert check.source.rstrip().endswith(f"assert f({suite}) == {2 * suite}")


def test_failing_samples_lend_their_tests_but_are_not_checked() -> None:
    siblings = [
        _sibling(0),
        _sibling(1, candidate=False),
        _sibling(2, tests="```text\nno python here\n```"),  # no suite to lend
    ]
    pairs = sorted((c.sample_id, c.suite_id) for c in plan_checks(siblings))
    assert pairs == [("i.0", "i.1"), ("i.2", "i.0"), ("i.2", "i.1")]


def test_agreement_and_its_histogram() -> None:
    assert agreement(0, 0) is None
    assert agreement(2, 3) == pytest.approx(2 / 3)
    assert [agreement_bucket(v) for v in (None, 0.0, 0.3, 0.7, 2 / 3, 0.99, 1.0)] == [
        "none",
        "0.0",
        "0.3",
        "0.7",
        "0.6",
        "0.9",
        "1.0",
    ]
