"""The whole graph, Stack-format input to final dataset, against the scripted model server:
accounting, re-execution of final pairs, rerun from the caches, kill and resume."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from beam_pipeline.core.program import build_program
from beam_pipeline.core.selection import top_level_asserts
from beam_pipeline.main import run
from sandbox_image import SandboxConfig, run_program
from tests.conftest import FNAPI, REPO
from tests.helpers import read_jsonl_dir
from tests.model_server.scripted import ScriptedServer

pytestmark = pytest.mark.timeout(600)  # whole-pipeline runs

N_SEEDS = 8
N_SAMPLES = 3


def _write_seeds(directory: pathlib.Path) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(N_SEEDS):
        # Names differ in every line: under the dedup's tokens (every non-word character
        # splits) near-identical one-liners are near-duplicates at the seed threshold.
        (directory / f"mod{i}.py").write_text(
            f"def scale_{i}(values_{i}, factor_{i}):\n"
            f'    """Multiply each value of values_{i} by factor_{i}, then add {i}."""\n'
            f"    return [v{i} * factor_{i} + {i} for v{i} in values_{i}]\n"
        )
    return directory


def _argv(src: pathlib.Path, out: pathlib.Path, url: str) -> list[str]:
    return [
        f"--input={src}",
        f"--output_dir={out}",
        f"--model_server_url={url}",
        "--model=scripted",
        f"--num_samples={N_SAMPLES}",
        "--max_new_tokens=128",
        "--max_in_flight=4",
        "--batch_size=2",
        "--request_timeout_s=30",
        "--concepts_k=2",
        "--instruction_k=2",
        "--num_shards=2",
    ]


@pytest.fixture()
def server():
    with ScriptedServer() as srv:
        yield srv


def test_full_graph_accounts_for_every_record(tmp_path: pathlib.Path, server) -> None:
    src = _write_seeds(tmp_path / "src")
    out = tmp_path / "out"
    report = run([*_argv(src, out, server.base_url), *FNAPI])
    assert report["invariant_ok"], report["problems"]
    stages = report["stages"]
    assert stages["seeds"]["out"] == N_SEEDS
    assert stages["concepts"]["in"] == N_SEEDS
    assert stages["responses"]["in"] == N_SEEDS * N_SAMPLES
    assert stages["execution"]["in"] == stages["responses"]["out"] == N_SEEDS * N_SAMPLES
    assert stages["execution"]["passed"] == N_SEEDS * N_SAMPLES
    final = read_jsonl_dir(out / "final")
    assert len(final) == stages["final"]["out"] > 0
    # every final record's code plus tests passes when executed again in the sandbox
    for record in final:
        program = build_program(record["response"], record["tests"])
        assert run_program(program.source, SandboxConfig(timeout_s=10)).passed, record["id"]
    fields = {
        "id",
        "seed",
        "sha1",
        "concepts",
        "instruction",
        "response",
        "tests",
        "prompt",
        "category",
        "difficulty",
        "model",
        "sampling",
        "fingerprints",
    }
    assert fields <= set(final[0])
    assert (out / "report.html").stat().st_size > 1000
    import datasets

    loaded = datasets.load_dataset(
        "json",
        data_files=sorted(str(p) for p in (out / "final").glob("part-*.jsonl")),
        split="train",
    )
    assert len(loaded) == len(final)

    # A second identical run repeats no model call and no execution.
    server.reset_counts()
    again = run([*_argv(src, out, server.base_url), *FNAPI])
    assert server.generation_requests == 0
    assert again["metrics"].get("execution_cache_miss", 0) == report["metrics"].get(
        "execution_cache_miss", 0
    )  # metrics accumulate over runs: this run added no miss
    assert sorted(r["id"] for r in read_jsonl_dir(out / "final")) == sorted(r["id"] for r in final)


def test_restart_from_a_stage_reads_its_predecessor(tmp_path: pathlib.Path, server) -> None:
    src = _write_seeds(tmp_path / "src")
    out = tmp_path / "out"
    first = run([*_argv(src, out, server.base_url), "--to_stage=responses", *FNAPI])
    assert "execution" not in first["stages"]
    second = run(
        [
            *_argv(src, out, server.base_url),
            "--from_stage=execution",
            "--tests_in_instruction=1.0",
            *FNAPI,
        ]
    )
    assert second["invariant_ok"], second["problems"]
    assert second["stages"]["execution"]["in"] == first["stages"]["responses"]["out"]
    final = read_jsonl_dir(out / "final")
    assert final
    # With the whole fraction, every final instruction shows its own top-level asserts.
    shown = second["stages"]["final.tests_in_instruction"]
    assert shown["in"] == shown["out"] == shown["by_group"]["outcome"]["shown"] == len(final)
    for record in final:
        assert record["tests_in_instruction"] is True
        assert "Your code should pass the following test" in record["instruction"]
        assert top_level_asserts(record["tests"])[0] in record["instruction"]


def test_killed_run_resumes_without_repeating_completed_calls(
    tmp_path: pathlib.Path,
) -> None:
    src = _write_seeds(tmp_path / "src")
    out = tmp_path / "out"
    with ScriptedServer(delay_s=0.4) as srv:
        argv = [*_argv(src, out, srv.base_url), "--max_in_flight=1", "--batch_size=1", *FNAPI]
        proc = subprocess.Popen(
            [sys.executable, "-m", "beam_pipeline", *argv],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while srv.generation_requests < N_SEEDS + 2 and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        answered_before = set(srv.prompts_seen[:-1])  # the last may not have been answered
        assert len(answered_before) >= N_SEEDS
        srv.reset_counts()
        report = run(argv)
        assert report["invariant_ok"], report["problems"]
        repeated = answered_before & set(srv.prompts_seen)
        assert repeated == set(), f"{len(repeated)} completed calls were sent again"
        assert report["stages"]["final"]["out"] > 0


def test_rerun_from_a_stage_never_reads_an_earlier_runs_leftover_shards(
    tmp_path: pathlib.Path, server
) -> None:
    src = _write_seeds(tmp_path / "src")
    out = tmp_path / "out"
    first = run([*_argv(src, out, server.base_url), "--to_stage=responses", *FNAPI])
    responses = read_jsonl_dir(out / "responses")
    # An earlier run with another shard count left a complete set of 3 shards behind, and a
    # final dataset of its own.
    old = 1_000_000.0
    for directory, total in ((out / "responses", 3), (out / "final", 3)):
        directory.mkdir(exist_ok=True)
        for i in range(total):
            record = {**responses[i], "id": f"stale{i}", "instruction": "STALE"}
            path = directory / f"part-{i:05d}-of-{total:05d}.jsonl"
            path.write_text(json.dumps(record) + "\n")
            os.utime(path, (old, old))
    second = run([*_argv(src, out, server.base_url), "--from_stage=execution", *FNAPI])
    assert second["invariant_ok"], second["problems"]
    assert second["stages"]["execution"]["in"] == first["stages"]["responses"]["out"]
    final = read_jsonl_dir(out / "final")
    assert final and all("stale" not in r["id"] for r in final)
    assert "STALE" not in (out / "report.html").read_text()
