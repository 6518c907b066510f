"""`python -m beam_pipeline ... --to_stage seeds` end to end on real files and runners."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys

import apache_beam as beam
import pytest

from beam_pipeline.main import build, run
from beam_pipeline.options import SelfCodeAlignOptions
from beam_pipeline.progress import ENV_INTERVAL
from beam_pipeline.records import REJECTION_EXCERPT_CHARS
from beam_pipeline.stages.common import Accounting
from tests.conftest import FNAPI, MULTIPROCESS, REPO
from tests.fixtures.bad_inputs import write_bad_shard
from tests.helpers import read_jsonl_dir

pytestmark = pytest.mark.timeout(300)  # seed-stage runs, some on two worker processes


def _run(inputs: list[str], out: pathlib.Path, extra: list[str]) -> dict:
    argv = [f"--input={i}" for i in inputs] + [f"--output_dir={out}", "--to_stage=seeds", *extra]
    return run(argv)


def test_bad_inputs_are_counted_never_lost(tmp_path: pathlib.Path) -> None:
    paths = write_bad_shard(tmp_path / "in")
    out = tmp_path / "out"
    report = _run([str(p) for p in paths.values()], out, [*FNAPI, "--num_shards=2"])
    assert report["invariant_ok"], report["problems"]
    stages = report["stages"]
    extract = stages["seeds.extract"]
    assert extract["rejected_by_reason"] == {
        "binary": 2,
        "empty": 2,
        "not_utf8": 1,
        "too_deep": 1,
        "too_large": 1,
    }
    assert extract["in"] == 12 == extract["out"] + extract["rejected"] + extract["errors"]
    filt = stages["seeds.filter"]
    assert filt["in"] == 3  # add, add (copy), half (from the Python 2 file)
    assert stages["seeds.exact_dedup"]["rejected_by_reason"] == {"duplicate": 1}
    # Both broken shards are dead letters that name their file; the good shard still ran.
    errors = read_jsonl_dir(out / "errors" / "read")
    assert stages["read"]["errors"] == len(errors) == 2
    assert any("no_content.parquet has no 'content'" in e["error"] for e in errors)
    assert any("corrupt.parquet" in e["error"] for e in errors)
    seeds = read_jsonl_dir(out / "seeds")
    # of two identical functions the copy with the smallest (repo, path, file_sha1) is kept
    assert sorted(s["path"] for s in seeds) == ["copy.py", "py2.py"]
    assert {s["path"]: s["parser"] for s in seeds}["py2.py"] == "tree_sitter"
    assert len(list((out / "seeds").glob("part-*-of-00002.jsonl"))) == 2
    rejected = read_jsonl_dir(out / "rejected" / "seeds")
    assert len(rejected) == extract["rejected"] + filt["rejected"] + 1
    assert all(r["stage"] == "seeds" and r["reason"] for r in rejected)
    huge = next(r for r in rejected if r["reason"] == "too_large")
    # a bounded excerpt, not 50 MB; still JSON, with the short fields that name the file whole
    assert len(huge["excerpt"]) <= REJECTION_EXCERPT_CHARS
    assert json.loads(huge["excerpt"])["id"] == huge["id"]
    assert json.loads(huge["excerpt"])["path"].endswith(".py")


def test_bundled_shard_same_seed_ids_on_fnapi_and_two_processes(
    tmp_path: pathlib.Path,
    bundled_shard: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = _run([bundled_shard], tmp_path / "a", FNAPI)
    # Worker processes inherit the interval; their progress lines reach this process's log.
    monkeypatch.setenv(ENV_INTERVAL, "0.2")
    caplog.set_level(logging.INFO)
    b = _run([bundled_shard], tmp_path / "b", MULTIPROCESS)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress pid")]
    worker_lines = [line for line in lines if not line.startswith(f"progress pid {os.getpid()} ")]
    assert any("seeds.FilterSeed out=" in line for line in worker_lines), lines[:5]
    for report in (a, b):
        assert report["invariant_ok"], report["problems"]
    ids_a = {s["id"] for s in read_jsonl_dir(tmp_path / "a" / "seeds")}
    ids_b = {s["id"] for s in read_jsonl_dir(tmp_path / "b" / "seeds")}
    assert len(ids_a) > 500
    assert ids_a == ids_b
    assert a["stages"]["seeds.filter"] == b["stages"]["seeds.filter"]


def test_cli_help_documents_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "beam_pipeline", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0
    for flag in (
        "--input",
        "--output_dir",
        "--from_stage",
        "--to_stage",
        "--num_shards",
        "--parser",
        "--max_file_bytes",
        "--max_seeds",
        "--static_check",
        "--dedup_max_rounds",
        "--runner",
    ):
        assert flag in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--to_stage=seeds"], "--output_dir is required"),
        (["--output_dir=x", "--from_stage=final", "--to_stage=seeds"], "comes after"),
        (["--output_dir=x", "--dedup_max_rounds=0"], "--dedup_max_rounds must be >= 1"),
    ],
)
def test_bad_options_exit_with_a_clear_message(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        run(argv)


def test_report_json_on_disk_matches(tmp_path: pathlib.Path, bundled_shard: str) -> None:
    report = _run([bundled_shard], tmp_path, FNAPI)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["stages"] == report["stages"]
    assert on_disk["stages"]["read"]["out"] == on_disk["stages"]["seeds.extract"]["in"]


@pytest.mark.parametrize("rounds", [3, 24])
def test_dedup_max_rounds_sets_the_unrolled_rounds_of_every_near_dedup(
    tmp_path: pathlib.Path, rounds: int
) -> None:
    (tmp_path / "execution").mkdir()
    (tmp_path / "execution" / "part-00000-of-00001.jsonl").write_text("")
    options = SelfCodeAlignOptions(
        [f"--output_dir={tmp_path}", "--from_stage=final", f"--dedup_max_rounds={rounds}"]
    )
    config = options.to_config()
    pipeline = beam.Pipeline()
    build(pipeline, config, Accounting())
    names = {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}
    # The final stage dedups on three texts, each pass with its own component rounds.
    for text in ("Instruction", "Response", "CodeRepresentationOf"):
        pass_rounds = {
            n.split("/Round")[1].split("/")[0]
            for n in names
            if "Pass" in n and text in n and "/Components/Round" in n
        }
        assert pass_rounds == {str(i) for i in range(1, rounds + 1)}


def _seed_function(name: str, docstring: str, body: str) -> str:
    return f'def {name}(values):\n    """{docstring}"""\n{body}\n'


def test_every_benchmark_given_counts_its_own_matches(tmp_path: pathlib.Path) -> None:
    """One planted copy of each of the four benchmarks: each is dropped and counted under
    its own benchmark, with explicit zeros in the report for the benchmarks that were loaded."""
    import gzip

    from beam_pipeline.core.decontam import bundled_humaneval_path

    with gzip.open(bundled_humaneval_path(), "rt") as handle:
        humaneval_0 = json.loads(handle.readline())
    bench = tmp_path / "bench"
    bench.mkdir()
    mbpp_code = "    total = 0\n    for v in values:\n        total += v * v\n    return total"
    (bench / "mbpp.jsonl").write_text(
        json.dumps({"task_id": 901, "text": "Sum the squares.", "code": mbpp_code}) + "\n"
    )
    ds_prompt = "    frame = values.pivot_table(index='rack', columns='slot', aggfunc='mean')"
    (bench / "ds1000.jsonl").write_text(json.dumps({"problem_id": 77, "prompt": ds_prompt}) + "\n")
    question = "A baker fills 12 trays with 9 rolls each and sells 47. How many rolls remain?"
    (bench / "gsm8k.jsonl").write_text(json.dumps({"question": question}) + "\n")
    src = tmp_path / "src"
    src.mkdir()
    planted = {
        "he.py": humaneval_0["prompt"] + humaneval_0["canonical_solution"],
        "mbpp.py": _seed_function("sum_squares", "Squares and sums the values.", mbpp_code),
        "ds.py": _seed_function(
            "rack_means", "Mean per rack and slot.", f"{ds_prompt}\n    return frame"
        ),
        "gsm.py": _seed_function("rolls_left", question, "    return 12 * 9 - 47"),
        "clean.py": _seed_function(
            "halve", "Half of every value.", "    return [v / 2 for v in values]"
        ),
    }
    for name, text in planted.items():
        (src / name).write_text(text)
    out = tmp_path / "out"
    report = _run(
        [str(src)],
        out,
        [
            *FNAPI,
            "--decontam_benchmarks=humaneval,mbpp,ds1000,gsm8k",
            f"--decontam_mbpp_path={bench / 'mbpp.jsonl'}",
            f"--decontam_ds1000_path={bench / 'ds1000.jsonl'}",
            f"--decontam_gsm8k_path={bench / 'gsm8k.jsonl'}",
            "--seed_dedup_threshold=0",
        ],
    )
    assert report["invariant_ok"], report["problems"]
    decontam = report["stages"]["seeds.decontaminate"]
    assert decontam["in"] == 5
    assert decontam["by_group"]["benchmark"] == {
        "humaneval": 1,
        "mbpp": 1,
        "ds1000": 1,
        "gsm8k": 1,
    }
    assert [pathlib.Path(s["path"]).name for s in read_jsonl_dir(out / "seeds")] == ["clean.py"]
    # 'auto' with no files loads HumanEval alone, and reports an explicit 0 for it.
    report = _run([str(src / "clean.py")], tmp_path / "auto", [*FNAPI, "--seed_dedup_threshold=0"])
    assert report["stages"]["seeds.decontaminate"]["by_group"]["benchmark"] == {"humaneval": 0}
