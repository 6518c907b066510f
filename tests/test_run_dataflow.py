"""run_dataflow.sh: a complete Dataflow job is built and validated without submitting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

BASE = {
    "PROJECT": "demo-project",
    "REGION": "us-central1",
    "BUCKET": "gs://demo-bucket",
    "INPUT": "gs://demo-bucket/stack/python/*.parquet",
    "PYTHON": sys.executable,
}


def _run(env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "run_dataflow.sh"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_missing_settings_are_named() -> None:
    result = _run({"PROJECT": "", "PYTHON": sys.executable})
    assert result.returncode == 2
    assert "REGION" in result.stderr and "MODEL_SERVER_URL or GPU_TYPE" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "model", [{"MODEL_SERVER_URL": "http://vllm.internal:8000/v1"}, {"GPU_TYPE": "nvidia-l4"}]
)
def test_dry_run_builds_the_whole_job(model: dict[str, str]) -> None:
    result = _run({**BASE, **model, "DRY_RUN": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the job graph was built and validated" in result.stderr
