"""`--from_stage final` on planted executions with `--cross_check --select_by agreement`: the
final records' statistics and agreement, preference pairs (decontaminated, loadable with
`datasets`), and the report's accounting."""

from __future__ import annotations

import json
import pathlib
import re
from collections import Counter

import pytest

from beam_pipeline.core.cross_check import agreement_bucket
from beam_pipeline.main import run
from beam_pipeline.records import Execution
from sandbox_image import SandboxConfig, SandboxUnavailable, make_plan
from tests.conftest import FNAPI
from tests.helpers import make_execution, read_jsonl_dir

pytestmark = pytest.mark.timeout(600)  # whole-pipeline runs

QUESTION = "A baker sells 17 loaves on Monday and twice as many on Tuesday. How many in total?"


@pytest.fixture(scope="module", autouse=True)
def _needs_a_sandbox() -> None:
    try:
        make_plan(SandboxConfig(preload=()))
    except SandboxUnavailable as exc:
        # scripts/setup.sh installs bubblewrap: a missing sandbox is a broken setup, not a skip.
        pytest.fail(f"no sandbox on this machine: {exc}")


def _execution(iid: str, k: int, body: str, test: str, status: str, stderr: str = "") -> Execution:
    return make_execution(
        iid,
        k,
        status,
        difficulty="hard",
        instruction=f"Write a function {iid}_sum that adds two numbers.",
        response=f"Here.\n\n```python\ndef {iid}_sum(a, b):\n    {body}\n```",
        tests=f"```python\nassert {iid}_sum{test}\n```",
        stderr=stderr,
    )


def _planted() -> list[Execution]:
    out = []
    for iid in ("alpha", "beta", "gamma"):
        out += [
            _execution(iid, 0, "return a * b", "(2, 2) == 4", "passed"),  # weak own test
            _execution(iid, 1, "return a + b", "(1, 2) == 3", "passed"),
            _execution(iid, 2, "return b + a", "(0, 5) == 5", "passed"),
            _execution(iid, 3, "return a - b", "(3, 4) == 7", "failed", "AssertionError\n"),
        ]
    # gamma's failing response quotes a benchmark: its preference pair must go
    last = out[-1]
    out[-1] = Execution.from_dict(
        {**last.to_dict(), "response": last.response + f"\n\n# {QUESTION}"}
    )
    out.append(_execution("delta", 0, "return a + b", "(1, 1) == 2", "passed"))  # no failure
    return out


def test_final_records_carry_stats_agreement_and_preference_pairs(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    (out / "execution").mkdir(parents=True)
    planted = _planted()
    (out / "execution" / "part-00000-of-00001.jsonl").write_text(
        "".join(e.to_json() + "\n" for e in planted)
    )
    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text(json.dumps({"question": QUESTION}) + "\n")
    report = run(
        [
            f"--output_dir={out}",
            "--from_stage=final",
            "--cross_check",
            "--select_by=agreement",
            "--decontam_benchmarks=gsm8k",
            f"--decontam_gsm8k_path={gsm}",
            # The planted instructions differ in one name only: with the reference's tokens
            # their responses are near-duplicates, which is not what this test is about.
            "--final_dedup_threshold=0",
            "--exec_timeout_s=5",
            "--exec_memory_mb=512",
            "--exec_workers=2",
            "--num_shards=2",
            *FNAPI,
        ]
    )
    assert report["invariant_ok"], report["problems"]
    assert report["runs"][-1]["inputs"] == [f"{out}/execution"]
    stages = report["stages"]
    final = {r["instruction_id"]: r for r in read_jsonl_dir(out / "final")}
    assert sorted(final) == ["alpha", "beta", "delta", "gamma"]
    for iid in ("alpha", "beta", "gamma"):
        record = final[iid]
        # the multiplying sample passes none of its siblings' suites: never chosen
        assert record["id"] in (f"{iid}.1", f"{iid}.2"), record["id"]
        assert record["agreement"] == 1.0 and record["agreement_suites"] == 3
        assert (record["num_samples"], record["num_passed"]) == (4, 3)
        assert record["pass_rate"] == 0.75 and record["estimated_difficulty"] == "easy"
    assert final["delta"]["agreement"] is None and final["delta"]["num_samples"] == 1
    # 3 instructions x 3 candidates x 3 sibling suites
    assert stages["final.cross_check"]["in"] == stages["final.cross_check"]["out"] == 27
    histogram = stages["final.stats.agreement"]["by_group"]["agreement"]
    assert histogram == {"1.0": 3, "none": 1}
    # The page charts the same histogram, recomputed here from the final records.
    page = (out / "report.html").read_text()
    key = re.escape("stages|final.stats.agreement|by_group|agreement|")
    shown = re.findall(rf'data-k="{key}([^"]+)" data-v="(\d+)"', page)
    buckets = Counter(agreement_bucket(r["agreement"]) for r in final.values())
    assert {bucket: int(n) for bucket, n in shown} == buckets
    assert 'data-chart="agreement"' in page

    import datasets

    files = sorted(str(p) for p in (out / "preference").glob("part-*.jsonl"))
    assert len(files) == 2
    pairs = datasets.load_dataset("json", data_files=files, split="train")
    assert sorted(pairs["instruction_id"]) == ["alpha", "beta"]  # gamma's is contaminated
    for row in pairs:
        assert row["chosen"] == final[row["instruction_id"]]["response"]
        assert row["rejected_id"] == f"{row['instruction_id']}.3"
        assert row["rejected_reason"] == "assertion_failed"
        assert row["prompt"].rstrip().endswith("### Response")
    assert stages["preference.pair"]["rejected_by_reason"] == {"no_failing_sample": 1}
    assert stages["preference.decontaminate"]["rejected_by_reason"] == {"contaminated": 1}
    assert stages["preference"]["out"] == 2


def test_agreement_selection_needs_the_cross_check(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SystemExit, match="--select_by agreement needs --cross_check"):
        run([f"--output_dir={tmp_path}", "--from_stage=final", "--select_by=agreement", *FNAPI])
