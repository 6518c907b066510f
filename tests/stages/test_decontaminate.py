"""Decontaminate as a Beam stage: every planted benchmark copy dropped and named."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.core.decontam import BenchmarkUnavailable, DecontamConfig, normalize
from beam_pipeline.records import Sample
from beam_pipeline.stages.decontaminate import Decontaminate, load_benchmark_items
from tests.conftest import FNAPI
from tests.helpers import make_sample


def _sample(index: int, instruction: str, response: str) -> Sample:
    return make_sample(f"p{index:04d}", instruction=instruction, response=response)


CLEAN_INSTRUCTION = "Write a function that merges two sorted lists into one sorted list."
CLEAN_RESPONSE = (
    "Walk both lists with two indices and append the smaller head each time.\n\n"
    "```python\ndef merge_sorted(left, right):\n    out, i, j = [], 0, 0\n"
    "    while i < len(left) and j < len(right):\n"
    "        if left[i] <= right[j]:\n            out.append(left[i]); i += 1\n"
    "        else:\n            out.append(right[j]); j += 1\n"
    "    return out + left[i:] + right[j:]\n```"
)


@pytest.fixture(scope="module")
def config(mbpp_path: pathlib.Path) -> DecontamConfig:
    return DecontamConfig(benchmarks=("humaneval", "mbpp"), mbpp_path=str(mbpp_path))


def test_drops_every_planted_solution_and_names_its_item(config: DecontamConfig) -> None:
    items = load_benchmark_items(config)
    solutions = [i for i in items if i.part in ("canonical_solution", "code")]
    assert len(solutions) == 160 + 974  # 4 generic HumanEval solutions are not patterns
    normalized = [(i.key, normalize(i.text)) for i in items if normalize(i.text)]
    samples, allowed = [], {}
    for index, item in enumerate(solutions):
        planted = "```python\n" + item.text.swapcase() + "\n```"
        if index % 2:
            samples.append(_sample(index, CLEAN_INSTRUCTION, CLEAN_RESPONSE + "\n" + planted))
        else:
            samples.append(_sample(index, "Fix this code:\n" + planted, CLEAN_RESPONSE))
        # Items sharing the planted string (MBPP repeats a few solutions) are valid names too.
        haystack = normalize(planted)
        allowed[samples[-1].id] = {key for key, text in normalized if text in haystack}
    clean = [
        _sample(5000 + k, CLEAN_INSTRUCTION + f" Variant {k}.", CLEAN_RESPONSE) for k in range(20)
    ]

    def check_named(rejections: list[tuple[str, str, str]]) -> None:
        assert len(rejections) == len(samples)
        for record_id, reason, detail in rejections:
            assert reason == "contaminated"
            assert detail in allowed[record_id], (record_id, detail)

    with TestPipeline(argv=FNAPI) as pipeline:
        outputs = (
            pipeline
            | beam.Create(samples + clean)
            | Decontaminate("final.decontam", ("instruction", "response"), config, items=items)
        )
        assert_that(
            outputs.main | beam.Map(lambda s: s.id), equal_to([s.id for s in clean]), label="Clean"
        )
        assert_that(
            outputs.rejected | beam.Map(lambda r: (r.id, r.reason, r.detail)),
            check_named,
            label="Named",
        )
        assert_that(outputs.errors, equal_to([]), label="NoErrors")


def test_user_file_bad_field_and_accounting(tmp_path: pathlib.Path) -> None:
    from beam_pipeline.stages.common import Accounting

    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text(
        json.dumps({"question": "Janet has 3 apples and buys 5 more. How many now?"}) + "\n"
    )
    config = DecontamConfig(benchmarks=("gsm8k",), gsm8k_path=str(gsm))
    records = [
        _sample(1, "JANET HAS 3 APPLES and buys 5 more.  How many now? Solve in Python.", "x"),
        _sample(2, CLEAN_INSTRUCTION, CLEAN_RESPONSE),
        _sample(3, CLEAN_INSTRUCTION, 7),  # type: ignore[arg-type]  # not text: dead letter
    ]
    accounting = Accounting()
    with TestPipeline(argv=FNAPI) as pipeline:
        outputs = (
            pipeline
            | beam.Create(records)
            | Decontaminate(
                "seeds.decontam", ["instruction", "response"], config, accounting=accounting
            )
        )
        accounting.write(pipeline, str(tmp_path / "counts"))
        assert_that(outputs.main | beam.Map(lambda s: s.id), equal_to(["p0002.0"]), label="Kept")
        assert_that(
            outputs.rejected | beam.Map(lambda r: (r.id, r.detail)),
            equal_to([("p0001.0", "gsm8k:0")]),
            label="Rejected",
        )
        assert_that(outputs.errors | beam.Map(lambda e: e.id), equal_to(["p0003.0"]), label="Err")
    counts: dict[str, Any] = {}
    for path in tmp_path.glob("counts*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            counts[row["key"]] = row["count"]
    assert counts["seeds.decontam/in"] == 3
    assert counts["seeds.decontam/rejected/contaminated"] == 1
    assert counts["seeds.decontam/errors"] == 1


def test_humaneval_comes_from_the_installed_package() -> None:
    items = load_benchmark_items(DecontamConfig(benchmarks=("humaneval",)))
    assert len({i.item_id for i in items}) == 164


def test_unreachable_hub_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchmarkUnavailable, match="--decontam_ds1000_path"):
        Decontaminate("s", "instruction", DecontamConfig(benchmarks=("ds1000",)))
    with pytest.raises(BenchmarkUnavailable, match="hub is disabled"):
        load_benchmark_items(DecontamConfig(benchmarks=("gsm8k",), allow_hub=False))


def test_unreadable_file_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(BenchmarkUnavailable, match="task_id, text, code"):
        load_benchmark_items(
            DecontamConfig(benchmarks=("mbpp",), mbpp_path=str(tmp_path / "missing.jsonl"))
        )
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"question": "no code"}\n')
    with pytest.raises(BenchmarkUnavailable, match="'task_id'"):
        load_benchmark_items(DecontamConfig(benchmarks=("mbpp",), mbpp_path=str(wrong)))
